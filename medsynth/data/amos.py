"""AMOS22 folder index and per-case validation (Ji et al., 2022; Zhuang et al., Sec. 3).

The AMOS22 release: ``dataset.json`` with ``training`` and ``validation`` lists of
``{"image": "./imagesTr/amos_0001.nii.gz", "label": "./labelsTr/amos_0001.nii.gz"}`` and the
folders ``imagesTr/ labelsTr/ imagesVa/ labelsVa/``. Cases numbered above 500 are MRI and are
left out (the paper uses CT only: 200 training volumes, 50 test volumes from validation).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsynth.data.transforms import PreprocessConfig, SliceVolume, preprocess_volume
from medsynth.labels import NUM_ORGANS

__all__ = [
    "AMOSCase",
    "index_amos",
    "MRI_MIN_ID",
    "MAX_AIR_HU",
    "AFFINE_ATOL",
    "check_case",
    "hu_problem",
    "load_checked",
]

log = logging.getLogger(__name__)

#: AMOS22 case numbers above 500 are MRI.
MRI_MIN_ID = 501
_ID = re.compile(r"amos_(\d+)")
_FOLDERS = {"training": ("imagesTr", "labelsTr"), "validation": ("imagesVa", "labelsVa")}
#: mm (and direction-cosine units) by which an image and its label volume may differ in geometry.
AFFINE_ATOL = 1e-3


@dataclass(frozen=True)
class AMOSCase:
    """One labelled AMOS22 case.

    Attributes:
        case_id: File stem, e.g. ``"amos_0001"``.
        number: The AMOS number (``> 500``: MRI).
        image: Path of the CT volume.
        label: Path of the label volume.
    """

    case_id: str
    number: int
    image: Path
    label: Path


def _case(root: Path, image: str, label: str) -> AMOSCase:
    img, lab = (root / image).resolve(), (root / label).resolve()
    stem = img.name.split(".")[0]
    m = _ID.search(stem)
    if m is None:
        raise ValueError(f"{img}: expected a file named amos_NNNN.nii.gz")
    return AMOSCase(stem, int(m.group(1)), img, lab)


def index_amos(root: str | Path) -> dict[str, list[AMOSCase]]:
    """List the CT cases of the ``training`` and ``validation`` sets, sorted by number.

    ``dataset.json`` is read when present; otherwise the ``imagesTr``/``imagesVa`` folders are
    listed (labels from the matching ``labels*`` folder). MRI cases are left out and counted in
    the log.

    Args:
        root: The AMOS22 folder.

    Returns:
        ``{"training": [...], "validation": [...]}``.

    Raises:
        FileNotFoundError: ``root`` does not exist (the message names it).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"AMOS22 root {str(root)!r} does not exist or is not a folder")
    meta_file = root / "dataset.json"
    out: dict[str, list[AMOSCase]] = {}
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        for split in _FOLDERS:
            entries = meta.get(split, [])
            if not isinstance(entries, list):
                raise ValueError(f"{meta_file}: {split!r} must be a list of {{'image', 'label'}} entries")
            out[split] = [_case(root, e["image"], e["label"]) for e in entries]
    else:
        for split, (img_dir, lab_dir) in _FOLDERS.items():
            files = sorted((root / img_dir).glob("amos_*.nii*"))
            out[split] = [_case(root, f"{img_dir}/{f.name}", f"{lab_dir}/{f.name}") for f in files]
        if not any(out.values()):
            raise FileNotFoundError(f"{root}: no dataset.json and no imagesTr/ or imagesVa/ volumes")
    for split, cases in out.items():
        ct = sorted((c for c in cases if c.number < MRI_MIN_ID), key=lambda c: c.number)
        n_mri = len(cases) - len(ct)
        log.info("AMOS22 %s: %d CT cases, %d MRI cases (ids > 500) left out", split, len(ct), n_mri)
        out[split] = ct
    return out


def check_case(
    case: AMOSCase, max_label: int = NUM_ORGANS
) -> tuple[str | None, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """Read and validate a case (any object with ``image`` and ``label`` paths).

    Checks: both files readable, 3D, same shape and geometry (affine), label values integers
    within ``0..max_label`` (15 for AMOS), finite intensities.

    Returns:
        ``(problem, None)`` for a bad case, the problem naming the file; otherwise
        ``(None, (hu, label, affine))``.
    """
    from medsynth.data.transforms import load_nifti

    for path in (case.image, case.label):
        if not path.is_file():
            return f"{path}: file not found", None
    try:
        hu, affine = load_nifti(case.image)
    except Exception as e:  # noqa: BLE001 - any reader failure makes the case bad
        return f"{case.image}: unreadable ({type(e).__name__}: {e})", None
    try:
        label, label_affine = load_nifti(case.label, label=True)
    except Exception as e:  # noqa: BLE001
        return f"{case.label}: unreadable ({type(e).__name__}: {e})", None
    if hu.shape != label.shape:
        return f"{case.label}: shape {label.shape} differs from the image's {hu.shape} ({case.image})", None
    if not np.allclose(affine, label_affine, rtol=0.0, atol=AFFINE_ATOL):
        diff = float(np.abs(affine - label_affine).max())
        return (
            f"{case.label}: geometry (affine) differs from the image's by up to {diff:.4g} ({case.image})",
            None,
        )
    finite = np.isfinite(hu)
    if not finite.all():
        return f"{case.image}: {int((~finite).sum())} non-finite intensities (NaN/inf)", None
    problem = hu_problem(hu, case.image)
    if problem is not None:
        return problem, None
    values = np.unique(label)
    bad = values[(values < 0) | (values > max_label) | (values != np.round(values))]
    if bad.size:
        return f"{case.label}: label values outside 0..{max_label}: {bad[:10].tolist()}", None
    return None, (hu, label, affine)


#: A CT in Hounsfield units has air (-1000 HU) around and inside the body; a volume with no value
#: below this is no HU image (an 8-bit screenshot, or raw detector values without the DICOM rescale).
MAX_AIR_HU = -200.0


def hu_problem(hu: np.ndarray, path: str | Path) -> str | None:
    """Why ``hu`` does not look like CT in Hounsfield units (naming ``path``), or None."""
    lo, hi = float(np.min(hu)), float(np.max(hu))
    if lo > MAX_AIR_HU:
        return (
            f"{path}: values {lo:g}..{hi:g} have no air (nothing below {MAX_AIR_HU:g} HU): not CT in "
            "Hounsfield units (an 8-bit or windowed export, or raw values without the DICOM rescale "
            "slope/intercept?); medsynth needs HU"
        )
    return None


def load_checked(case: AMOSCase, config: PreprocessConfig, max_label: int = NUM_ORGANS) -> SliceVolume | str:
    """Validate (labels within ``0..max_label`` as stored) and preprocess a case: the volume, or the problem."""
    problem, data = check_case(case, max_label)
    if problem is not None:
        return problem
    hu, label, affine = data
    return preprocess_volume(hu, label, affine, config, case.case_id)
