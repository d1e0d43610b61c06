"""Consistency along z: how much a volume changes from one axial slice to the next inside each organ.

Slices synthesized independently can jump in texture and brightness from one to the next; a 3D
segmenter trained on such volumes sees that. The measure compares synthetic with real volumes
of the same masks: the ratio near 1 means the synthetic volume is as smooth along z as CT.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

__all__ = ["adjacent_slice_difference"]


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
    x = np.asarray(volume.cpu() if isinstance(volume, torch.Tensor) else volume, dtype=np.float64)
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
    if x.ndim != 3 or x.shape != m.shape:
        raise ValueError(f"volume {x.shape} and mask {m.shape} must both be [D, H, W] of one shape")
    diff = np.abs(x[1:] - x[:-1])  # [D-1, H, W]
    out: dict[int, float] = {}
    for c in classes:
        both = (m[1:] == c) & (m[:-1] == c)
        out[int(c)] = float(diff[both].mean()) if both.any() else float("nan")
    return out
