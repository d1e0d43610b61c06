"""nnU-Net v2 raw dataset index (Isensee et al., 2021): any labelled CT dataset in that layout.

``dataset.json`` (``labels``: name -> id, ``file_ending``, ``channel_names``), ``imagesTr/
<case>_0000<ending>`` with ``labelsTr/<case><ending>``, and optionally ``imagesTs/`` with
``labelsTs/``. TotalSegmentator outputs and ``medsynth label`` write this layout too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "NNUNetCase",
    "read_dataset_json",
    "index_nnunet",
    "validation_cases",
    "read_label_names",
    "organ_slab",
    "REALCT_DIR",
    "REALCT_TEST_SLAB",
    "realct_files",
]


@dataclass(frozen=True)
class NNUNetCase:
    """One labelled case: ``case_id`` (the label file's stem), its CT ``image`` and ``label`` paths."""

    case_id: str
    image: Path
    label: Path


def read_dataset_json(root: Path) -> dict:
    """``dataset.json`` of ``root``, checked for one CT channel and a ``labels`` table.

    Raises:
        FileNotFoundError / ValueError: naming the file and the problem.
    """
    path = root / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{root}: no dataset.json (an nnU-Net v2 raw dataset has one)")
    try:
        meta = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict):
        raise ValueError(f"{path}: no 'labels' mapping")
    channels = meta.get("channel_names", meta.get("modality", {"0": "CT"}))
    if not isinstance(channels, dict) or len(channels) != 1:
        raise ValueError(
            f"{path}: medsynth needs exactly one input channel (CT), got channel_names {channels!r}"
        )
    return meta


