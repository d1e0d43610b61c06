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
    "DatasetPair",
    "dataset_pairs",
    "read_dataset_json",
    "index_nnunet",
    "validation_cases",
    "read_label_names",
    "write_nnunet_dataset",
    "organ_slab",
    "REALCT_DIR",
    "realct_fixture",
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


NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class DatasetPair:
    """A CT volume (HU), its label volume and the case name it gets in the dataset."""

    image: Path
    label: Path
    case_id: str


#: medsynth's real-CT fixture: one patient's CT (128 x 128 x 80, LAS, HU) with TotalSegmentator
#: labels and their id -> name table (see its README.md for the origin and the MIT licence).
REALCT_DIR = Path(__file__).resolve().parent / "realct"


def realct_fixture() -> tuple[DatasetPair, Path]:
    """The shipped real-CT fixture as a CT/label pair (case ``realct``) and its ``structures.csv``."""
    return DatasetPair(
        REALCT_DIR / "ct.nii.gz", REALCT_DIR / "labels.nii.gz", "realct"
    ), REALCT_DIR / "structures.csv"


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
        return [DatasetPair(images, labels, case_id or _case_name(images))]
    if case_id is not None:
        raise ValueError("--case names one case: give single files to --images and --labels")
    label_files = sorted(p for p in labels.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
    if not label_files:
        raise ValueError(f"--labels {labels}: no .nii or .nii.gz files")
    pairs = []
    for lab in label_files:
        name = _case_name(lab)
        candidates = [images / lab.name, *(images / f"{name}_0000{sfx}" for sfx in NIFTI_SUFFIXES)]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise ValueError(
                f"--labels {lab}: no CT of the same name in --images {images} ({candidates[0].name})"
            )
        pairs.append(DatasetPair(image, lab, name))
    return pairs


def _case_name(path: Path) -> str:
    """File name without the NIfTI suffix and without nnU-Net's channel suffix ``_0000``."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[:-5] if name.endswith("_0000") else name


def _check_pair(pair: DatasetPair, names: dict[int, str], table: str) -> None:
    """Raise a ValueError naming the file when the pair cannot become a training case."""
    import nibabel as nib

    from medsynth.data.amos import _AFFINE_ATOL, hu_problem

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
    if not np.allclose(ct.affine, lab.affine, rtol=0.0, atol=_AFFINE_ATOL):
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
    :func:`read_label_names`), so :class:`medsynth.data.NNUNetDataModule` can map them by name
    onto another label set (``remap="by_name"``) whatever version of the labelling tool numbered
    them. Ids are kept as they are when the table numbers 1..N without gaps; otherwise they are
    renumbered 1..N in id order (``dataset.json`` keeps the original id of each name under
    ``medsynth_source_ids``). Every pair is validated before anything is written (same grid, CT in
    HU, every label id named); the dataset is assembled in a staging folder and renamed into place,
    so ``output`` holds a whole dataset or nothing.

    Args:
        pairs: The cases (:class:`DatasetPair`); case names must be unique.
        output: The dataset folder to create (e.g. ``Dataset700_MyCT``); must not exist yet.
        names: The id -> name table (:func:`read_label_names`).
        description: ``dataset.json`` description.

    Returns:
        ``output``.
    """
    import os
    import shutil

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
