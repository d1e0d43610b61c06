"""Consistency along z: how a volume changes from one axial slice to the next inside each organ.

Slices synthesized independently can jump in texture and brightness from one to the next; slices
drawn from shared noise carry the same texture through the volume while the anatomy moves; a
volume made in order can drift. A 3D segmenter trained on such volumes learns each artefact.
Each measure compares a synthetic volume with the real volume of the same masks:

- :func:`adjacent_slice_difference` / :func:`adjacent_difference_ratio`: mean absolute change
  between neighbouring slices inside each organ (ratio near 1: as smooth along z as CT);
- :func:`texture_sticking`: correlation of the slices' high-pass residuals (the image minus a
  Gaussian-smoothed copy: the texture) ``d`` slices apart inside each organ (real CT: low and
  falling with ``d``; shared noise: near 1);
- :func:`part_medians` / :func:`median_drift`: an organ's median in the first and the last part
  (a quarter) of the volume, synthetic minus real (drift along a volume made in order);
- :func:`orthogonal_views`: sagittal and coronal cuts for figures.

All take ``[D, H, W]`` arrays, axial slices first (slice 0 the most inferior), in any intensity
unit, and return float64 statistics with NaN where a class is absent.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "adjacent_slice_difference",
    "adjacent_difference_ratio",
    "highpass_residual",
    "texture_sticking",
    "part_medians",
    "median_drift",
    "orthogonal_views",
]


def _array(x: np.ndarray | torch.Tensor, dtype: type | None = np.float64) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return a.astype(dtype) if dtype is not None else a


def _pair(
    volume: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    x, m = _array(volume), _array(mask, None)
    if x.ndim != 3 or x.shape != m.shape:
        raise ValueError(f"volume {x.shape} and mask {m.shape} must both be [D, H, W] of one shape")
    return x, m


def adjacent_slice_difference(
    volume: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor, classes: Iterable[int]
) -> dict[int, float]:
    """Mean ``|x[k+1] - x[k]|`` over the pixels labelled ``c`` in both slices ``k`` and ``k+1``.

    Args:
        volume: ``[D, H, W]`` intensities, axial slices first (any unit; windowed [0, 1] here).
        mask: ``[D, H, W]`` integer labels of the same volume.
        classes: The class ids to measure.

    Returns:
        ``{class: mean absolute difference}`` in float64; NaN for a class that never appears in
        two adjacent slices at the same pixel.
    """
    x, m = _pair(volume, mask)
    diff = np.abs(x[1:] - x[:-1])  # [D-1, H, W]
    out: dict[int, float] = {}
    for c in classes:
        both = (m[1:] == c) & (m[:-1] == c)
        out[int(c)] = float(diff[both].mean()) if both.any() else float("nan")
    return out


def adjacent_difference_ratio(
    synthetic: np.ndarray | torch.Tensor,
    real: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    classes: Iterable[int],
) -> dict[int, float]:
    """Synthetic / real :func:`adjacent_slice_difference` per class (both volumes share ``mask``).

    1 means as much change along z as the real volume; NaN where the class never spans two slices
    or the real volume does not change there.
    """
    classes = list(classes)
    syn = adjacent_slice_difference(synthetic, mask, classes)
    ref = adjacent_slice_difference(real, mask, classes)
    return {c: syn[c] / ref[c] if ref[c] > 0 else float("nan") for c in syn}


def highpass_residual(volume: np.ndarray | torch.Tensor, sigma: float = 1.0) -> np.ndarray:
    """Each axial slice minus its Gaussian-smoothed copy (in-plane ``sigma`` in pixels): its texture.

    Returns:
        float64 ``[D, H, W]``.
    """
    x = _array(volume)
    if x.ndim != 3:
        raise ValueError(f"volume must be [D, H, W], got {x.shape}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 pixels, got {sigma!r}")
    return x - ndimage.gaussian_filter(x, sigma=(0.0, sigma, sigma), mode="nearest")


def texture_sticking(
    volume: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    classes: Iterable[int],
    offsets: Iterable[int] = (2, 4),
    sigma: float = 1.0,
    margin: int = 2,
) -> dict[int, dict[int, float]]:
    """Pearson correlation of the high-pass residuals of slices ``d`` apart, inside each class.

    For every pair of slices ``(k, k + d)`` the pixels labelled ``c`` in both, at least ``margin``
    pixels inside the class in each (so the class's edge, which moves little from slice to slice,
    does not count as texture), are pooled over all ``k``; the correlation of their
    :func:`highpass_residual` values is returned. Texture that stays in place while the anatomy
    moves (shared noise) correlates near 1; CT's own texture changes within a few millimetres.

    Args:
        volume, mask: ``[D, H, W]`` intensities and labels.
        classes: Class ids.
        offsets: Slice distances ``d`` (2 and 4).
        sigma: In-plane Gaussian of the smoothed copy, pixels (1.0).
        margin: Pixels of erosion of each class before pooling (2; 0: the whole class).

    Returns:
        ``{d: {class: correlation}}``; NaN where fewer than 3 pixel pairs remain.
    """
    x, m = _pair(volume, mask)
    if not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin must be an int >= 0, got {margin!r}")
    r = highpass_residual(x, sigma)
    out: dict[int, dict[int, float]] = {}
    classes = list(classes)
    inner = {}
    for c in classes:
        region = m == c
        if margin:  # in-plane erosion only: [D, H, W] with a flat structuring element
            region = ndimage.binary_erosion(region, structure=np.ones((1, 3, 3), bool), iterations=margin)
        inner[int(c)] = region
    for d in offsets:
        d = int(d)
        if d < 1:
            raise ValueError(f"offsets must be positive slice distances, got {d}")
        out[d] = {}
        for c, region in inner.items():
            both = region[d:] & region[:-d] if d < len(x) else np.zeros((0,) + x.shape[1:], bool)
            a, b = r[d:][both], r[:-d][both]
            if a.size < 3 or a.std() == 0 or b.std() == 0:
                out[d][c] = float("nan")
            else:
                out[d][c] = float(np.corrcoef(a, b)[0, 1])
    return out


def part_medians(
    volume: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    classes: Iterable[int],
    fraction: float = 0.25,
) -> dict[str, dict[int, float]]:
    """Median intensity of each class in the first and the last ``fraction`` of the slices.

    The parts hold ``max(1, round(D * fraction))`` slices each, from slice 0 (``"first"``) and
    from the last slice (``"last"``).

    Returns:
        ``{"first": {class: median}, "last": {...}}``; NaN where the class is absent from a part.
    """
    x, m = _pair(volume, mask)
    if not 0.0 < fraction <= 0.5:
        raise ValueError(f"fraction must lie in (0, 0.5], got {fraction!r}")
    n = max(1, int(round(len(x) * fraction)))
    out: dict[str, dict[int, float]] = {}
    for part, sl in (("first", slice(0, n)), ("last", slice(len(x) - n, len(x)))):
        xs, ms = x[sl], m[sl]
        out[part] = {
            int(c): float(np.median(xs[ms == c])) if (ms == c).any() else float("nan") for c in classes
        }
    return out


def median_drift(
    synthetic: np.ndarray | torch.Tensor,
    real: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    classes: Iterable[int],
    fraction: float = 0.25,
) -> dict[str, dict[int, float]]:
    """Synthetic minus real :func:`part_medians` (same masks): ``{"first"|"last": {class: diff}}``.

    A volume made in order that drifts moves away from the real medians toward its end.
    """
    classes = list(classes)
    syn = part_medians(synthetic, mask, classes, fraction)
    ref = part_medians(real, mask, classes, fraction)
    return {part: {c: syn[part][c] - ref[part][c] for c in classes} for part in syn}


def orthogonal_views(
    volume: np.ndarray | torch.Tensor, row: int | None = None, column: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The sagittal and coronal cuts of ``[D, H, W]`` slices (rows anterior to posterior, as displayed).

    Args:
        volume: ``[D, H, W]``, slice 0 the most inferior.
        row: The coronal cut's row (None: the middle).
        column: The sagittal cut's column (None: the middle).

    Returns:
        ``(sagittal [D, H], coronal [D, W])`` with the most superior slice on top.
    """
    x = _array(volume, None)
    if x.ndim != 3:
        raise ValueError(f"volume must be [D, H, W], got {x.shape}")
    d, h, w = x.shape
    row = h // 2 if row is None else row
    column = w // 2 if column is None else column
    if not (0 <= row < h and 0 <= column < w):
        raise ValueError(f"row {row} / column {column} outside the {h} x {w} slices")
    return x[::-1, :, column].copy(), x[::-1, row, :].copy()