def index_nnunet(root: str | Path) -> dict[str, list[NNUNetCase]]:
    """The labelled cases of ``imagesTr/labelsTr`` ("training") and ``imagesTs/labelsTs`` ("test").

    A case is named by its label file; its image is ``<case>_0000<file_ending>`` in the matching
    images folder (a missing image makes the case bad at validation, naming the file).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"nnU-Net dataset {str(root)!r} does not exist or is not a folder")
    meta = read_dataset_json(root)
    ending = str(meta.get("file_ending", ".nii.gz"))
    out: dict[str, list[NNUNetCase]] = {}
    for split, (img_dir, lab_dir) in {
        "training": ("imagesTr", "labelsTr"),
        "test": ("imagesTs", "labelsTs"),
    }.items():
        labels = sorted((root / lab_dir).glob(f"*{ending}")) if (root / lab_dir).is_dir() else []
        out[split] = [
            NNUNetCase(f.name[: -len(ending)], root / img_dir / f"{f.name[: -len(ending)]}_0000{ending}", f)
            for f in labels
        ]
    if not out["training"]:
        raise FileNotFoundError(f"{root}: no label volumes *{ending} in labelsTr/")
    return out


def validation_cases(case_ids: list[str], num_val: int, seed: int = 0) -> set[str]:
    """A deterministic validation subset of ``num_val`` cases: the lowest SHA-256 of (seed, id).

    Independent of the listing order and stable when cases are added (a case keeps its place
    unless a new one hashes lower).
    """
    ranked = sorted(case_ids, key=lambda c: hashlib.sha256(f"{seed}\x00{c}".encode()).hexdigest())
    return set(ranked[:num_val])


# ----------------------------------------------------------------------------- building a dataset
def read_label_names(table: str | Path) -> dict[int, str]:
    """The structure name of every label id, from a table that came with the label volumes.

    Args:
        table: ``"totalseg"`` (the installed TotalSegmentator's ``total`` ids), ``"amos"``, a
            dataset.json (nnU-Net v2 ``labels``: name -> id), or a CSV file with an ``id`` column
            and a ``structure`` or ``name`` column (TotalSegmentator's ``structures.csv``).

    Returns:
        ``{id: name}`` without background (id 0).

    Raises:
        ValueError: naming the table when it is unreadable, lacks the columns, repeats an id or a
            name, or has ids that are not positive integers.
    """
    import csv

    from medsynth.labels import get_label_set

    key = str(table)
    if key in ("totalseg", "amos"):
        labels = get_label_set(key)
        return {c.index: c.name for c in labels.classes if c.index not in (0, labels.body)}
    path = Path(table)
    if not path.is_file():
        raise ValueError(f"--names {path}: no such file (give a CSV or dataset.json, or 'totalseg' / 'amos')")
    pairs: list[tuple[object, object]] = []
    if path.suffix.lower() == ".json":
        try:
            labels = json.loads(path.read_text()).get("labels")
        except (OSError, ValueError, AttributeError) as err:
            raise ValueError(f"--names {path}: not a readable dataset.json ({err})") from err
        if not isinstance(labels, dict):
            raise ValueError(f"--names {path}: no 'labels' mapping")
        for name, i in labels.items():
            if isinstance(i, str) and not i.isdigit():  # the older id -> name form
                name, i = i, name
            pairs.append((i, name))
    else:
        try:
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, csv.Error, UnicodeDecodeError) as err:
            raise ValueError(f"--names {path}: not a readable CSV ({err})") from err
        columns = set(rows[0]) if rows else set()
        name_col = next((c for c in ("structure", "name") if c in columns), None)
        if "id" not in columns or name_col is None:
            raise ValueError(
                f"--names {path}: needs an 'id' column and a 'structure' or 'name' column, got {sorted(columns)}"
            )
        pairs = [(r["id"], r[name_col]) for r in rows]
    out: dict[int, str] = {}
    for i, name in pairs:
        try:
            i = int(str(i).strip())
        except ValueError:
            raise ValueError(f"--names {path}: id {i!r} of {name!r} is not an integer") from None
        name = str(name).strip()
        if i == 0 and name == "background":
            continue
        if i < 1 or not name:
            raise ValueError(f"--names {path}: id {i} ({name!r}) must be a positive integer with a name")
        if i in out:
            raise ValueError(f"--names {path}: id {i} is listed twice ({out[i]!r}, {name!r})")
        out[i] = name
    dup = sorted({n for n in out.values() if list(out.values()).count(n) > 1})
    if dup or "body" in out.values():
        raise ValueError(
            f"--names {path}: names must be unique and not 'body' (medsynth's own), got {dup or ['body']}"
        )
    if not out:
        raise ValueError(f"--names {path}: names no structure")
    return out


#: medsynth's real-CT fixture: one patient's CT (128 x 128 x 80, LAS, HU) with TotalSegmentator
#: labels and their id -> name table (see its README.md for the origin and the MIT licence).
REALCT_DIR = Path(__file__).resolve().parent / "realct"
#: The held-out slab of the real case (canonical slices 20-33: kidneys, pancreas, liver, spleen,
#: stomach and aorta together; :func:`organ_slab`), as experiments/realct and the demo use it.
REALCT_TEST_SLAB = (20, 34)


def realct_files() -> tuple[Path, Path, Path]:
    """``(ct, labels, structures.csv)`` of the shipped real-CT fixture (case ``realct``)."""
    return REALCT_DIR / "ct.nii.gz", REALCT_DIR / "labels.nii.gz", REALCT_DIR / "structures.csv"


def organ_slab(mask: np.ndarray, organs: list[int], min_pixels: int = 1) -> tuple[int, int]:
    """The smallest run of axial slices ``[start, stop)`` holding every organ of ``organs``.

    For a z split of one patient (``NNUNetDataModule(test_slab=...)``): the held-out slab should
    show every organ the evaluation scores. An organ counts in a slab when its slices there hold at
    least ``min_pixels`` of it together.

    Args:
        mask: Label slices ``[D, H, W]`` in canonical order (slice index first), e.g.
            ``SliceVolume.mask``.
        organs: Label ids that must all appear.
        min_pixels: Pixels of each organ the slab must hold (1).

    Raises:
        ValueError: naming the organs that appear nowhere in the volume (or not that much).
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be [D, H, W] label slices, got shape {mask.shape}")
    if not organs:
        raise ValueError("organs must name at least one label id")
    counts = np.stack([(mask == o).sum(axis=(1, 2)) for o in organs], axis=1)  # [D, organs]
    short = [o for o, total in zip(organs, counts.sum(0)) if total < min_pixels]
    if short:
        raise ValueError(f"organ ids {short} have fewer than {min_pixels} pixels in the whole volume")
    cum = np.concatenate([np.zeros((1, len(organs)), np.int64), np.cumsum(counts, axis=0)])  # [D + 1, organs]
    best: tuple[int, int] | None = None
    stop = 0
    for start in range(len(mask)):  # two pointers: the shortest window starting at each slice
        stop = max(stop, start + 1)
        while stop <= len(mask) and not (cum[stop] - cum[start] >= min_pixels).all():
            stop += 1
        if stop > len(mask):
            break
        if best is None or stop - start < best[1] - best[0]:
            best = (start, stop)
    assert best is not None  # every organ is present somewhere, so the whole volume qualifies
    return best
