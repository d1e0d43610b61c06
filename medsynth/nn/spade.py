"""SPADE: spatially-adaptive normalisation (Park et al., CVPR 2019), shared by SPADE, OASIS and SDM.

One normalisation block serves every method: the parameter-free norm is a choice
(``"batch"`` for the SPADE/OASIS generators, ``"group"`` for SDM's SPADE group norm,
``"instance"``), the modulation maps come from the (resized) label map. ``SPADEGANResBlock`` is the
generator residual block of SPADE, reused by OASIS with its label+noise map as conditioning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["LabelPatches", "SPADENorm", "SPADEGANResBlock", "num_groups"]

NormKind = Literal["batch", "group", "instance"]
#: ``(1 + gamma, beta)`` of one SPADENorm, precomputed from the label map (see SPADENorm.encode).
Modulation = tuple[Tensor, Tensor]


#: :meth:`LabelPatches.build` gives up (the plain convs are cheaper) where the distinct 3x3 patches
#: exceed this fraction of the pixels: the lookup's matmul costs ``n / pixels`` of the convs'
#: multiply-adds, plus gathers. Measured per SPADE (hidden 128, one CPU thread, idle): with 40 %
#: distinct patches the lookup took 0.68-0.85x the convs' time, with 97-100 % 1.5x.
PATCH_LOOKUP_MAX_FRACTION = 0.5


def _unique_rows(rows: Tensor, base: int) -> tuple[Tensor, Tensor]:
    """The distinct rows of ``rows [N, k]`` (integers in ``[0, base)``) and each row's index among them.

    Each row is read as a number in ``base``, digit by digit; where the next digit would overflow
    int64 the numbers so far are first replaced by their rank (a 1-D unique), so it is exact for
    any ``base`` and much faster than ``torch.unique(dim=0)``.
    """
    key, bound = torch.zeros_like(rows[:, 0]), 1
    for j in range(rows.shape[1]):
        if bound * base >= 2**62:
            _, key = torch.unique(key, return_inverse=True)
            bound = int(key.max()) + 1
        key, bound = key * base + rows[:, j], bound * base
    _, inverse = torch.unique(key, return_inverse=True)  # [N] in [0, n)
    distinct = rows.new_empty(int(inverse.max()) + 1, rows.shape[1])
    distinct[inverse] = rows  # duplicates write the same row
    return distinct, inverse


def _taps(ids: Tensor, outside: int) -> Tensor:
    """``[B*h*w, 9]``: each pixel's 3x3 neighbourhood of ``ids [B, h, w]`` (row-major taps,
    ``outside`` beyond the border)."""
    b, h, w = ids.shape
    padded = F.pad(ids, (1, 1, 1, 1), value=outside)  # [B, h+2, w+2]
    return torch.stack([padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], -1).view(-1, 9)


@dataclass(frozen=True)
class LabelPatches:
    """The distinct neighbourhoods of a one-hot label map at one size, for :meth:`SPADENorm.encode`.

    A SPADE modulation is ``conv3x3(relu(conv3x3(seg)))``: its value at a pixel depends only on the
    labels of the pixel's 5x5 neighbourhood, i.e. on the 3x3 patches around its 3x3 neighbours. A
    mask has few distinct ones (one inside each organ, a few along each edge), so :meth:`SPADENorm.lookup`
    runs the shared conv and the gamma/beta conv's multiply-adds once per distinct 3x3 patch, sums
    them once per distinct 5x5 neighbourhood and copies the result to the pixels: the convs' values
    up to float rounding, at a fraction of the work. Built once per size and shared by every
    SPADENorm there (encoding the condition is time-independent: :meth:`DiffusionUNet.encode_condition`).

    Attributes:
        labels: ``[n, 9]`` the distinct 3x3 patches as label ids (row-major taps); ``K`` stands for
            an all-zero input: a pixel without a label (the null condition of guidance) or one
            outside the image (the shared conv's zero padding).
        neighbours: ``[m, 9]`` the distinct 5x5 neighbourhoods as the rows of ``labels`` of the
            3x3 neighbours; ``n`` stands for a neighbour outside the image (the gamma/beta conv's
            zero padding).
        index: ``[B, h, w]`` each pixel's row of ``neighbours``.
        num_labels: ``K``, the channels of the label map.
    """

    labels: Tensor
    neighbours: Tensor
    index: Tensor
    num_labels: int

    @classmethod
    def build(
        cls, seg: Tensor, size: tuple[int, int], max_fraction: float = PATCH_LOOKUP_MAX_FRACTION
    ) -> LabelPatches | None:
        """From ``seg [B, K, H, W]`` resized (nearest) to ``size``; ``None`` where ``seg`` is not
        one-hot (or all zero) at every pixel, or where the distinct 3x3 patches exceed
        ``max_fraction`` of the pixels (the convs are then cheaper)."""
        seg = F.interpolate(seg, size=size, mode="nearest")  # [B, K, h, w]
        b, k, (h, w) = seg.shape[0], seg.shape[1], size
        total = seg.sum(1)  # [B, h, w]
        if not bool((((seg == 0) | (seg == 1)).all() & (total <= 1).all()).item()):
            return None  # soft or noisy maps (OASIS's noise channels): no few distinct patches
        ids = torch.where(total > 0, seg.argmax(1), k)  # [B, h, w] label id, K: none
        labels, patch = _unique_rows(_taps(ids, k), k + 1)  # [n, 9], [B*h*w]
        if labels.shape[0] > max_fraction * b * h * w:
            return None
        neighbours, index = _unique_rows(_taps(patch.view(b, h, w), labels.shape[0]), labels.shape[0] + 1)
        return cls(labels, neighbours, index.view(b, h, w), k)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.index.shape[1:])


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

    def lookup(self, patches: LabelPatches) -> tuple[Tensor, Tensor]:
        """gamma, beta ``[B, C, h, w]`` as :meth:`modulation` computes them (up to float rounding),
        from ``patches`` (:class:`LabelPatches` of the same label map at ``(h, w)``)."""
        conv, k = self.shared[0], patches.num_labels
        if conv.in_channels != k:
            raise ValueError(f"LabelPatches of {k} labels for a SPADENorm of label_nc={conv.in_channels}")
        n = patches.labels.shape[0]
        onehot = F.one_hot(patches.labels, k + 1)[..., :k].transpose(1, 2)  # [n, K, 9]; id K: all 0
        x = onehot.reshape(n, k * 9).to(conv.weight.dtype)  # conv weight order: channel, row, column
        actv = F.relu(F.linear(x, conv.weight.flatten(1), conv.bias))  # [n, hidden]
        weight = torch.cat([self.gamma.weight, self.beta.weight])  # [2C, hidden, 3, 3]
        out_ch, hidden = weight.shape[:2]
        table = (actv @ weight.permute(1, 2, 3, 0).reshape(hidden, 9 * out_ch)).view(n, 9, out_ch)
        table = F.pad(table.transpose(0, 1), (0, 0, 0, 1))  # [9, n+1, 2C]; row n: outside (zero padding)
        # cross-correlation: tap (i, j) of a pixel reads its neighbour at (y + i - 1, x + j - 1)
        nb = patches.neighbours  # [m, 9]
        values = table[0].index_select(0, nb[:, 0])  # [m, 2C]
        for tap in range(1, 9):
            values += table[tap].index_select(0, nb[:, tap])
        values += torch.cat([self.gamma.bias, self.beta.bias]).to(values.dtype)
        b, (h, w) = patches.index.shape[0], patches.size
        out, c = F.embedding(patches.index.view(b, h * w), values), out_ch // 2  # [B, h*w, 2C]
        gamma = out[..., :c].transpose(1, 2).contiguous().view(b, c, h, w)  # [B, C, h, w]
        beta = out[..., c:].transpose(1, 2).contiguous().view(b, c, h, w)
        return gamma, beta

    def encode(self, seg: Tensor, size: tuple[int, int], patches: LabelPatches | None = None) -> Modulation:
        """``(1 + gamma, beta)`` for activations of spatial ``size``: what :meth:`forward` takes as
        ``modulation`` to skip the convs over the label map (it does not change with the input).
        ``patches`` (:class:`LabelPatches` of ``seg`` at ``size``) switches to :meth:`lookup`."""
        if patches is not None and self.gamma.kernel_size == (3, 3) and self.shared[0].kernel_size == (3, 3):
            if patches.size != tuple(size):
                raise ValueError(f"LabelPatches of size {patches.size} are not for size {tuple(size)}")
            gamma, beta = self.lookup(patches)
        else:
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
