"""New label volumes from existing ones: grow or shrink an organ, deform the whole map.

Synthetic training data are only as varied as the masks they are generated from. MAISI
(Guo et al., 2024) controls organ size to make synthetic image/label pairs that help
segmentation; Zhuang et al. (Sec. 4) name augmentation as the purpose of their models. The
functions here work on a label volume in its own voxel grid (``[X, Y, Z]`` as stored in the
file) and its affine, measure every distance in millimetres (anisotropic spacing respected),
and return a valid label volume of the same shape and label set:

- :func:`scale_organ` changes one organ's volume by a factor. It grows only into the body class
  (never into other organs or the air outside the patient), so no other organ is cut and the
  body outline stays as it was; it shrinks by peeling the organ's outer layer, which becomes body.
- :func:`deform` applies a smooth random elastic deformation (nearest-label resampling); the
  body outline keeps its connected-component count and no organ vanishes.

- :func:`resample_labels` puts a label volume on another grid (slice thickness, in-plane
  spacing, field of view) by nearest neighbour, as a scan of the same anatomy with other
  acquisition settings would label it.

Every function takes the label set of the volume (``label_set``: ``"amos"``, the default,
``"totalseg"`` or a dataset.json; :func:`medsynth.labels.get_label_set`). The volume must contain
the label set's body class: without a body outline the synthesis models have nothing to
condition the patient's extent on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsynth.labels import BACKGROUND, LabelSet, get_label_set

__all__ = [
    "voxel_spacing",
    "resolve_organ",
    "scale_organ",
    "deform",
    "check_label_volume",
    "vary_volume",
    "vary_files",
    "resample_labels",
]

LabelSetLike = LabelSet | str


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths in mm along the array axes (the norms of the affine's columns)."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {a.shape}")
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"affine has a zero-length voxel axis (spacing {spacing.tolist()})")
    return tuple(float(s) for s in spacing)


def check_label_volume(
    labels: np.ndarray, name: str = "labels", label_set: LabelSetLike = "amos"
) -> np.ndarray:
    """Validate a label volume ``[X, Y, Z]`` with the body class and return it as uint8.

    Raises:
        ValueError: naming ``name`` for a wrong rank, non-integer values, values outside the
            label set (``0..num_classes - 1``), or a volume without any body voxel.
    """
    labels_set = get_label_set(label_set)
    body, top = labels_set.body, labels_set.num_classes - 1
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"{name} must be a 3D volume [X, Y, Z], got shape {lab.shape}")
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or not np.array_equal(lab, np.round(lab)):
            raise ValueError(f"{name} must hold integer class ids, found non-integer values")
    elif lab.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer class ids, got dtype {lab.dtype}")
    if lab.size and (lab.min() < 0 or lab.max() > top):
        raise ValueError(
            f"{name} values must lie in 0..{top} (label set {labels_set.name!r}), found {lab.min():g}..{lab.max():g}"
        )
    lab = lab.astype(np.uint8)
    if not (lab == body).any():
        raise ValueError(
            f"{name} has no body outline (class {body}, 'body'); add it from the CT first "
            f"(medsynth masks --images DIR derives it as in training)"
        )
    return lab


def resolve_organ(organ: str | int, label_set: LabelSetLike = "amos") -> int:
    """An organ's id from its name (``"liver"``, or its TotalSegmentator name) or id in the label
    set; background and body are not organs.

    Raises:
        ValueError: listing the valid organ names when ``organ`` is not one of them.
    """
    labels_set = get_label_set(label_set)
    ids = labels_set.structure_ids
    valid = ", ".join(labels_set.classes[i].name for i in ids)
    if isinstance(organ, bool):
        raise ValueError(f"organ must be a name or an id, got {organ!r}")
    if isinstance(organ, (int, np.integer)):
        if int(organ) not in ids:
            raise ValueError(f"organ id {organ} is not an organ of the label set; organs: {valid}")
        return int(organ)
    text = str(organ).strip()
    if text.isdigit():
        return resolve_organ(int(text), labels_set)
    try:
        idx = labels_set.by_name(text).index
    except KeyError:
        raise ValueError(f"unknown organ {organ!r}; organs: {valid}") from None
    if idx not in ids:
        raise ValueError(f"{organ!r} is not an organ; organs: {valid}")
    return idx


def scale_organ(
    labels: np.ndarray,
    affine: np.ndarray,
    organ: str | int,
    factor: float,
    *,
    tolerance: float = 0.1,
    label_set: LabelSetLike = "amos",
) -> np.ndarray:
    """Grow or shrink one organ so that its voxel count changes by ``factor``.

    Growing adds the body voxels within a distance ``d`` (mm) of the organ that are connected to
    it through body or organ voxels; shrinking removes the organ voxels within ``d`` of its
    surface (they become body). ``d`` is chosen so the new count is the closest reachable to
    ``factor`` times the old one.

    Args:
        labels: ``[X, Y, Z]`` integer label volume with the body class.
        affine: ``[4, 4]`` voxel -> world (mm) affine of ``labels``.
        organ: Name (``"liver"``) or id of the organ to change.
        factor: Volume factor, > 0 (2.0 doubles the organ, 0.5 halves it).
        tolerance: Largest relative error of the new voxel count that is accepted.
        label_set: The volume's label set (``"amos"``; see the module doc).

    Returns:
        uint8 ``[X, Y, Z]``: the same volume with the organ changed.

    Raises:
        ValueError: for a bad factor, an organ absent from the volume, or a factor that cannot be
            reached within ``tolerance`` (the body around the organ is too small to grow into, or
            the organ too small to shrink), naming the reachable range.
    """
    labels_set = get_label_set(label_set)
    body = labels_set.body
    lab = check_label_volume(labels, label_set=labels_set)
    idx = resolve_organ(organ, labels_set)
    name = labels_set.classes[idx].name
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be a finite number > 0, got {factor!r}")
    spacing = voxel_spacing(affine)
    region = lab == idx
    n0 = int(region.sum())
    if n0 == 0:
        raise ValueError(f"organ {name!r} (id {idx}) is absent from the label volume")
    target = factor * n0
    out = lab.copy()
    if factor == 1.0:
        return out
    # Ties in distance (whole shells of voxels at one distance on the grid) are broken by the
    # distance to the organ's centroid, so the count can hit the target voxel for voxel.
    coords = np.nonzero(region)
    centre = [float(c.mean()) * s for c, s in zip(coords, spacing)]

    def from_centre(mask: np.ndarray) -> np.ndarray:
        pts = np.nonzero(mask)
        return sum((p * s - c) ** 2 for p, s, c in zip(pts, spacing, centre))

    k = int(round(target))
    if factor < 1.0:
        if k < 1:
            raise ValueError(f"cannot shrink {name!r} by {factor:g}: it has only {n0} voxels")
        depth = ndimage.distance_transform_edt(region, sampling=spacing)  # mm to the organ's outside
        # Peel in order of depth, the farthest from the centre first within one depth.
        order = np.lexsort((-from_centre(region), depth[region]))
        idx_region = tuple(c[order[: n0 - k]] for c in coords)
        out[idx_region] = body
        return out
    # Growing: candidate voxels by distance to the organ, restricted to body connected to it.
    dist = ndimage.distance_transform_edt(~region, sampling=spacing)  # [X, Y, Z] mm to the organ
    allowed = (lab == body) | region

    def grown(d: float) -> np.ndarray:
        cand = allowed & (dist <= d)
        comp, _ = ndimage.label(cand)
        touching = np.unique(comp[region])
        return np.isin(comp, touching[touching > 0])

    reach = np.unique(dist[allowed & ~region])
    if reach.size == 0:
        raise ValueError(f"cannot grow {name!r}: no body voxels around it")
    lo, hi = 0, reach.size - 1
    # count(reach[j]) grows with j: bisect for the first j reaching the target.
    while lo < hi:
        mid = (lo + hi) // 2
        if grown(float(reach[mid])).sum() >= k:
            hi = mid
        else:
            lo = mid + 1
    full = grown(float(reach[lo]))
    if int(full.sum()) < k - tolerance * target:
        raise ValueError(
            f"cannot grow {name!r} by {factor:g}: only {int(full.sum()) - n0} body voxels are reachable "
            f"around its {n0}, the largest reachable factor is {full.sum() / n0:.3g}"
        )
    prev = grown(float(reach[lo - 1])) if lo > 0 else region
    shell = full & ~prev
    need = min(k - int(prev.sum()), int(shell.sum()))
    pts = np.nonzero(shell)
    take = np.argsort(from_centre(shell), kind="stable")[:need]  # nearest the centre first
    out[prev] = idx
    out[tuple(p[take] for p in pts)] = idx
    return out


def _smooth_field(
    shape: Sequence[int], spacing: Sequence[float], smoothness_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """A smooth random vector field ``[3, X, Y, Z]`` (mm) of maximum norm 1.

    White noise on a coarse grid of pitch ``smoothness_mm / 4`` is Gaussian-filtered (sigma 4
    coarse voxels, i.e. ``smoothness_mm``) and interpolated linearly to the voxel grid.
    """
    pitch = smoothness_mm / 4.0
    extent = [n * s for n, s in zip(shape, spacing)]
    coarse = [max(2, int(math.ceil(e / pitch)) + 1) for e in extent]
    field = []
    for _ in range(3):
        noise = ndimage.gaussian_filter(rng.standard_normal(coarse), sigma=4.0, mode="reflect")
        # Voxel centre i sits at i * spacing mm, i.e. at coarse coordinate i * spacing / pitch.
        axes = [np.arange(n) * s / pitch for n, s in zip(shape, spacing)]
        grid = np.meshgrid(*axes, indexing="ij", sparse=True)
        coords = np.broadcast_arrays(*grid)
        field.append(ndimage.map_coordinates(noise, coords, order=1, mode="nearest").astype(np.float32))
    vec = np.stack(field)  # [3, X, Y, Z]
    norm = float(np.sqrt((vec.astype(np.float64) ** 2).sum(0)).max())
    return vec / norm if norm > 0 else vec


def _component_count(mask: np.ndarray) -> int:
    return int(ndimage.label(mask)[1])


def deform(
    labels: np.ndarray,
    affine: np.ndarray,
    magnitude_mm: float,
    smoothness_mm: float = 40.0,
    seed: int = 0,
    *,
    max_tries: int = 4,
    label_set: LabelSetLike = "amos",
) -> np.ndarray:
    """A smooth random elastic deformation of the whole label map.

    A random displacement field with correlation length ``smoothness_mm`` and largest
    displacement ``magnitude_mm`` warps the map (nearest-label resampling). The body outline
    keeps as many connected components as the input had (stray pieces cut off by the warp go
    back to background) and every class present stays present; if a draw loses a class, the
    magnitude is halved and the field drawn again, at most ``max_tries`` times.

    Args:
        labels: ``[X, Y, Z]`` integer label volume with the body class.
        affine: ``[4, 4]`` voxel -> world (mm) affine of ``labels``.
        magnitude_mm: Largest displacement in mm (>= 0; 0 returns the input). Keep it well below
            ``smoothness_mm`` so the warp does not fold.
        smoothness_mm: Correlation length of the field in mm (> 0).
        seed: Seeds the field; the same seed gives the same map.
        max_tries: Draws before giving up when a class keeps vanishing.
        label_set: The volume's label set (``"amos"``; see the module doc).

    Returns:
        uint8 ``[X, Y, Z]``.

    Raises:
        ValueError: for negative or non-finite magnitudes, non-positive smoothness, or when every
            try loses a class.
    """
    labels_set = get_label_set(label_set)
    lab = check_label_volume(labels, label_set=labels_set)
    if not (math.isfinite(magnitude_mm) and magnitude_mm >= 0):
        raise ValueError(f"magnitude_mm must be a finite number >= 0, got {magnitude_mm!r}")
    if not (math.isfinite(smoothness_mm) and smoothness_mm > 0):
        raise ValueError(f"smoothness_mm must be a finite number > 0, got {smoothness_mm!r}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries!r}")
    spacing = voxel_spacing(affine)
    if magnitude_mm == 0:
        return lab.copy()
    present = set(np.unique(lab).tolist())
    body_components = _component_count(lab != BACKGROUND)
    rng = np.random.default_rng(seed)
    unit = _smooth_field(lab.shape, spacing, smoothness_mm, rng)  # [3, X, Y, Z], max norm 1
    index = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in lab.shape], indexing="ij", sparse=True)
    magnitude = float(magnitude_mm)
    for _ in range(max_tries):
        coords = [index[i] + unit[i] * (magnitude / spacing[i]) for i in range(3)]  # voxels
        out = ndimage.map_coordinates(lab, coords, order=0, mode="nearest").astype(np.uint8)
        comp, n = ndimage.label(out != BACKGROUND)
        if n > body_components:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            keep = np.argsort(sizes)[::-1][:body_components]
            out[~np.isin(comp, keep)] = BACKGROUND
        if set(np.unique(out).tolist()) == present:
            return out
        magnitude /= 2.0
    lost = sorted(present - set(np.unique(out).tolist()))
    raise ValueError(
        f"deform lost class(es) {[labels_set.classes[i].name for i in lost]} in {max_tries} tries; "
        f"use a smaller magnitude_mm than {magnitude_mm:g} or a larger smoothness_mm"
    )


# ----------------------------------------------------------------------------- files
def _check_scales(
    scales: Sequence[tuple[str | int, float, float]], labels_set: LabelSet
) -> list[tuple[int, float, float]]:
    """``(organ, low, high)`` entries as ``(organ id, low, high)``; ValueError naming ``scales=``."""
    out = []
    for entry in scales:
        if len(entry) != 3:
            raise ValueError(f"scales=[{entry!r}]: each entry is (organ, low, high)")
        organ, low, high = entry
        idx = resolve_organ(organ, labels_set)
        try:
            low, high = float(low), float(high)
        except (TypeError, ValueError):
            raise ValueError(f"scales=[{entry!r}]: factors must be numbers > 0") from None
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise ValueError(f"scales=[{entry!r}]: factors must be numbers > 0 with low <= high")
        if any(idx == seen for seen, _, _ in out):
            raise ValueError(f"scales= names organ {labels_set.classes[idx].name!r} twice")
        out.append((idx, low, high))
    return out


def vary_volume(
    labels: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    *,
    scales: Sequence[tuple[str | int, float, float]] = (),
    deform_mm: float = 0.0,
    smoothness_mm: float = 40.0,
    label_set: LabelSetLike = "amos",
) -> np.ndarray:
    """One variant of a label volume: each organ of ``scales`` scaled, then the map deformed.

    Args:
        labels: ``[X, Y, Z]`` integer label volume with the body class.
        affine: ``[4, 4]`` voxel -> world (mm) affine of ``labels``.
        rng: Draws the factors of ``(organ, low, high)`` entries with ``low < high``
            (log-uniform) and the seed of the deformation field.
        scales: ``(organ, low, high)``: the organ's volume factor, fixed when ``low == high``
            (:func:`scale_organ`, applied in order).
        deform_mm, smoothness_mm: :func:`deform` (none when ``deform_mm`` is 0).
        label_set: The volume's label set (``"amos"``).

    Returns:
        uint8 ``[X, Y, Z]``.
    """
    labels_set = get_label_set(label_set)
    out = labels
    for idx, lo, hi in _check_scales(scales, labels_set):
        factor = lo if lo == hi else float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        out = scale_organ(out, affine, idx, factor, label_set=labels_set)
    if deform_mm > 0:
        out = deform(out, affine, deform_mm, smoothness_mm, int(rng.integers(2**31)), label_set=labels_set)
    return check_label_volume(out, label_set=labels_set)


def vary_files(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    num: int = 4,
    seed: int = 0,
    scales: Sequence[tuple[str | int, float, float]] = (),
    deform_mm: float = 0.0,
    smoothness_mm: float = 40.0,
    images: str | Path | None = None,
    progress: bool = True,
    label_set: LabelSetLike = "amos",
    spacing: Sequence[float] | None = None,
    fov_mm: float | None = None,
) -> list[Path]:
    """``num`` varied label volumes per input file, written as ``<output>/<case>_varNNN.nii.gz``.

    Every argument and input is checked first (the label volumes read, the organs of ``scales``
    found in each), so nothing is written when any is bad; the volumes are then written to a
    staging folder and moved into ``output`` together, so ``output`` gets all of them or none.
    Each output keeps its input's geometry. Variant ``k`` of case ``c`` draws from
    ``numpy.random.default_rng([seed, crc32(c), k])`` (:func:`vary_volume`), so it does not depend
    on the other inputs.

    Args:
        inputs: Label volumes (with the body class, or with a CT in ``images`` to derive it).
        output: Folder for the outputs; must not hold NIfTI files yet.
        num: Variants per input.
        seed: Mixed into every variant's random draws.
        scales: ``(organ, low, high)`` entries (organ name or id, volume factors).
        deform_mm: Largest elastic displacement in mm (0: none).
        smoothness_mm: Correlation length of the deformation in mm.
        images: Folder of the matching CT volumes (:func:`medsynth.io.find_image`), or None.
        progress: Show a progress bar.
        label_set: The volumes' label set (``"amos"``; ``"totalseg"`` or a dataset.json).
        spacing, fov_mm: Resample every variant to this voxel spacing (mm, three values along
            the file's axes) and/or in-plane field of view (:func:`resample_labels`); None keeps
            the input's grid.

    Returns:
        The written files.

    Raises:
        ValueError: naming the argument (``num=``, ``scales=``, ``deform_mm=``, ...) or the file
            at fault, e.g. for nothing to vary, ``num > 1`` identical variants, or an organ of
            ``scales`` absent from a volume.
    """
    import shutil
    import zlib

    from medsynth.callbacks.progress import progress_bar
    from medsynth.io import find_image, is_nifti, read_label_case, save_nifti

    output = Path(output)
    if num < 1:
        raise ValueError(f"num={num}: must be >= 1")
    if not (math.isfinite(deform_mm) and deform_mm >= 0):
        raise ValueError(f"deform_mm={deform_mm}: must be >= 0 mm")
    if not (math.isfinite(smoothness_mm) and smoothness_mm > 0):
        raise ValueError(f"smoothness_mm={smoothness_mm}: must be > 0 mm")
    labels_set = get_label_set(label_set)
    checked = _check_scales(scales, labels_set)
    resamples = spacing is not None or fov_mm is not None
    if spacing is not None and (len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing)):
        raise ValueError(f"spacing={list(spacing)}: give three voxel sizes > 0 mm")
    if fov_mm is not None and not (math.isfinite(fov_mm) and fov_mm > 0):
        raise ValueError(f"fov_mm={fov_mm}: must be > 0 mm")
    if not checked and deform_mm == 0 and not resamples:
        raise ValueError("nothing to vary: give scales=[(organ, low, high)] and/or deform_mm=MM")
    if num > 1 and deform_mm == 0 and all(lo == hi for _, lo, hi in checked):
        raise ValueError(
            f"num={num} variants would be identical: add deform_mm=MM or a range scales=[(organ, low, high)] "
            "with low < high"
        )
    if not inputs:
        raise ValueError("no label volumes given")
    if output.exists() and any(is_nifti(p) for p in output.iterdir()):
        raise ValueError(f"output={output} already holds NIfTI files; refusing to overwrite")
    cases = [
        read_label_case(p, find_image(p, images) if images is not None else None, label_set=labels_set)
        for p in inputs
    ]
    volumes = []
    for case in cases:
        lab = case.geometry.from_canonical(case.mask)  # [X, Y, Z] in the file's orientation
        for idx, _, _ in checked:
            if not (lab == idx).any():
                raise ValueError(f"{case.path}: scales= organ {labels_set.classes[idx].name!r} is absent")
        volumes.append(lab)
    output.mkdir(parents=True, exist_ok=True)
    staging = output / ".masks.partial"  # everything goes here first: all volumes or none
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        bar = progress_bar(len(cases) * num, "masks", unit="volume", disable=not progress)
        for case, lab in zip(cases, volumes):
            for k in range(num):
                rng = np.random.default_rng([seed, zlib.crc32(case.name.encode()), k])
                out = vary_volume(
                    lab,
                    case.geometry.affine,
                    rng,
                    scales=checked,
                    deform_mm=deform_mm,
                    smoothness_mm=smoothness_mm,
                    label_set=labels_set,
                )
                affine = case.geometry.affine
                if resamples:
                    out, affine = resample_labels(out, affine, spacing, fov_mm)
                save_nifti(staging / f"{case.name}_var{k:03d}.nii.gz", out, affine)
                bar.update(1)
        bar.close()
        written = []
        for f in sorted(staging.iterdir()):
            os.replace(f, output / f.name)
            written.append(output / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def resample_labels(
    labels: np.ndarray,
    affine: np.ndarray,
    spacing: Sequence[float] | None = None,
    fov_mm: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A label volume on another grid: another voxel spacing and/or in-plane field of view.

    The new grid keeps the volume's orientation and centre. Along each axis it spans the same
    extent in mm at the new spacing (``round(n * old / new)`` voxels); ``fov_mm`` then sets the
    extent of the two in-plane axes (the first two array axes, as stored) to that many mm about
    the centre, cropping or padding with background. Every new voxel takes the label at its centre
    (nearest neighbour), so no label is invented or blended.

    Args:
        labels: ``[X, Y, Z]`` integer labels.
        affine: ``[4, 4]`` voxel -> world (mm) affine.
        spacing: New voxel size in mm along the three array axes (None: keep).
        fov_mm: New in-plane field of view in mm (None: keep).

    Returns:
        ``(labels [X', Y', Z'] uint8, affine [4, 4])``.
    """
    lab = np.asarray(labels)
    old = np.asarray(voxel_spacing(affine))
    new = old if spacing is None else np.asarray([float(v) for v in spacing])
    if new.shape != (3,) or not np.all(new > 0):
        raise ValueError(f"spacing must be three voxel sizes > 0 mm, got {spacing!r}")
    extent = np.asarray(lab.shape) * old  # mm
    if fov_mm is not None:
        if not fov_mm > 0:
            raise ValueError(f"fov_mm must be > 0, got {fov_mm!r}")
        extent[:2] = fov_mm
    shape = np.maximum(1, np.round(extent / new)).astype(int)
    # New voxel j sits at old voxel coordinate c_old + (j - c_new) * new / old, c = the grid centres.
    c_old, c_new = (np.asarray(lab.shape) - 1) / 2.0, (shape - 1) / 2.0
    scale = new / old
    coords = [c_old[i] + (np.arange(shape[i]) - c_new[i]) * scale[i] for i in range(3)]
    idx = [np.rint(c).astype(np.int64) for c in coords]
    inside = [(k >= 0) & (k < n) for k, n in zip(idx, lab.shape)]
    out = np.zeros(tuple(shape), dtype=np.uint8)
    sub = np.ix_(*[k[m] for k, m in zip(idx, inside)])
    out[np.ix_(*[np.nonzero(m)[0] for m in inside])] = lab[sub]
    new_affine = np.asarray(affine, dtype=np.float64).copy()
    new_affine[:3, :3] = new_affine[:3, :3] * scale[None, :]
    new_affine[:3, 3] = np.asarray(affine)[:3, :3] @ (c_old - c_new * scale) + np.asarray(affine)[:3, 3]
    return out, new_affine
