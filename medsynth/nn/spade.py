"""SPADE: spatially-adaptive normalisation (Park et al., CVPR 2019), shared by SPADE, OASIS and SDM.

One normalisation block serves every method: the parameter-free norm is a choice
(``"batch"`` for the SPADE/OASIS generators, ``"group"`` for SDM's SPADE group norm,
``"instance"``), the modulation maps come from the (resized) label map.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SPADENorm", "num_groups"]

NormKind = Literal["batch", "group", "instance"]


def num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= ``max_groups`` that divides ``channels`` (32 at the paper's widths)."""
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


class SPADENorm(nn.Module):
    """``norm(x) * (1 + gamma(seg)) + beta(seg)`` with gamma, beta from a small conv net.

    Args:
        num_features: Channels of the normalised activation.
        label_nc: Channels of the conditioning map (the one-hot mask; OASIS adds its noise).
        hidden: Hidden channels of the shared conv (128 in SPADE, OASIS and SDM).
        norm: Parameter-free normalisation: "batch", "group" or "instance".
        max_groups: Group count for "group" (32 in SDM), reduced to divide ``num_features``.
        kernel_size: Kernel of the modulation convs (3 in all three methods).
    """

    def __init__(
        self,
        num_features: int,
        label_nc: int,
        hidden: int = 128,
        norm: NormKind = "batch",
        max_groups: int = 32,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if num_features < 1 or label_nc < 1 or hidden < 1:
            raise ValueError(
                f"num_features, label_nc and hidden must be positive, got {num_features}, {label_nc}, {hidden}"
            )
        if norm == "batch":
            self.norm: nn.Module = nn.BatchNorm2d(num_features, affine=False)
        elif norm == "group":
            self.norm = nn.GroupNorm(num_groups(num_features, max_groups), num_features, affine=False)
        elif norm == "instance":
            self.norm = nn.InstanceNorm2d(num_features, affine=False)
        else:
            raise ValueError(f"norm must be 'batch', 'group' or 'instance', got {norm!r}")
        pad = kernel_size // 2
        self.shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size, padding=pad), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, num_features, kernel_size, padding=pad)
        self.beta = nn.Conv2d(hidden, num_features, kernel_size, padding=pad)

    def modulation(self, seg: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """gamma, beta ``[B, C, h, w]`` from ``seg [B, label_nc, H, W]`` resized (nearest) to ``size``."""
        seg = F.interpolate(seg, size=size, mode="nearest")
        actv = self.shared(seg)
        return self.gamma(actv), self.beta(actv)

    def forward(self, x: Tensor, seg: Tensor) -> Tensor:
        # x: [B, C, h, w]; seg: [B, label_nc, H, W]
        gamma, beta = self.modulation(seg, tuple(x.shape[-2:]))
        return self.norm(x) * (1.0 + gamma) + beta
