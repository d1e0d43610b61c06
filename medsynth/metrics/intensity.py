"""Does the synthetic slice obey its mask? Intensities inside mask regions (benchmarks/quality.py).

PSNR and SSIM (Zhuang et al., Sec. 3) reward a blurred mean prediction and say little about
whether air is black and each organ has its brightness. These pure functions measure that
directly on slices in [0, 1] (window level 40, width 400, so 0.01 = 4 HU):

- :func:`region_means`: mean intensity of each class over all pixels of a batch;
- :func:`background_mean`: mean intensity where the mask is background (air: should be ~0);
- :func:`organ_intensity_error`: |mean synthetic - mean real| inside each class;
- :func:`class_mean_painting`: the reference predictor that paints each class with its mean.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from medsynth.labels import NUM_CLASSES

__all__ = ["region_sums", "region_means", "background_mean", "organ_intensity_error", "class_mean_painting"]


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
