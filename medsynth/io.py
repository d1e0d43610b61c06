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

from medsynth.data.amos import AFFINE_ATOL, hu_problem
from medsynth.data.geometry import VolumeGeometry
from medsynth.data.nnunet import read_label_names
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
    "DatasetPair",
    "dataset_pairs",
    "write_nnunet_dataset",
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


# ----------------------------------------------------------------------------- nnU-Net datasets
@dataclass(frozen=True)
class DatasetPair:
    """A CT volume (HU), its label volume and the case name it gets in the dataset."""

    image: Path
    label: Path
    case_id: str


def dataset_pairs(images: str | Path, labels: str | Path, case_id: str | None = None) -> list[DatasetPair]:
    """The CT/label pairs of two files, or of two folders (each label file with the CT of the same
    name or of nnU-Net's ``<case>_0000`` name).

    Args:
        images: A CT volume, or a folder of them.
        labels: Its label volume, or a folder of them.
        case_id: The case name for a single pair (default: the CT's file name without the NIfTI
            suffix and a trailing ``_0000``).

    Raises:
        ValueError: naming ``--images``/``--labels`` when they are missing, mixed (a file and a
            folder), empty, or a label file has no CT.
    """
    images, labels = Path(images), Path(labels)
    for flag, path in (("--images", images), ("--labels", labels)):
        if not path.exists():
            raise ValueError(f"{flag} {path}: not found")
    if images.is_file() != labels.is_file():
        raise ValueError(f"--images {images} and --labels {labels} must both be files or both be folders")
    if images.is_file():
        return [DatasetPair(images, labels, case_id or case_name(images))]
    if case_id is not None:
        raise ValueError("--case names one case: give single files to --images and --labels")
    label_files = nifti_files(labels)
    if not label_files:
        raise ValueError(f"--labels {labels}: no .nii or .nii.gz files")
    pairs = []
    for lab in label_files:
        name = case_name(lab)
        candidates = [images / lab.name, *(images / f"{name}_0000{sfx}" for sfx in NIFTI_SUFFIXES)]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise ValueError(
                f"--labels {lab}: no CT of the same name in --images {images} ({candidates[0].name})"
            )
        pairs.append(DatasetPair(image, lab, name))
    return pairs


def _check_pair(pair: DatasetPair, names: dict[int, str], table: str) -> None:
    """Raise a ValueError naming the file when the pair cannot become a training case."""
    import nibabel as nib

    imgs = []
    for path, what in ((pair.image, "CT"), (pair.label, "label")):
        try:
            img = nib.load(str(path))
            shape = img.shape
        except Exception as err:  # noqa: BLE001 - any reader failure gets the same message
            raise ValueError(f"{path}: cannot read {what} volume ({err})") from err
        if len(shape) != 3 and not (len(shape) == 4 and shape[3] == 1):
            raise ValueError(f"{path}: expected a 3D {what} volume, got shape {shape}")
        imgs.append(img)
    ct, lab = imgs
    if ct.shape[:3] != lab.shape[:3]:
        raise ValueError(
            f"{pair.label}: shape {lab.shape[:3]} differs from the CT's {ct.shape[:3]} ({pair.image})"
        )
    if not np.allclose(ct.affine, lab.affine, rtol=0.0, atol=AFFINE_ATOL):
        diff = float(np.abs(ct.affine - lab.affine).max())
        raise ValueError(
            f"{pair.label}: grid (affine) differs from the CT's by up to {diff:.4g} ({pair.image}); the two "
            "volumes must share one voxel grid (resample the labels onto the CT with nearest neighbour)"
        )
    hu = np.asanyarray(ct.dataobj)
    problem = hu_problem(hu, pair.image)
    if problem is not None:
        raise ValueError(problem)
    labels = np.asanyarray(lab.dataobj)
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise ValueError(f"{pair.label}: label values must be integers, found fractions")
    values = np.unique(labels).astype(np.int64)
    unknown = [int(v) for v in values if v != 0 and int(v) not in names]
    if unknown:
        raise ValueError(
            f"{pair.label}: label ids {unknown[:10]} are not in --names {table} (it names ids "
            f"{min(names)}..{max(names)}); give the id -> name table that came with these labels"
        )


