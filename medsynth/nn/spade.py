"""SPADE: spatially-adaptive normalisation (Park et al., CVPR 2019), shared by SPADE, OASIS and SDM.

One normalisation block serves every method: the parameter-free norm is a choice
(``"batch"`` for the SPADE/OASIS generators, ``"group"`` for SDM's SPADE group norm,
``"instance"``), the modulation maps come from the (resized) label map. ``SPADEGANResBlock`` is the
generator residual block of SPADE, reused by OASIS with its label+noise map as conditioning.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["SPADENorm", "SPADEGANResBlock", "num_groups"]

NormKind = Literal["batch", "group", "instance"]
#: ``(1 + gamma, beta)`` of one SPADENorm, precomputed from the label map (see SPADENorm.encode).
Modulation = tuple[Tensor, Tensor]


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

    def encode(self, seg: Tensor, size: tuple[int, int]) -> Modulation:
        """``(1 + gamma, beta)`` for activations of spatial ``size``: what :meth:`forward` takes as
        ``modulation`` to skip the convs over the label map (it does not change with the input)."""
        gamma, beta = self.modulation(seg, size)
        return 1.0 + gamma, beta

    def forward(
        self, x: Tensor, seg: Tensor | None = None, *, modulation: Modulation | None = None
    ) -> Tensor:
        """``norm(x) * (1 + gamma) + beta`` from ``seg`` or a precomputed ``modulation`` (:meth:`encode`).

        Args:
            x: ``[B, C, h, w]``.
            seg: ``[B, label_nc, H, W]``, resized to ``(h, w)``.
            modulation: ``(1 + gamma, beta)``, each ``[B, C, h, w]``, instead of ``seg``.
        """
        if modulation is None:
            if seg is None:
                raise ValueError("SPADENorm needs seg (the label map) or a precomputed modulation")
            gamma, beta = self.modulation(seg, tuple(x.shape[-2:]))
            scale = 1.0 + gamma
        else:
            scale, beta = modulation
            if scale.shape[0] != x.shape[0] or scale.shape[-2:] != x.shape[-2:]:
                raise ValueError(
                    f"precomputed SPADE modulation {tuple(scale.shape)} does not fit the activation {tuple(x.shape)}"
                )
        # one pass: norm(x) * (1 + gamma) + beta
        normed = self.norm(x)  # [B, C, h, w], a fresh tensor
        if torch.is_grad_enabled() or not normed.dtype == scale.dtype == beta.dtype:
            return torch.addcmul(beta, normed, scale)
        return torch.addcmul(beta, normed, scale, out=normed)  # sampling: no second [B, C, h, w] buffer


class SPADEGANResBlock(nn.Module):
    """SPADE generator residual block (Park et al. 2019, Fig. 4; OASIS reuses it).

    ``out = shortcut(x) + conv_1(lrelu(SPADE_1(conv_0(lrelu(SPADE_0(x, seg))), seg)))`` with
    ``fmiddle = min(fin, fout)``; when ``fin != fout`` the shortcut is a learned bias-free 1x1
    conv after its own SPADE, otherwise the identity.

    Args:
        fin: Input channels.
        fout: Output channels.
        label_nc: Channels of the conditioning map (one-hot mask, plus OASIS's noise).
        hidden: Hidden channels of each SPADE's shared conv (128 in SPADE and OASIS).
        norm: Parameter-free normalisation inside SPADE ("batch" in SPADE and OASIS).
        spectral: Spectral normalisation on the block convs (SPADE and OASIS use it).
    """

    def __init__(
        self,
        fin: int,
        fout: int,
        label_nc: int,
        hidden: int = 128,
        norm: NormKind = "batch",
        spectral: bool = True,
    ) -> None:
        super().__init__()
        if fin < 1 or fout < 1:
            raise ValueError(f"fin and fout must be positive, got {fin}, {fout}")
        fmiddle = min(fin, fout)
        wrap = spectral_norm if spectral else (lambda m: m)
        self.learned_shortcut = fin != fout
        self.norm_0 = SPADENorm(fin, label_nc, hidden, norm)
        self.conv_0 = wrap(nn.Conv2d(fin, fmiddle, 3, padding=1))
        self.norm_1 = SPADENorm(fmiddle, label_nc, hidden, norm)
        self.conv_1 = wrap(nn.Conv2d(fmiddle, fout, 3, padding=1))
        if self.learned_shortcut:
            self.norm_s = SPADENorm(fin, label_nc, hidden, norm)
            self.conv_s = wrap(nn.Conv2d(fin, fout, 1, bias=False))

    def shortcut(self, x: Tensor, seg: Tensor) -> Tensor:
        return self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x

    def forward(self, x: Tensor, seg: Tensor) -> Tensor:
        # x: [B, fin, h, w]; seg: [B, label_nc, H, W] -> [B, fout, h, w]
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))  # [B, fmiddle, h, w]
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))  # [B, fout, h, w]
        return self.shortcut(x, seg) + dx
