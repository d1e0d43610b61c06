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

The label volume must contain the body class (:data:`medsynth.labels.BODY`): without a body
outline the synthesis models have nothing to condition the patient's extent on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medsynth.labels import BACKGROUND, BODY, CLASSES, ORGAN_IDS, class_by_name

__all__ = ["voxel_spacing", "resolve_organ", "scale_organ", "deform", "check_label_volume"]


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths in mm along the array axes (the norms of the affine's columns)."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {a.shape}")
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"affine has a zero-length voxel axis (spacing {spacing.tolist()})")
    return tuple(float(s) for s in spacing)


def check_label_volume(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Validate a label volume ``[X, Y, Z]`` with the body class and return it as uint8.

    Raises:
        ValueError: naming ``name`` for a wrong rank, non-integer values, values outside
            ``0..BODY``, or a volume without any body voxel.
    """
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"{name} must be a 3D volume [X, Y, Z], got shape {lab.shape}")
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or not np.array_equal(lab, np.round(lab)):
            raise ValueError(f"{name} must hold integer class ids, found non-integer values")
    elif lab.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer class ids, got dtype {lab.dtype}")
    if lab.size and (lab.min() < 0 or lab.max() > BODY):
        raise ValueError(f"{name} values must lie in 0..{BODY}, found {lab.min():g}..{lab.max():g}")
    lab = lab.astype(np.uint8)
    if not (lab == BODY).any():
        raise ValueError(
            f"{name} has no body outline (class {BODY}, 'body'); add it from the CT first "
            f"(medsynth masks --images DIR derives it as in training)"
        )
    return lab


def resolve_organ(organ: str | int) -> int:
    """An organ's id from its name (``"liver"``) or id (6); background and body are not organs.

    Raises:
        ValueError: listing the valid organ names when ``organ`` is not one of them.
    """
    valid = ", ".join(CLASSES[i].name for i in ORGAN_IDS)
    if isinstance(organ, bool):
        raise ValueError(f"organ must be a name or an id, got {organ!r}")
    if isinstance(organ, (int, np.integer)):
        if int(organ) not in ORGAN_IDS:
            raise ValueError(f"organ id {organ} is not an organ of the label set; organs: {valid}")
        return int(organ)
    text = str(organ).strip()
    if text.isdigit():
        return resolve_organ(int(text))
    try:
        idx = class_by_name(text).index
    except KeyError:
        raise ValueError(f"unknown organ {organ!r}; organs: {valid}") from None
    if idx not in ORGAN_IDS:
        raise ValueError(f"{organ!r} is not an organ; organs: {valid}")
    return idx


def scale_organ(
    labels: np.ndarray,
    affine: np.ndarray,
    organ: str | int,
    factor: float,
    *,
    tolerance: float = 0.1,
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

    Returns:
        uint8 ``[X, Y, Z]``: the same volume with the organ changed.

    Raises:
        ValueError: for a bad factor, an organ absent from the volume, or a factor that cannot be
            reached within ``tolerance`` (the body around the organ is too small to grow into, or
            the organ too small to shrink), naming the reachable range.
    """
    lab = check_label_volume(labels)
    idx = resolve_organ(organ)
    name = CLASSES[idx].name
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
        out[idx_region] = BODY
        return out
    # Growing: candidate voxels by distance to the organ, restricted to body connected to it.
    dist = ndimage.distance_transform_edt(~region, sampling=spacing)  # [X, Y, Z] mm to the organ
    allowed = (lab == BODY) | region

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

    Returns:
        uint8 ``[X, Y, Z]``.

    Raises:
        ValueError: for negative or non-finite magnitudes, non-positive smoothness, or when every
            try loses a class.
    """
    lab = check_label_volume(labels)
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
        f"deform lost class(es) {[CLASSES[i].name for i in lost]} in {max_tries} tries; "
        f"use a smaller magnitude_mm than {magnitude_mm:g} or a larger smoothness_mm"
    )


# ----------------------------------------------------------------------------- command line
def _parse_scale(spec: str) -> tuple[int, float, float]:
    """``ORGAN=FACTOR`` or ``ORGAN=LO:HI`` -> (organ id, lo, hi); raises ValueError naming --scale."""
    organ, sep, value = spec.partition("=")
    if not sep:
        raise ValueError(f"--scale {spec!r}: expected ORGAN=FACTOR or ORGAN=LO:HI (e.g. liver=1.3)")
    idx = resolve_organ(organ)
    parts = value.split(":")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--scale {spec!r}: factor {value!r} is not a number or LO:HI range") from None
    if len(nums) not in (1, 2) or not all(math.isfinite(x) and x > 0 for x in nums):
        raise ValueError(f"--scale {spec!r}: factors must be numbers > 0 (ORGAN=FACTOR or ORGAN=LO:HI)")
    lo, hi = (nums[0], nums[0]) if len(nums) == 1 else (min(nums), max(nums))
    return idx, lo, hi


def _parser():
    import argparse
    from pathlib import Path

    from medsynth.cli import HelpFormatter

    p = argparse.ArgumentParser(
        prog="medsynth masks",
        description=(
            "Varied label volumes from existing ones (organ scaling, elastic deformation), "
            "ready for `medsynth synthesize`. Outputs keep each input's geometry and include the "
            "body class."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--input", required=True, type=Path, help="a label volume .nii.gz or a folder of them")
    p.add_argument("--output", required=True, type=Path, help="output folder (must hold no NIfTI yet)")
    p.add_argument("--num", type=int, default=4, help="varied volumes per input")
    p.add_argument("--seed", type=int, default=0, help="seeds every variant (case name and index mixed in)")
    p.add_argument(
        "--scale",
        action="append",
        default=[],
        metavar="ORGAN=FACTOR",
        help="volume factor for an organ; ORGAN=LO:HI draws it log-uniformly per variant (repeatable)",
    )
    p.add_argument("--deform", type=float, default=0.0, metavar="MM", help="largest elastic displacement")
    p.add_argument("--smoothness", type=float, default=40.0, metavar="MM", help="correlation length")
    p.add_argument(
        "--images", type=Path, default=None, help="folder of the matching CT volumes (derives the body class)"
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """``medsynth masks``: validate everything first, then write ``<case>_var<NNN>.nii.gz`` atomically."""
    import os
    import shutil
    import sys
    import zlib

    from medsynth.callbacks.progress import progress_bar
    from medsynth.io import find_image, is_nifti, nifti_inputs, read_label_case, save_nifti

    a = _parser().parse_args(argv)
    try:
        if a.num < 1:
            raise ValueError(f"--num must be >= 1, got {a.num}")
        if not (math.isfinite(a.deform) and a.deform >= 0):
            raise ValueError(f"--deform must be >= 0 mm, got {a.deform}")
        if not (math.isfinite(a.smoothness) and a.smoothness > 0):
            raise ValueError(f"--smoothness must be > 0 mm, got {a.smoothness}")
        scales = [_parse_scale(s) for s in a.scale]
        if len({s[0] for s in scales}) != len(scales):
            raise ValueError("--scale names the same organ twice")
        varies = a.deform > 0 or any(lo != hi for _, lo, hi in scales)
        if not scales and a.deform == 0:
            raise ValueError("nothing to vary: give --scale ORGAN=FACTOR and/or --deform MM")
        if a.num > 1 and not varies:
            raise ValueError(
                f"--num {a.num} variants would be identical: add --deform MM or a range --scale ORGAN=LO:HI"
            )
        inputs = nifti_inputs(a.input, "--input")
        if a.output.exists() and any(is_nifti(p) for p in a.output.iterdir()):
            raise ValueError(f"--output {a.output} already holds NIfTI files; refusing to overwrite")
        cases = [read_label_case(p, find_image(p, a.images) if a.images else None) for p in inputs]
        volumes = []
        for case in cases:
            lab = case.geometry.from_canonical(case.mask)  # [X, Y, Z] in the file's orientation
            for idx, _, _ in scales:
                if not (lab == idx).any():
                    raise ValueError(f"{case.path}: --scale organ {CLASSES[idx].name!r} is absent")
            volumes.append(lab)
        a.output.mkdir(parents=True, exist_ok=True)
        # Everything goes to a staging folder first: the output gets all volumes or none.
        staging = a.output / ".masks.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        bar = progress_bar(len(cases) * a.num, "masks", unit="volume", disable=a.no_progress)
        written = 0
        for case, lab in zip(cases, volumes):
            for k in range(a.num):
                rng = np.random.default_rng([a.seed, zlib.crc32(case.name.encode()), k])
                out = lab
                for idx, lo, hi in scales:
                    factor = lo if lo == hi else float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
                    out = scale_organ(out, case.geometry.affine, idx, factor)
                if a.deform > 0:
                    seed = int(rng.integers(2**31))
                    out = deform(out, case.geometry.affine, a.deform, a.smoothness, seed)
                name = f"{case.name}_var{k:03d}.nii.gz"
                save_nifti(staging / name, out.astype(np.uint8), case.geometry.affine)
                written += 1
                bar.update(1)
        bar.close()
        for f in sorted(staging.iterdir()):
            os.replace(f, a.output / f.name)
        staging.rmdir()
    except (ValueError, FileNotFoundError) as err:
        if "staging" in locals():
            shutil.rmtree(staging, ignore_errors=True)
        print(f"medsynth masks: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {written} label volume(s) to {a.output}")
    return 0
