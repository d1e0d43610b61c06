"""GAN discriminators: PatchGAN (Pix2Pix), multiscale PatchGAN (SPADE), U-Net segmenter (OASIS)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from medsynth.nn.generators import upsampling_plan

__all__ = ["PatchDiscriminator", "MultiscaleDiscriminator", "OASISDiscriminator"]


class PatchDiscriminator(nn.Module):
    """PatchGAN: a fully convolutional classifier of overlapping patches (Isola et al., 2017).

    conv(k4, s2) -> lReLU(0.2); ``n_layers`` normalised k4 convs (the first ``n_layers - 1``
    stride 2, the last stride 1), widths ``ndf * min(2**n, 8)``; conv(k4, s1) to one logit per
    patch. ``n_layers=3`` with padding 1 and batch norm is Pix2Pix's 70x70 PatchGAN; with
    padding 2 and spectral instance norm it is one scale of SPADE's discriminator (SPADE counts
    the same five convs as ``n_layers_D=4``). No norm on the first and last conv.

    Args:
        in_channels: Input channels (concat of the one-hot mask and the image: 17 + 1).
        ndf: Base width (64).
        n_layers: Number of normalised convs (3).
        norm: "batch" (Pix2Pix) or "spectral_instance" (SPADE: spectral norm on the conv,
            then a parameter-free instance norm).
        padding: Conv padding (1 in Pix2Pix, 2 in SPADE).
    """

    def __init__(
        self,
        in_channels: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm: Literal["batch", "spectral_instance"] = "batch",
        padding: int = 1,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if norm not in ("batch", "spectral_instance"):
            raise ValueError(f"norm must be 'batch' or 'spectral_instance', got {norm!r}")
        groups: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, ndf, 4, stride=2, padding=padding), nn.LeakyReLU(0.2))
        ]
        nf = ndf
        for n in range(1, n_layers + 1):
            nf_prev, nf = nf, ndf * min(2**n, 8)
            stride = 1 if n == n_layers else 2
            conv = nn.Conv2d(nf_prev, nf, 4, stride=stride, padding=padding, bias=False)
            if norm == "batch":
                layers = [conv, nn.BatchNorm2d(nf)]
            else:
                layers = [spectral_norm(conv), nn.InstanceNorm2d(nf, affine=False)]
            groups.append(nn.Sequential(*layers, nn.LeakyReLU(0.2)))
        groups.append(nn.Conv2d(nf, 1, 4, stride=1, padding=padding))
        self.groups = nn.ModuleList(groups)

    def features(self, x: Tensor) -> list[Tensor]:
        """Output of every group; the last entry is the patch logits ``[B, 1, h, w]``."""
        out = []
        for group in self.groups:
            x = group(x)
            out.append(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)[-1]


class MultiscaleDiscriminator(nn.Module):
    """SPADE's discriminator: ``num_d`` PatchGANs on the input and its avg-pooled copies.

    Between scales: ``avg_pool2d(kernel 3, stride 2, padding 1, count_include_pad=False)``.
    ``forward`` returns, per scale, every intermediate feature map and last the logits, for the
    hinge loss (last entries) and feature matching (the others).

    Args:
        in_channels: Input channels (one-hot mask + image).
        ndf: Base width (64, capped at 8 * ndf = 512).
        n_layers: Normalised convs per scale (3, SPADE's ``n_layers_D=4``).
        num_d: Number of scales (2).
    """

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, num_d: int = 2) -> None:
        super().__init__()
        if num_d < 1:
            raise ValueError(f"num_d must be >= 1, got {num_d}")
        self.scales = nn.ModuleList(
            PatchDiscriminator(in_channels, ndf, n_layers, norm="spectral_instance", padding=2)
            for _ in range(num_d)
        )

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        # x: [B, in_channels, H, W]
        out = []
        for i, d in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)  # [B, C, H/2**i, W/2**i]
            out.append(d.features(x))
        return out


class _ResBlockD(nn.Module):
    """OASIS discriminator residual block: lReLU -> (up) -> conv3x3 -> lReLU -> conv3x3 (-> pool).

    Spectral norm on every conv; a learned 1x1 shortcut when widths differ. ``direction`` -1
    average-pools by 2 at the end, +1 upsamples (nearest x2) before the first conv. The first
    block of the encoder has no leading activation and pools its shortcut before the 1x1 conv.
    """

    def __init__(self, fin: int, fout: int, direction: int, first: bool = False) -> None:
        super().__init__()
        self.direction, self.first = direction, first
        self.conv1 = spectral_norm(nn.Conv2d(fin, fout, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(fout, fout, 3, padding=1))
        self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1)) if fin != fout else None

    def _resample(self, x: Tensor) -> Tensor:
        if self.direction > 0:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, 2)

    def forward(self, x: Tensor) -> Tensor:
        # shortcut: the first block pools before its 1x1 conv; the others upsample before or pool after
        s = x
        if self.first or self.direction > 0:
            s = self._resample(s)
        if self.conv_s is not None:
            s = self.conv_s(s)
        if not self.first and self.direction < 0:
            s = self._resample(s)
        dx = x if self.first else F.leaky_relu(x, 0.2)
        if self.direction > 0:
            dx = self._resample(dx)
        dx = self.conv2(F.leaky_relu(self.conv1(dx), 0.2))
        if self.direction < 0:
            dx = self._resample(dx)
        return s + dx


class OASISDiscriminator(nn.Module):
    """OASIS U-Net segmentation discriminator (Schönfeld et al., ICLR 2021).

    Sees the image only and predicts, per pixel, one of ``num_classes + 1`` classes (0 = fake,
    1..N = the real semantic classes). Encoder: residual blocks with average pooling, widths
    ``[2, 2, 4, 4, 8, 8] x ndf`` (128..512 at ndf 64); decoder: residual blocks with nearest
    upsampling and skip concatenation back to ``ndf``; 1x1 conv to ``num_classes + 1`` logits.
    Six levels take 256 to 4x4; smaller images use fewer levels so the bottleneck stays >= 4.

    Args:
        image_size: Input side.
        num_classes: Semantic classes N (17); the output has N + 1 channels.
        in_channels: Image channels (1).
        ndf: Base width (64).
    """

    def __init__(self, image_size: int, num_classes: int, in_channels: int = 1, ndf: int = 64) -> None:
        super().__init__()
        levels, _ = upsampling_plan(image_size, max_ups=6, min_start=4)
        if levels < 1:
            raise ValueError(f"image_size must be divisible by 2 and >= 8, got {image_size}")
        enc = [ndf * m for m in (2, 2, 4, 4, 8, 8)][:levels]
        self.down = nn.ModuleList(
            _ResBlockD(in_channels if i == 0 else enc[i - 1], enc[i], -1, first=i == 0) for i in range(levels)
        )
        up = []
        for i in range(levels):
            cin = enc[-1] if i == 0 else 2 * enc[levels - 1 - i]
            cout = enc[levels - 2 - i] if i < levels - 1 else ndf
            up.append(_ResBlockD(cin, cout, 1))
        self.up = nn.ModuleList(up)
        self.out = nn.Conv2d(ndf, num_classes + 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, in_channels, H, W] -> logits [B, N + 1, H, W]
        skips = []
        for block in self.down:
            x = block(x)  # [B, enc[i], H / 2**(i+1), W / 2**(i+1)]
            skips.append(x)
        x = self.up[0](x)
        for i in range(1, len(self.up)):
            x = self.up[i](torch.cat([skips[-i - 1], x], dim=1))
        return self.out(x)
