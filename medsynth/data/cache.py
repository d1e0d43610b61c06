"""On-disk slice cache: each case preprocessed once, then read through memory maps.

Layout::

    <cache_dir>/slices-<config hash>/config.json          every preprocessing parameter
    <cache_dir>/slices-<config hash>/<case>-<files hash>/  one entry per case
        image.npy   float16 [D, S, S] in [0, 1]   (step 2^-11 near 1: 0.2 HU of the 400 HU window)
        mask.npy    uint8   [D, S, S] in 0..16
        meta.json   case_id, slice_index (per slice), source files, or the problem of a bad case

The config hash covers :meth:`PreprocessConfig.key` (image size, window, body threshold,
orientation, preprocessing version), so a new setting builds a new cache. The files hash
covers the case's image and label paths, sizes and modification times, so an edited file is
rebuilt. An entry is written into a temporary folder and renamed into place when complete
(``os.rename`` is atomic on POSIX), so an interrupted build never leaves an entry that looks
complete; the next build redoes the missing ones. Bad cases are recorded with their problem
(no arrays) so validation is not repeated either.

Per-case entries (rather than one array per split) let val and test share cases, let a new
case be added without rebuilding the others, and make an interrupted build resumable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsynth.data.transforms import PreprocessConfig, SliceVolume

__all__ = ["CacheEntry", "SliceCache", "BadCaseError", "files_fingerprint"]

_STALE_TMP_S = 3600.0


class BadCaseError(ValueError):
    """A case failed validation (unreadable, shape/geometry mismatch, bad labels, NaNs)."""


@dataclass
class CacheEntry:
    """A cached case: memory-mapped arrays, or the problem that made it bad.

    Attributes:
        case_id: Case name.
        image: float16 ``[D, S, S]`` memmap (None for a bad case).
        mask: uint8 ``[D, S, S]`` memmap (None for a bad case).
        problem: Why the case is bad, None when it is fine.
        meta: The stored metadata.
    """

    case_id: str
    image: np.ndarray | None
    mask: np.ndarray | None
    problem: str | None
    meta: dict


def files_fingerprint(*paths: str | Path) -> str:
    """Hash of the paths, sizes and modification times of files (missing files hash too)."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        try:
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns};".encode())
        except OSError:
            h.update(f"{p}|missing;".encode())
    return h.hexdigest()[:16]


class SliceCache:
    """Slice cache for one preprocessing configuration.

    Args:
        cache_dir: Parent folder (shared by configurations).
        config: Preprocessing parameters; their hash names the cache folder.
    """

    def __init__(self, cache_dir: str | Path, config: PreprocessConfig) -> None:
        self.config = config
        key = json.dumps(config.key(), sort_keys=True)
        self.root = Path(cache_dir).expanduser() / f"slices-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        self._key = key

    def entry_dir(self, case_id: str, fingerprint: str) -> Path:
        """Folder of a case's entry."""
        return self.root / f"{case_id}-{fingerprint}"

    def has(self, case_id: str, fingerprint: str) -> bool:
        """Whether a complete entry exists."""
        return (self.entry_dir(case_id, fingerprint) / "meta.json").is_file()

    def load(self, case_id: str, fingerprint: str) -> CacheEntry:
        """Open a complete entry; the arrays are memory-mapped (read-only), never read whole."""
        d = self.entry_dir(case_id, fingerprint)
        if not (d / "meta.json").is_file():
            raise FileNotFoundError(
                f"slice cache has no complete entry for {case_id} at {d}: run prepare_data()"
            )
        meta = json.loads((d / "meta.json").read_text())
        if meta.get("problem"):
            return CacheEntry(case_id, None, None, meta["problem"], meta)
        image = np.load(d / "image.npy", mmap_mode="r")
        mask = np.load(d / "mask.npy", mmap_mode="r")
        return CacheEntry(case_id, image, mask, None, meta)

    def write(
        self, case_id: str, fingerprint: str, volume: SliceVolume | None, problem: str | None = None, **info
    ) -> Path:
        """Write one entry atomically (temporary folder, then rename).

        Args:
            case_id: Case name.
            fingerprint: :func:`files_fingerprint` of its source files.
            volume: The preprocessed case, or None for a bad case.
            problem: Why the case is bad (with ``volume=None``).
            **info: Extra JSON-serialisable metadata (source files ...).
        """
        if (volume is None) == (problem is None):
            raise ValueError("give exactly one of volume and problem")
        self.root.mkdir(parents=True, exist_ok=True)
        config_file = self.root / "config.json"
        if not config_file.is_file():
            tmp_cfg = self.root / f".config-{uuid.uuid4().hex}.json"
            tmp_cfg.write_text(self._key)
            os.replace(tmp_cfg, config_file)
        final = self.entry_dir(case_id, fingerprint)
        tmp = self.root / f".tmp-{case_id}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            meta = {"case_id": case_id, "problem": problem, **info}
            if volume is not None:
                np.save(tmp / "image.npy", volume.image.astype(np.float16))
                np.save(tmp / "mask.npy", volume.mask.astype(np.uint8))
                meta["num_slices"] = int(len(volume.image))
                meta["slice_index"] = list(range(len(volume.image)))
            (tmp / "meta.json").write_text(json.dumps(meta))
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "meta.json").is_file():  # not a concurrent writer's finished entry
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def remove_stale_tmp(self, older_than_s: float = _STALE_TMP_S) -> None:
        """Delete temporary folders left by interrupted builds."""
        if not self.root.is_dir():
            return
        now = time.time()
        for p in self.root.glob(".tmp-*"):
            try:
                if now - p.stat().st_mtime > older_than_s:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass

    def build(
        self,
        cases: Iterable[tuple[str, str]],
        produce: Callable[[str], SliceVolume | str],
        progress: bool = True,
        on_built: Callable[[str, CacheEntry], None] | None = None,
        info: Callable[[str], dict] | None = None,
    ) -> int:
        """Write the missing entries.

        Args:
            cases: ``(case_id, fingerprint)`` pairs.
            produce: ``case_id -> SliceVolume`` or a problem string for a bad case.
            progress: Show a tqdm progress bar.
            on_built: Called with each newly written entry (e.g. to raise on a bad case).
            info: ``case_id -> dict`` of extra metadata.

        Returns:
            The number of entries written.
        """
        todo = [(c, f) for c, f in cases if not self.has(c, f)]
        if not todo:
            return 0
        self.remove_stale_tmp()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"slice cache ({self.config.image_size}px)", unit="case")
        try:
            for case_id, fp in todo:
                out = produce(case_id)
                extra = info(case_id) if info else {}
                if isinstance(out, str):
                    self.write(case_id, fp, None, problem=out, **extra)
                else:
                    self.write(case_id, fp, out, **extra)
                if on_built is not None:
                    on_built(case_id, self.load(case_id, fp))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return len(todo)
