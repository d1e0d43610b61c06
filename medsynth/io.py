"""The files medsynth reads and writes: NIfTI discovery, case names, atomic writes, label cases.

One home for what synthesis, ``masks``, ``label`` and ``evaluate`` share. Every write goes to a
temporary name beside its target and is renamed onto it (:func:`atomic_path`), so a reader never
sees half a file and an interrupted run leaves the previous file, or none, in place. NIfTI volumes
are read with :func:`medsynth.data.transforms.load_nifti` (the slice pipeline's reader, re-exported
here); label volumes become a :class:`LabelCase` through the same canonical orientation and body
class as the training data.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.data.geometry import VolumeGeometry
from medsynth.data.transforms import CANONICAL_AXCODES, add_body_class, body_mask, canonicalize, load_nifti
from medsynth.labels import LabelSet, get_label_set

__all__ = [
    "NIFTI_SUFFIXES",
    "is_nifti",
    "nifti_stem",
    "case_name",
    "nifti_files",
    "nifti_inputs",
    "find_image",
    "atomic_path",
    "save_nifti",
    "write_json",
    "copy_file",
    "load_nifti",
    "LabelCase",
    "read_label_case",
]

#: File endings read as NIfTI, the longer first.
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: nnU-Net's suffix of a case's first (here: only) image channel.
_CHANNEL_0 = "_0000"


def is_nifti(path: str | Path) -> bool:
    """Whether ``path``'s name ends in ``.nii`` or ``.nii.gz``."""
    return Path(path).name.endswith(NIFTI_SUFFIXES)


def _nifti_suffix(path: Path) -> str:
    return next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), "")


def nifti_stem(path: str | Path) -> str:
    """The file name without its NIfTI suffix (``amos_0001.nii.gz`` -> ``amos_0001``); other files: ``Path.stem``."""
    path = Path(path)
    suffix = _nifti_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


def case_name(path: str | Path) -> str:
    """A CT volume's case name: :func:`nifti_stem` without nnU-Net's channel suffix ``_0000``."""
    stem = nifti_stem(path)
    return stem[: -len(_CHANNEL_0)] if is_nifti(path) and stem.endswith(_CHANNEL_0) else stem


def nifti_files(folder: str | Path) -> list[Path]:
    """The ``*.nii``/``*.nii.gz`` files directly in ``folder``, sorted (none for a missing folder)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if is_nifti(p)) if folder.is_dir() else []


def nifti_inputs(path: str | Path, name: str = "path") -> list[Path]:
    """A NIfTI file as a one-element list, or every NIfTI file directly in a folder (sorted).

    Args:
        path: A file or a folder.
        name: How errors name ``path`` (a command passes its flag, e.g. ``"--input"``).

    Raises:
        ValueError: naming ``name`` and the path when it does not exist or a folder holds no NIfTI.
    """
    path = Path(path)
    if path.is_dir():
        inputs = nifti_files(path)
        if not inputs:
            raise ValueError(f"{name} {path}: no .nii or .nii.gz files")
        return inputs
    if path.is_file():
        return [path]
    raise ValueError(f"{name} not found: {path}")


def find_image(label_path: str | Path, images: str | Path) -> Path:
    """The CT volume matching a label volume in folder ``images``.

    Looks for the same file name (AMOS layout: ``imagesTr/amos_0001.nii.gz``) and for nnU-Net's
    first-channel name (``imagesTr/<case>_0000.nii.gz`` beside ``labelsTr/<case>.nii.gz``).

    Raises:
        ValueError: naming both candidates when neither exists.
    """
    label_path, images = Path(label_path), Path(images)
    suffix = _nifti_suffix(label_path) or label_path.suffix
    candidates = [images / label_path.name, images / f"{nifti_stem(label_path)}{_CHANNEL_0}{suffix}"]
    for image in candidates:
        if image.is_file():
            return image
    raise ValueError(f"{label_path}: no matching CT image ({candidates[0]} or {candidates[1].name})")


# ----------------------------------------------------------------------------- atomic writes
@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block succeeds.

    The temporary name is hidden (``.<name>.partial``, plus the NIfTI suffix of ``path`` so that
    nibabel picks the same format); it is removed when the block raises. Parent folders are
    created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial{_nifti_suffix(path)}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array [X, Y, Z]`` with ``affine [4, 4]`` as NIfTI (dtype as given), atomically."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(array, np.asarray(affine)), str(tmp))
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
    return Path(path)


def copy_file(source: str | Path, path: str | Path) -> Path:
    """Copy ``source`` to ``path`` (contents only), atomically."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)