def write_nnunet_dataset(
    pairs: list[DatasetPair],
    output: str | Path,
    names: str | Path,
    *,
    description: str = "CT with its label volumes, imported by medsynth dataset",
) -> Path:
    """Write CT + label volumes as an nnU-Net v2 raw dataset whose ``dataset.json`` names every id.

    The structure names come from the table that came with the labels (``names``, see
    :func:`medsynth.data.nnunet.read_label_names`), so :class:`medsynth.data.NNUNetDataModule` can map them by name
    onto another label set (``remap="by_name"``) whatever version of the labelling tool numbered
    them. Ids are kept as they are when the table numbers 1..N without gaps; otherwise they are
    renumbered 1..N in id order (``dataset.json`` keeps the original id of each name under
    ``medsynth_source_ids``). Every pair is validated before anything is written (same grid, CT in
    HU, every label id named); the dataset is assembled in a staging folder and renamed into place,
    so ``output`` holds a whole dataset or nothing.

    Args:
        pairs: The cases (:class:`DatasetPair`); case names must be unique.
        output: The dataset folder to create (e.g. ``Dataset700_MyCT``); must not exist yet.
        names: The id -> name table (:func:`medsynth.data.nnunet.read_label_names`).
        description: ``dataset.json`` description.

    Returns:
        ``output``.
    """
    import nibabel as nib

    output = Path(output)
    if not pairs:
        raise ValueError("no CT/label pairs given")
    ids = [p.case_id for p in pairs]
    dup = sorted({c for c in ids if ids.count(c) > 1})
    if dup:
        raise ValueError(f"several inputs give the case name(s) {dup}")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"--output {output} exists and is not empty; refusing to overwrite a dataset")
    table = read_label_names(names)
    for pair in pairs:
        _check_pair(pair, table, str(names))
    source_ids = sorted(table)
    renumber = source_ids != list(range(1, len(source_ids) + 1))
    lut = np.zeros(max(source_ids) + 1, dtype=np.int64)
    lut[source_ids] = np.arange(1, len(source_ids) + 1)
    dtype = np.uint8 if len(source_ids) < 256 else np.uint16
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "imagesTr").mkdir(parents=True)
        (staging / "labelsTr").mkdir()
        for pair in pairs:
            ct = nib.load(str(pair.image))
            image_out = staging / "imagesTr" / f"{pair.case_id}_0000.nii.gz"
            if pair.image.name.endswith(".nii.gz") and len(ct.shape) == 3:
                shutil.copyfile(pair.image, image_out)
            else:
                data = np.asanyarray(ct.dataobj)
                nib.save(nib.Nifti1Image(data.reshape(data.shape[:3]), ct.affine, ct.header), str(image_out))
            lab = nib.load(str(pair.label))
            values = np.asanyarray(lab.dataobj).reshape(lab.shape[:3])
            values = np.rint(values).astype(np.int64)
            if renumber:
                values = lut[values]
            nib.save(
                nib.Nifti1Image(values.astype(dtype), ct.affine),
                str(staging / "labelsTr" / f"{pair.case_id}.nii.gz"),
            )
        meta = {
            "name": output.name,
            "description": description,
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, **{table[i]: k for k, i in enumerate(source_ids, start=1)}},
            "numTraining": len(pairs),
            "file_ending": ".nii.gz",
        }
        if renumber:
            meta["medsynth_source_ids"] = {table[i]: i for i in source_ids}
        (staging / "dataset.json").write_text(json.dumps(meta, indent=2))
        if output.exists():
            output.rmdir()  # empty, checked above
        output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output
