"""GAN generators: Pix2Pix U-Net, SPADE and OASIS, adapted to a one-hot mask in, one CT channel out.

Every generator has the signature ``forward(seg, generator=None) -> [B, 1, H, W]`` in [-1, 1]
(tanh), where ``seg`` is the one-hot mask ``[B, num_classes, H, W]`` and ``generator`` seeds the
method's own noise (only OASIS has any; the others ignore it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsynth.nn.spade import SPADEGANResBlock
from medsynth.random import GeneratorLike, randn

__all__ = ["UNetGenerator", "SPADEGenerator", "OASISGenerator", "upsampling_plan", "unet_depth"]


class UNetGenerator(nn.Module):
    """Pix2Pix U-Net generator (Isola et al., CVPR 2017; ``unet_256`` of the authors' code).

    ``depth`` stride-2 k4 convolutions with widths ``ngf * min(2**i, 8)`` (64..512 at ngf 64),
    LeakyReLU(0.2) before each but the first; the decoder mirrors them with ReLU ->
    ConvTranspose(k4, s2), skip connections by concatenation, batch norm everywhere but the
    outermost layers and the innermost down-conv, dropout 0.5 in the three decoder blocks just
    inside the innermost one, tanh output. ``depth = log2(image_size)`` takes a 256 input to 1x1
    (unet_256); smaller images get a shallower net.

    Args:
        in_channels: Channels of the condition (the one-hot mask: 17).
        out_channels: Output channels (1 CT channel).
        ngf: Base width (64).
        depth: Number of down-sampling levels (8 for 256x256).
        dropout: Dropout probability in the innermost decoder blocks (0.5).
        num_dropout: How many decoder blocks get dropout (3).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        ngf: int = 64,
        depth: int = 8,
        dropout: float = 0.5,
        num_dropout: int = 3,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        if ngf < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"ngf, in_channels, out_channels must be positive, got {ngf}, {in_channels}, {out_channels}"
            )
        self.depth = depth
        widths = [ngf * min(2**i, 8) for i in range(depth)]  # output width of down level i
        self.downs = nn.ModuleList()
        for i in range(depth):
            cin = in_channels if i == 0 else widths[i - 1]
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            # Conv bias only where no batch norm follows (outermost and innermost down-convs).
            use_norm = 0 < i < depth - 1
            layers.append(nn.Conv2d(cin, widths[i], 4, stride=2, padding=1, bias=not use_norm))
            if use_norm:
                layers.append(nn.BatchNorm2d(widths[i]))
            self.downs.append(nn.Sequential(*layers))
        first_dropout = max(1, depth - 1 - num_dropout)
        self.ups = nn.ModuleList()
        for i in range(depth):  # ups[i] undoes downs[i]
            cin = widths[i] if i == depth - 1 else 2 * widths[i]
            layers = [nn.ReLU()]
            if i == 0:
                layers += [nn.ConvTranspose2d(cin, out_channels, 4, stride=2, padding=1), nn.Tanh()]
            else:
                layers += [
                    nn.ConvTranspose2d(cin, widths[i - 1], 4, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(widths[i - 1]),
                ]
                if first_dropout <= i < depth - 1 and dropout > 0:
                    layers.append(nn.Dropout(dropout))
            self.ups.append(nn.Sequential(*layers))

    def forward(self, seg: Tensor, generator: GeneratorLike = None) -> Tensor:
        # seg: [B, in_channels, H, W] with H, W divisible by 2**depth
        if seg.shape[-1] % 2**self.depth or seg.shape[-2] % 2**self.depth:
            raise ValueError(
                f"input size {tuple(seg.shape[-2:])} is not divisible by 2**depth={2**self.depth}"
            )
        skips = []
        h = seg
        for down in self.downs:
            h = down(h)  # [B, widths[i], H / 2**(i+1), W / 2**(i+1)]
            skips.append(h)
        h = self.ups[-1](h)
        for i in range(self.depth - 2, -1, -1):
            h = self.ups[i](torch.cat([skips[i], h], dim=1))  # [B, widths[i-1], H / 2**i, W / 2**i]
        return h  # [B, out_channels, H, W]


def upsampling_plan(image_size: int, max_ups: int = 5, min_start: int = 2) -> tuple[int, int]:
    """``(num_ups, start_size)`` for a generator that starts from the mask at ``size / 2**num_ups``.

    SPADE and OASIS start at ``image_size / 32`` (5 nearest x2 upsamplings); a smaller image
    uses fewer so that the start is at least ``min_start`` pixels and divides exactly.
    """
    if image_size < min_start:
        raise ValueError(f"image_size must be >= {min_start}, got {image_size}")
    n = max_ups
    while n > 0 and (image_size % 2**n or image_size // 2**n < min_start):
        n -= 1
    return n, image_size // 2**n


class _SPADEDecoder(nn.Module):
    """Shared body of the SPADE and OASIS generators.

    The conditioning map (resized to the start size) goes through a 3x3 conv to ``channels[0]``,
    then SPADE residual blocks ``channels[i] -> channels[i + 1]`` with a nearest x2 upsampling
    after the blocks marked in ``upsample_after``, then lReLU(0.2) -> conv3x3 -> tanh. When the
    image is too small for every upsampling, the first ones are dropped (those blocks run at the
    start resolution), so every block and width of the published network is kept.
    """

    def __init__(
        self,
        image_size: int,
        label_nc: int,
        channels: list[int],
        upsample_after: list[bool],
        out_channels: int = 1,
        spectral: bool = True,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        if len(upsample_after) != len(channels) - 1:
            raise ValueError("upsample_after needs one entry per block")
        num_ups, self.start_size = upsampling_plan(image_size, max_ups=sum(upsample_after))
        drop = sum(upsample_after) - num_ups
        self.upsample_after = list(upsample_after)
        for i, up in enumerate(self.upsample_after):
            if drop and up:
                self.upsample_after[i], drop = False, drop - 1
        self.image_size = image_size
        self.fc = nn.Conv2d(label_nc, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            SPADEGANResBlock(channels[i], channels[i + 1], label_nc, hidden=hidden, spectral=spectral)
            for i in range(len(channels) - 1)
        )
        self.conv_img = nn.Conv2d(channels[-1], out_channels, 3, padding=1)

    def decode(self, cond: Tensor) -> Tensor:
        # cond: [B, label_nc, H, W]
        x = F.interpolate(cond, size=(self.start_size, self.start_size), mode="nearest")
        x = self.fc(x)  # [B, channels[0], s, s]
        for block, up in zip(self.blocks, self.upsample_after):
            x = block(x, cond)
            if up:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))  # [B, out_channels, H, W]


class SPADEGenerator(_SPADEDecoder):
    """SPADE generator (Park et al., CVPR 2019), no VAE encoder.

    Mask at ``image_size / 32`` -> conv3x3 to 16 ngf -> head_0, G_middle_0, G_middle_1 (16 ngf),
    up_0 (8), up_1 (4), up_2 (2), up_3 (1 ngf), nearest x2 upsampling after head_0, G_middle_1,
    up_0, up_1 and up_2 ("normal" mode) -> lReLU -> conv3x3 -> tanh. SPADE uses parameter-free
    batch norm and 128 hidden channels; the block convs have spectral norm.

    Args:
        image_size: Output side (the start size adapts below 64, see ``upsampling_plan``).
        num_classes: Channels of the one-hot mask.
        ngf: Base width (64).
        out_channels: 1 for CT.
        spectral: Spectral norm on the residual-block convs.
        hidden: Hidden channels of every SPADE layer (128).
    """

    def __init__(
        self,
        image_size: int,
        num_classes: int,
        ngf: int = 64,
        out_channels: int = 1,
        spectral: bool = True,
        hidden: int = 128,
    ) -> None:
        channels = [16 * ngf, 16 * ngf, 16 * ngf, 16 * ngf, 8 * ngf, 4 * ngf, 2 * ngf, ngf]
        super().__init__(
            image_size,
            num_classes,
            channels,
            upsample_after=[True, False, True, True, True, True, False],
            out_channels=out_channels,
            spectral=spectral,
            hidden=hidden,
        )

    def forward(self, seg: Tensor, generator: GeneratorLike = None) -> Tensor:
        return self.decode(seg)


class OASISGenerator(_SPADEDecoder):
    """OASIS generator (Schönfeld et al., ICLR 2021).

    SPADE residual blocks with channels ``[16, 16, 16, 8, 4, 2, 1] x ngf`` from ``size / 32`` up
    (x2 after every block but the last). A ``z_dim``-dimensional N(0, I) vector per sample is
    broadcast over H x W and concatenated to the one-hot mask ("3D noise"); that map feeds the
    first conv and every SPADE layer.

    Args:
        image_size: Output side.
        num_classes: Channels of the one-hot mask.
        ngf: Base width (64).
        z_dim: Noise channels (64).
        out_channels: 1 for CT.
        spectral: Spectral norm on the residual-block convs.
        hidden: Hidden channels of every SPADE layer (128).
    """

    def __init__(
        self,
        image_size: int,
        num_classes: int,
        ngf: int = 64,
        z_dim: int = 64,
        out_channels: int = 1,
        spectral: bool = True,
        hidden: int = 128,
    ) -> None:
        if z_dim < 0:
            raise ValueError(f"z_dim must be >= 0, got {z_dim}")
        channels = [16 * ngf, 16 * ngf, 16 * ngf, 8 * ngf, 4 * ngf, 2 * ngf, ngf]
        super().__init__(
            image_size,
            num_classes + z_dim,
            channels,
            upsample_after=[True] * 5 + [False],
            out_channels=out_channels,
            spectral=spectral,
            hidden=hidden,
        )
        self.z_dim = z_dim

    def sample_noise(self, batch: int, device: torch.device, generator: GeneratorLike = None) -> Tensor:
        """``[batch, z_dim]`` standard normal, drawn with ``generator`` (on its own device)."""
        return randn((batch, self.z_dim), generator, device)

    def forward(self, seg: Tensor, generator: GeneratorLike = None, z: Tensor | None = None) -> Tensor:
        # seg: [B, num_classes, H, W]; z: [B, z_dim] (sampled when None)
        if self.z_dim:
            if z is None:
                z = self.sample_noise(seg.shape[0], seg.device, generator)
            z = z.to(seg.dtype)[:, :, None, None].expand(-1, -1, *seg.shape[-2:])  # [B, z_dim, H, W]
            seg = torch.cat([z, seg], dim=1)
        return self.decode(seg)


def unet_depth(image_size: int) -> int:
    """``log2(image_size)``: the U-Net goes down to 1x1 as unet_256 does at 256."""
    depth = int(round(math.log2(image_size)))
    if 2**depth != image_size:
        raise ValueError(f"image_size must be a power of two for the U-Net generator, got {image_size}")
    return depth