# ----------------------------------------------------------------------------- label cases
@dataclass
class LabelCase:
    """A validated label volume, ready for synthesis.

    Attributes:
        path: Source file.
        name: Case name (file name without the NIfTI suffix).
        mask: uint8 ``[H, W, D]`` in canonical orientation, values 0..16 with the body class.
        geometry: Shape and affine of the input file (to put synthetic slices back).
        labels: The input labels as stored (AMOS ids, 16 = body kept if present) ``[X, Y, Z]``.
    """

    path: Path
    name: str
    mask: np.ndarray
    geometry: VolumeGeometry
    labels: np.ndarray


def read_label_case(
    path: str | Path,
    image: str | Path | None = None,
    body_threshold: float = -500.0,
    label_set: LabelSet | str | None = None,
) -> LabelCase:
    """Read and validate a label volume; add the body class as in training.

    The body class (16 for AMOS, the label set's ``body`` in general) is taken from the labels
    when present. Otherwise it is derived, exactly as in training, from the matching CT volume
    ``image`` (threshold and morphology). Without either there is no body outline to condition
    on, which is an error.

    Args:
        path: The label volume.
        image: Its CT volume (for the body class), or None.
        body_threshold: HU threshold of the body outline.
        label_set: The label set the values must fit (a model's ``label_set``; None: AMOS).

    Raises:
        ValueError: naming the file for unreadable volumes, non-integer labels, values outside
            the label set (listing them), an image of another shape or geometry, or a missing
            body outline.
    """
    labels_set = get_label_set("amos" if label_set is None else label_set)
    body = labels_set.body
    path = Path(path)
    try:
        raw, affine = load_nifti(path, label=True)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read label volume ({err})") from err
    raw = np.asarray(raw)
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.array_equal(raw, np.round(raw)):
            raise ValueError(
                f"{path}: labels must be integers 0..{labels_set.num_classes - 1}, found non-integer values"
            )
    if raw.size and (raw.min() < 0 or raw.max() >= labels_set.num_classes):
        values = np.unique(raw)
        bad = values[(values < 0) | (values >= labels_set.num_classes)]
        raise ValueError(
            f"{path}: label values {bad[:10].astype(np.int64).tolist()} do not fit the label set "
            f"{labels_set.name!r} (ids 0..{labels_set.num_classes - 1}, {body} = body)"
        )
    labels = raw.astype(np.uint8)
    lab_c, _ = canonicalize(labels, affine, CANONICAL_AXCODES)  # [H, W, D]
    if (lab_c == body).any():
        mask = lab_c
    elif image is not None:
        image = Path(image)
        try:
            hu, img_affine = load_nifti(image)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{image}: cannot read CT volume ({err})") from err
        if hu.shape != labels.shape or not np.allclose(img_affine, affine, atol=1e-3):
            raise ValueError(
                f"{image}: shape/geometry {hu.shape} differs from the label volume {path} {labels.shape}"
            )
        hu_c, _ = canonicalize(hu, img_affine, CANONICAL_AXCODES)
        mask = add_body_class(np.where(lab_c == body, 0, lab_c), body_mask(hu_c, body_threshold), body)
    else:
        raise ValueError(
            f"{path}: no body label ({body}) in the volume and no CT image to derive it from; "
            f"pass the matching CT with --images, or add the body class to the labels"
        )
    return LabelCase(
        path, nifti_stem(path), mask, VolumeGeometry(tuple(labels.shape), np.asarray(affine)), labels
    )
