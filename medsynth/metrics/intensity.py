"""Does the synthetic slice obey its mask? Intensities inside mask regions (benchmarks/quality.py).

PSNR and SSIM (Zhuang et al., Sec. 3) reward a blurred mean prediction and say little about
whether air is black and each organ has its brightness. These pure functions measure that
directly on slices in [0, 1] (window level 40, width 400, so 0.01 = 4 HU):

- :func:`region_means`: mean intensity of each class over all pixels of a batch;
- :func:`background_mean`: mean intensity where the mask is background (air: should be ~0);
- :func:`organ_intensity_error`: |mean synthetic - mean real| inside each class;
- :func:`class_mean_painting`: the reference predictor that paints each class with its mean;
- :func:`organ_hu_statistics`: median and quartiles of each class in Hounsfield units, the scale
  a radiologist reads (MAISI checks each organ's median HU against ranges from its training
  data). They come from per-class histograms at 1 HU (:func:`hu_histogram`), which add over
  batches and processes, so the statistics of a whole split are exact: they equal numpy's
  ``quantile`` (linear interpolation) of the HU values rounded to whole HU, hence lie within
  0.5 HU of the quantiles of the unrounded values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from medsynth.data.geometry import WINDOW_LEVEL, WINDOW_WIDTH
from medsynth.labels import NUM_CLASSES

__all__ = [
    "region_sums",
    "region_means",
    "background_mean",
    "organ_intensity_error",
    "class_mean_painting",
    "hu_bins",
    "hu_histogram",
    "histogram_quantiles",
    "organ_hu_statistics",
    "compare_hu_statistics",
]


def _images_and_mask(images: Tensor | np.ndarray, mask: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    x = torch.as_tensor(images).double()
    m = torch.as_tensor(mask)
    if m.dtype.is_floating_point or m.dtype == torch.bool:
        raise ValueError(f"mask must hold integer class ids, got dtype {m.dtype}")
    if x.dim() == m.dim() + 1 and x.shape[1] == 1:
        x = x[:, 0]  # [B, 1, H, W] -> [B, H, W]
    if x.shape != m.shape:
        raise ValueError(f"images {tuple(x.shape)} and mask {tuple(m.shape)} do not match")
    return x.reshape(-1).cpu(), m.long().reshape(-1).cpu()


def region_sums(
    images: Tensor | np.ndarray, mask: Tensor | np.ndarray, num_classes: int = NUM_CLASSES
) -> Tensor:
    """Per-class intensity sum and pixel count, float64 ``[2, num_classes]`` (they add over batches)."""
    x, m = _images_and_mask(images, mask)
    if m.numel() and (int(m.min()) < 0 or int(m.max()) >= num_classes):
        raise ValueError(f"mask values must lie in 0..{num_classes - 1}, got {int(m.min())}..{int(m.max())}")
    sums = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, m, x)
    counts = torch.bincount(m, minlength=num_classes).double()
    return torch.stack([sums, counts])


def region_means(
    images: Tensor | np.ndarray, mask: Tensor | np.ndarray, num_classes: int = NUM_CLASSES
) -> Tensor:
    """Mean intensity of each class over all pixels of ``images`` ``[B, (1,) H, W]``; NaN where absent.

    Returns:
        float64 ``[num_classes]``.
    """
    s = region_sums(images, mask, num_classes)
    return torch.where(s[1] > 0, s[0] / s[1].clamp(min=1.0), torch.full_like(s[0], float("nan")))


def background_mean(images: Tensor | np.ndarray, mask: Tensor | np.ndarray, background: int = 0) -> float:
    """Mean intensity over the pixels whose mask is ``background`` (air; 0 in window units); NaN if none."""
    x, m = _images_and_mask(images, mask)
    sel = m == background
    return float(x[sel].mean()) if bool(sel.any()) else float("nan")


def organ_intensity_error(
    synthetic: Tensor | np.ndarray,
    real: Tensor | np.ndarray,
    mask: Tensor | np.ndarray,
    num_classes: int = NUM_CLASSES,
) -> Tensor:
    """|mean synthetic - mean real| inside each class, pooled over the batch (window units).

    Both images are compared inside the same mask (the synthetic slice's input).

    Returns:
        float64 ``[num_classes]``; NaN where the class is absent from ``mask``.
    """
    return (region_means(synthetic, mask, num_classes) - region_means(real, mask, num_classes)).abs()


def class_mean_painting(mask: Tensor, means: Tensor | np.ndarray) -> Tensor:
    """Paint every pixel with its class's mean intensity: ``[B, H, W]`` -> float32 ``[B, 1, H, W]``.

    ``means`` ``[num_classes]`` (from :func:`region_means` on training slices); NaN entries
    (classes never seen) paint 0.
    """
    lut = torch.nan_to_num(torch.as_tensor(means, dtype=torch.float32), nan=0.0)
    m = torch.as_tensor(mask).long()
    if m.numel() and int(m.max()) >= lut.numel():
        raise ValueError(f"mask holds class {int(m.max())} but means has only {lut.numel()} entries")
    return lut.to(m.device)[m][:, None]


# ----------------------------------------------------------------------------- statistics in HU


def hu_bins(window: tuple[float, float] = (WINDOW_LEVEL, WINDOW_WIDTH)) -> tuple[int, int]:
    """``(first, count)``: the whole-HU bins ``first .. first + count - 1`` that cover ``window``.

    ``window = (level, width)`` in HU spans ``level - width/2 .. level + width/2`` (the paper's
    40 / 400: -160 .. 240 HU, 401 bins).
    """
    level, width = (float(v) for v in window)
    if not width > 0 or not np.isfinite(level):
        raise ValueError(f"window must be (level, width > 0) in HU, got {window!r}")
    first, last = int(np.floor(level - width / 2)), int(np.ceil(level + width / 2))
    return first, last - first + 1


def hu_histogram(
    images: Tensor | np.ndarray,
    mask: Tensor | np.ndarray,
    num_classes: int = NUM_CLASSES,
    window: tuple[float, float] = (WINDOW_LEVEL, WINDOW_WIDTH),
) -> Tensor:
    """Per-class histogram of the slices' HU values at 1 HU, int64 ``[num_classes, count]``.

    ``images`` ``[B, (1,) H, W]`` in window units [0, 1] are mapped to HU
    (``x * width + level - width / 2``) and rounded to whole HU; bin ``k`` counts the value
    ``first + k`` (:func:`hu_bins`). Values outside the window (none for clamped model output or
    windowed real slices) are counted in its first or last bin. Histograms add over batches.
    """
    x, m = _images_and_mask(images, mask)  # [P] float64, [P] int64
    if m.numel() and (int(m.min()) < 0 or int(m.max()) >= num_classes):
        raise ValueError(f"mask values must lie in 0..{num_classes - 1}, got {int(m.min())}..{int(m.max())}")
    first, count = hu_bins(window)
    level, width = (float(v) for v in window)
    hu = torch.round(x * width + (level - width / 2))  # [P] whole HU
    bins = (hu - first).clamp(0, count - 1).long()  # [P]
    return torch.bincount(m * count + bins, minlength=num_classes * count).reshape(num_classes, count)


def histogram_quantiles(hist: Tensor | np.ndarray, quantiles: Sequence[float], first: int) -> Tensor:
    """Quantiles of the values a histogram counts, as numpy's ``quantile`` (method "linear").

    Args:
        hist: Counts ``[..., count]`` of the values ``first, first + 1, ...``.
        quantiles: Probabilities in [0, 1].
        first: The value of bin 0.

    Returns:
        float64 ``[..., len(quantiles)]``; NaN where a histogram is empty.
    """
    h = torch.as_tensor(hist).long()
    q = torch.as_tensor(list(quantiles), dtype=torch.float64)
    if q.dim() != 1 or bool(((q < 0) | (q > 1)).any()):
        raise ValueError(f"quantiles must lie in [0, 1], got {list(quantiles)}")
    if bool((h < 0).any()):
        raise ValueError("hist holds negative counts")
    lead = h.shape[:-1]
    cum = h.reshape(-1, h.shape[-1]).cumsum(dim=1)  # [R, count]
    n = cum[:, -1:].double()  # [R, 1]
    pos = q[None] * (n - 1).clamp(min=0)  # [R, Q]: index into the sorted values
    lo = pos.floor()
    hi = torch.minimum(lo + 1, (n - 1).clamp(min=0))

    def value(k: Tensor) -> Tensor:  # the k-th smallest value: first bin whose cumulative count > k
        return torch.searchsorted(cum, k.long(), right=True).double() + first

    v_lo, v_hi = value(lo), value(hi)
    out = v_lo + (pos - lo) * (v_hi - v_lo)
    out = torch.where(n > 0, out, torch.full_like(out, float("nan")))
    return out.reshape(*lead, len(q))


def organ_hu_statistics(
    images: Tensor | np.ndarray,
    masks: Tensor | np.ndarray,
    organs: Sequence[int] | None = None,
    window: tuple[float, float] = (WINDOW_LEVEL, WINDOW_WIDTH),
    num_classes: int = NUM_CLASSES,
) -> dict[int, dict[str, float]]:
    """Median, quartiles and IQR in HU of each class's pixels, pooled over the slices.

    Args:
        images: ``[B, (1,) H, W]`` in window units [0, 1].
        masks: ``[B, H, W]`` class ids.
        organs: Class ids to report (None: every class present but 0, background).
        window: ``(level, width)`` in HU of the slices' window (the paper's 40 / 400).
        num_classes: Classes of the label set.

    Returns:
        ``{class id: {"median", "q1", "q3", "iqr", "pixels"}}`` (HU, to whole HU: see the
        module docstring) for the requested classes present in ``masks``.
    """
    hist = hu_histogram(images, masks, num_classes, window)  # [C, count]
    first, _ = hu_bins(window)
    ids = [c for c in range(1, num_classes) if int(hist[c].sum()) > 0] if organs is None else list(organs)
    for c in ids:
        if not 0 <= c < num_classes:
            raise ValueError(f"organs holds class {c}, outside 0..{num_classes - 1}")
    stats = histogram_quantiles(hist, (0.25, 0.5, 0.75), first)  # [C, 3]
    return {
        c: {
            "median": float(stats[c, 1]),
            "q1": float(stats[c, 0]),
            "q3": float(stats[c, 2]),
            "iqr": float(stats[c, 2] - stats[c, 0]),
            "pixels": float(hist[c].sum()),
        }
        for c in ids
        if int(hist[c].sum()) > 0
    }


def compare_hu_statistics(
    real_hist: Tensor | np.ndarray,
    synthetic_hist: Tensor | np.ndarray,
    window: tuple[float, float] = (WINDOW_LEVEL, WINDOW_WIDTH),
) -> dict[int, dict[str, float]]:
    """Real vs synthetic HU statistics per class from :func:`hu_histogram` sums ``[C, count]``.

    Returns:
        ``{class id: {"real_median", "real_q1", "real_q3", "synthetic_median", "synthetic_q1",
        "synthetic_q3", "median_error", "median_error_window"}}`` for every class but 0
        present in the real histogram; ``median_error`` = synthetic median - real median (HU),
        ``median_error_window`` the same in window units (divided by the window's width).
    """
    real, synth = torch.as_tensor(real_hist), torch.as_tensor(synthetic_hist)
    first, count = hu_bins(window)
    if real.shape != synth.shape or real.dim() != 2 or real.shape[1] != count:
        raise ValueError(
            f"histograms must both be [num_classes, {count}] for window {window}, "
            f"got {tuple(real.shape)} and {tuple(synth.shape)}"
        )
    r = histogram_quantiles(real, (0.25, 0.5, 0.75), first)  # [C, 3]
    s = histogram_quantiles(synth, (0.25, 0.5, 0.75), first)
    out = {}
    for c in range(1, real.shape[0]):
        if int(real[c].sum()) == 0:
            continue
        out[c] = {
            "real_median": float(r[c, 1]),
            "real_q1": float(r[c, 0]),
            "real_q3": float(r[c, 2]),
            "synthetic_median": float(s[c, 1]),
            "synthetic_q1": float(s[c, 0]),
            "synthetic_q3": float(s[c, 2]),
            "median_error": float(s[c, 1] - r[c, 1]),
            "median_error_window": float(s[c, 1] - r[c, 1]) / float(window[1]),
        }
    return out
