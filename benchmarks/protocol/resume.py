"""Files of a protocol run: continuing a run (``--resume``), where it ran, atomic writes.

A run of the quality protocol writes one ``quality.json`` to its ``--output`` folder. A later
part may add methods to it (``--resume``) only when every setting that makes rows comparable is
the same: :func:`previous_results` and :func:`check_compatible` refuse otherwise, before any
training, naming the flag to change. Results are never overwritten.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "RUN_SETTINGS",
    "ResumeError",
    "atomic_write",
    "check_compatible",
    "check_settings",
    "jsonable",
    "machine",
    "previous_results",
    "sha256",
]

#: Header entries of quality.json that every part of one run must share -> the flag that sets each.
RUN_SETTINGS: dict[str, str] = {
    "label_set": "--label-set",
    "budget_min": "--budget",
    "num_eval": "--num-eval",
    "seeds": "--seeds",
    "sampler": "--sampler",
    "num_steps": "--num-steps",
}


class ResumeError(ValueError):
    """An ``--output`` folder that cannot take this run; the message names the flag to change."""


def jsonable(value: Any) -> Any:
    """``value`` as a JSON file stores it (tuples become lists), for comparing with what it stored."""
    return json.loads(json.dumps(value, default=float))


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename: a
    reader (or a crash) sees the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def previous_results(out: Path, resume: bool, filename: str = "quality.json") -> dict[str, Any] | None:
    """The earlier part of the run in ``out`` (``--resume``), or None for a fresh folder.

    Raises:
        ResumeError: when ``out`` already holds results and ``resume`` is off (results are never
            overwritten), and when ``resume`` is on but there is no readable result or no
            segmenter to continue with; all of it before any training.
    """
    path = out / filename
    if not path.is_file():
        if resume:
            raise ResumeError(
                f"--resume: {path} does not exist; drop --resume to start a run in this --output"
            )
        return None
    if not resume:
        raise ResumeError(
            f"--output {out} already holds results ({path}); pass --resume to add methods to them, "
            "or choose another --output"
        )
    try:
        prev = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResumeError(f"--resume: {path} is not valid JSON ({e})") from e
    if not isinstance(prev, dict) or not isinstance(prev.get("methods"), dict):
        raise ResumeError(f"--resume: {path} has no 'methods' table; it is not a quality.py result")
    seg = out / "checkpoints" / "segmenter.pt"
    if not seg.is_file():
        raise ResumeError(
            f"--resume: {seg} is missing; added methods must be scored by the earlier segmenter"
        )
    return prev


def check_settings(
    prev: Mapping[str, Any], current: Mapping[str, Any], settings: Mapping[str, str] = RUN_SETTINGS
) -> None:
    """Raise :class:`ResumeError` where a setting of ``settings`` (named by its flag) or the step
    budget (``--calibration``) of this run's header ``current`` differs from the earlier part
    ``prev``: the checks that need no segmenter, made before any work."""
    for key, flag in settings.items():
        if key in prev and jsonable(prev[key]) != jsonable(current[key]):
            raise ResumeError(
                f"--resume: the earlier part ran with {flag} {prev[key]!r}, this one with {current[key]!r}; "
                "their rows would not be comparable"
            )
    before, now = prev.get("calibration"), current.get("calibration")
    if (before is None) != (now is None):
        said = ("with", "without") if before is not None else ("without", "with")
        raise ResumeError(
            f"--resume: the earlier part ran {said[0]} --calibration (step budgets), this one {said[1]}; "
            "their budgets would not be comparable"
        )
    for name in sorted(set(before or {}) & set(now or {})):
        a, b = before[name]["seconds_per_step"], now[name]["seconds_per_step"]
        if a != b:
            raise ResumeError(
                f"--resume: --calibration gives {name} {b} s/step, the earlier part used {a}; "
                "use the earlier part's calibration file"
            )


def check_compatible(
    prev: Mapping[str, Any], current: Mapping[str, Any], settings: Mapping[str, str] = RUN_SETTINGS
) -> None:
    """Raise :class:`ResumeError` where this run's header ``current`` differs from the earlier part
    ``prev``: a setting or the step budget (:func:`check_settings`), the segmenter file, the recipe
    of a method already run, or the reference rows (which only the data, the test slices and the
    segmenter set)."""
    check_settings(prev, current, settings)
    if prev.get("segmenter_sha256") not in (None, current["segmenter_sha256"]):
        raise ResumeError(
            "--resume: checkpoints/segmenter.pt is not the file the earlier part was scored with"
        )
    for name in prev["methods"]:
        before, now = prev.get("recipes", {}).get(name), current["recipes"].get(name)
        if before is not None and now is not None and jsonable(now) != jsonable(before):
            raise ResumeError(
                f"--resume: the recipe of {name} changed since the earlier part ({before} -> {jsonable(now)}); "
                "start a new --output"
            )
    for row in ("real", "painting"):
        for metric, cell in prev.get(row, {}).items():
            if metric not in current[row]:  # a metric this version no longer computes
                continue
            a, b = float(cell["mean"]), float(current[row][metric]["mean"])
            if not (math.isnan(a) and math.isnan(b)) and not abs(a - b) <= 1e-6 * max(1.0, abs(a)):
                raise ResumeError(
                    f"--resume: the {row} reference row changed since the earlier part ({metric} {a} -> {b}): "
                    "the phantom, the test slices or the segmenter differ"
                )


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def machine(device: str) -> dict[str, Any]:
    """Where a method ran (a table assembled over several runs may mix machines): date, processor,
    cores, torch threads, torch version, and the GPU's name on CUDA."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info
