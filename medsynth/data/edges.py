"""Semantic edge maps for the edge-guided DDPM (Zhuang et al., Fig. 2c)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["semantic_edges"]


def semantic_edges(mask: Tensor) -> Tensor:
    """Boundaries between classes of a label map.

    A pixel is an edge pixel when any of its 4-neighbours carries another label (pixels on both
    sides of a boundary are marked; the image border is not a boundary).

    Args:
        mask: int ``[B, H, W]`` (or ``[H, W]``) label map.

    Returns:
        float32 ``[B, 1, H, W]`` with 1.0 on boundaries and 0.0 elsewhere.
    """
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3 or mask.dtype.is_floating_point:
        raise ValueError(f"mask must be an integer tensor [B, H, W], got {mask.dtype} {tuple(mask.shape)}")
    m = mask.long().unsqueeze(1).float()  # [B, 1, H, W]
    padded = F.pad(m, (1, 1, 1, 1), mode="replicate")  # [B, 1, H+2, W+2]
    center = padded[..., 1:-1, 1:-1]
    edge = torch.zeros_like(center, dtype=torch.bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[..., dy : dy + center.shape[-2], dx : dx + center.shape[-1]] != center
    return edge.float()
