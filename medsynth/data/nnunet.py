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

__all__ = ["NNUNetCase", "read_dataset_json", "index_nnunet", "validation_cases"]


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
