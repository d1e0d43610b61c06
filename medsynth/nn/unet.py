"""Diffusion UNets assembled from diffusers 0.42 building blocks.

- :class:`DiffusionUNet`: the ResNet-style UNet of Improved DDPM (Nichol & Dhariwal 2021), with
  an optional conditioning encoder branch (Zhuang et al., Fig. 2b/c): a U-Net-like encoder over a
  conditioning map whose feature map at every resolution (before each downsampling) is
  concatenated to the main UNet's encoder and decoder features at that resolution.
- :class:`SPADEDiffusionUNet`: the SDM denoiser (Wang et al. 2022): the same encoder (it sees only
  x_t), while the middle block and every decoder res block normalise with SPADE group norm over
  the mask. Only the decoder block factory differs (MONAI's SPADEDiffusionModelUNet layout).

Every block is called as ``block(h, temb, seg)``; blocks that do not use ``seg`` ignore it.

Condition cache: what depends only on the condition (the encoder branch's features; SPADE's
modulation maps) is the same at every sampling step. :meth:`DiffusionUNet.encode_condition`
computes it once and returns keyword arguments for ``forward`` (``cond_features``,
``seg_features``) that give the same output as the raw condition at every timestep. When sampling
(no gradients), SDM encodes its one-hot mask by lookup over the distinct label patches
(:class:`medsynth.nn.spade.LabelPatches`; the convs' values up to float rounding), whether once
per call (the cache) or at every step (``condition_cache = False``); training runs the convs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import repeat
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import Tensor, nn

from medsynth.nn.spade import LabelPatches, Modulation, SPADENorm, num_groups

__all__ = [
    "DiffusionUNet",
    "SPADEDiffusionUNet",
    "ConditionEncoder",
    "SPADEDiffusionResBlock",
    "default_channel_mult",
]


def default_channel_mult(image_size: int) -> tuple[int, ...]:
    """Improved DDPM's channel multipliers per resolution (image_util/script_util)."""
    table = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}
    if image_size not in table:
        raise ValueError(f"no default channel_mult for image_size={image_size}; pass channel_mult explicitly")
    return table[image_size]


class ResBlock(nn.Module):
    """diffusers ResnetBlock2D with scale-shift time conditioning and a zero-initialised last conv."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int | None, dropout: float = 0.0) -> None:
        super().__init__()
        self.block = ResnetBlock2D(
            in_channels=in_ch,
            out_channels=out_ch,
            temb_channels=temb_ch,
            groups=num_groups(in_ch),
            groups_out=num_groups(out_ch),
            dropout=dropout,
            eps=1e-5,
            time_embedding_norm="scale_shift" if temb_ch is not None else "default",
        )
        nn.init.zeros_(self.block.conv2.weight)
        nn.init.zeros_(self.block.conv2.bias)

    def forward(self, h: Tensor, temb: Tensor | None, seg: Any = None) -> Tensor:
        return self.block(h, temb)

    def encode_seg(self, seg: Tensor, size: tuple[int, int], patches: LabelPatches | None = None) -> None:
        """Nothing to precompute: the block ignores ``seg``."""
        return None


class SPADEDiffusionResBlock(nn.Module):
    """SDM decoder res block: SPADE(GN) -> SiLU -> conv; SPADE(GN) -> time scale/shift -> SiLU ->
    dropout -> zero conv; plus a (1x1 conv) skip (Wang et al. 2022, guided_diffusion/unet.py)."""

    def __init__(
        self, in_ch: int, out_ch: int, temb_ch: int, label_nc: int, dropout: float = 0.0, hidden: int = 128
    ) -> None:
        super().__init__()
        self.norm1 = SPADENorm(in_ch, label_nc, hidden=hidden, norm="group")
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, 2 * out_ch)
        self.norm2 = SPADENorm(out_ch, label_nc, hidden=hidden, norm="group")
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)
        self.act = nn.SiLU()

    def encode_seg(
        self, seg: Tensor, size: tuple[int, int], patches: LabelPatches | None = None
    ) -> tuple[Modulation, Modulation]:
        """Both SPADE modulations for activations of spatial ``size`` (``seg`` for :meth:`forward`);
        ``patches``: ``seg``'s :class:`LabelPatches` at ``size`` for the lookup, if built."""
        return self.norm1.encode(seg, size, patches), self.norm2.encode(seg, size, patches)

    def forward(
        self, h: Tensor, temb: Tensor | None, seg: Tensor | tuple[Modulation, Modulation] | None = None
    ) -> Tensor:
        """``seg``: the label map ``[B, label_nc, H, W]``, or its :meth:`encode_seg` at ``h``'s size."""
        if seg is None or temb is None:
            raise ValueError("SPADEDiffusionResBlock needs the time embedding and the label map seg")
        label, (mod1, mod2) = (seg, (None, None)) if isinstance(seg, Tensor) else (None, seg)
        inplace = not torch.is_grad_enabled()  # sampling: reuse the fresh buffers (same values)
        x = self.conv1(F.silu(self.norm1(h, label, modulation=mod1), inplace=inplace))  # [B, out, H, W]
        scale, shift = self.temb_proj(self.act(temb))[:, :, None, None].chunk(2, dim=1)  # [B, out, 1, 1]
        x = self.norm2(x, label, modulation=mod2)
        if inplace and x.dtype == shift.dtype:
            x = torch.addcmul(shift, x, 1 + scale, out=x)
        else:
            x = torch.addcmul(shift, x, 1 + scale)
        x = self.conv2(self.dropout(F.silu(x, inplace=inplace)))
        return self.skip(h) + x


class AttnBlock(nn.Module):
    """Self-attention over the pixels (diffusers Attention, residual, zero-initialised output)."""

    def __init__(self, ch: int, num_heads: int) -> None:
        super().__init__()
        heads = num_heads if ch % num_heads == 0 else 1
        self.attn = Attention(
            ch,
            heads=heads,
            dim_head=ch // heads,
            eps=1e-5,
            norm_num_groups=num_groups(ch),
            residual_connection=True,
            bias=True,
            upcast_softmax=True,
            _from_deprecated_attn_block=True,
        )
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, h: Tensor, temb: Tensor | None = None, seg: Any = None) -> Tensor:
        return self.attn(h)

    def encode_seg(self, seg: Tensor, size: tuple[int, int], patches: LabelPatches | None = None) -> None:
        return None


class Level(nn.Module):
    """One resolution of an encoder or decoder: res blocks (each optionally with attention) and an
    optional resampling layer at the end."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)
        self.resample = resample


class ConditionEncoder(nn.Module):
    """U-Net-like encoder over a conditioning map (one-hot mask or edge map), Zhuang et al. Fig. 2b.

    Returns one feature map per resolution, taken before each downsampling.
    """

    def __init__(
        self, in_channels: int, model_channels: int, channel_mult: Sequence[int], num_res_blocks: int = 1
    ) -> None:
        super().__init__()
        self.widths = [model_channels * m for m in channel_mult]
        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        levels, ch = [], model_channels
        for i, w in enumerate(self.widths):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, w, None))
                ch = w
            last = i == len(self.widths) - 1
            levels.append(
                Level(blocks, [], None if last else Downsample2D(ch, use_conv=True, out_channels=ch))
            )
        self.levels = nn.ModuleList(levels)

    def forward(self, cond: Tensor) -> list[Tensor]:
        h = self.conv_in(cond)  # [B, mc, H, W]
        feats = []
        for level in self.levels:
            for block in level.blocks:
                h = block(h, None)
            feats.append(h)  # [B, w_l, H / 2^l, W / 2^l]
            if level.resample is not None:
                h = level.resample(h)
        return feats


class DiffusionUNet(nn.Module):
    """Improved-DDPM UNet predicting (eps, v), with an optional conditioning encoder branch.

    Args:
        image_size: Input side (selects the attention resolutions).
        in_channels: Channels of x_t plus any map concatenated to it (1 + 17 for the conditional DDPM).
        out_channels: 2 per image channel for Improved DDPM (eps and the variance interpolation v);
            1 for a rectified flow (the velocity): ``DiffusionModel`` asks its process.
        model_channels: Base width (128 in Improved DDPM at 256px).
        channel_mult: Width multipliers per resolution; default by image size ((1,1,2,2,4,4) at 256).
        num_res_blocks: Res blocks per resolution (2).
        attention_resolutions: Feature-map sides that get self-attention (16 and 8).
        dropout: Dropout in the res blocks (0).
        num_heads: Attention heads (4; 1 when the width is not divisible).
        cond_channels: Channels of the conditioning map of the encoder branch; 0 = no branch.
        cond_model_channels: Base width of the branch (default ``model_channels``).
        cond_num_res_blocks: Res blocks per resolution in the branch (1).
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int = 1,
        out_channels: int = 2,
        model_channels: int = 128,
        channel_mult: Sequence[int] | None = None,
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16, 8),
        dropout: float = 0.0,
        num_heads: int = 4,
        cond_channels: int = 0,
        cond_model_channels: int | None = None,
        cond_num_res_blocks: int = 1,
    ) -> None:
        super().__init__()
        mult = tuple(channel_mult) if channel_mult is not None else default_channel_mult(image_size)
        if not mult or any(m < 1 for m in mult):
            raise ValueError(f"channel_mult must be positive ints, got {channel_mult!r}")
        if image_size % 2 ** (len(mult) - 1):
            raise ValueError(
                f"image_size={image_size} is not divisible by 2^{len(mult) - 1} (channel_mult {mult})"
            )
        if model_channels < 1 or num_res_blocks < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"model_channels, num_res_blocks, in_channels and out_channels must be positive, got "
                f"{model_channels}, {num_res_blocks}, {in_channels}, {out_channels}"
            )
        if cond_channels < 0:
            raise ValueError(f"cond_channels must be >= 0, got {cond_channels}")
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        mc, temb_ch = model_channels, 4 * model_channels
        self.dropout = dropout

        self.time_proj = Timesteps(mc, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(mc, temb_ch)

        self.cond_encoder: ConditionEncoder | None = None
        cond_w = [0] * len(mult)
        if cond_channels:
            self.cond_encoder = ConditionEncoder(
                cond_channels, cond_model_channels or mc, mult, cond_num_res_blocks
            )
            cond_w = self.cond_encoder.widths

        self.conv_in = nn.Conv2d(in_channels, mc, 3, padding=1)
        skips, ch, down = [mc], mc, []
        for i, m in enumerate(mult):
            res = image_size // 2**i
            blocks, attns = [], []
            for j in range(num_res_blocks):
                blocks.append(ResBlock(ch + (cond_w[i] if j == 0 else 0), mc * m, temb_ch, dropout))
                ch = mc * m
                attns.append(AttnBlock(ch, num_heads) if res in attention_resolutions else nn.Identity())
                skips.append(ch)
            resample = None
            if i < len(mult) - 1:
                resample = Downsample2D(ch, use_conv=True, out_channels=ch)
                skips.append(ch)
            down.append(Level(blocks, attns, resample))
        self.down = nn.ModuleList(down)

        self.mid = nn.ModuleList(
            [
                self.decoder_block(ch, ch, temb_ch),
                AttnBlock(ch, num_heads),
                self.decoder_block(ch, ch, temb_ch),
            ]
        )

        up = []
        for i, m in reversed(list(enumerate(mult))):
            res = image_size // 2**i
            blocks, attns = [], []
            for j in range(num_res_blocks + 1):
                in_ch = ch + skips.pop() + (cond_w[i] if j == 0 else 0)
                blocks.append(self.decoder_block(in_ch, mc * m, temb_ch))
                ch = mc * m
                attns.append(AttnBlock(ch, num_heads) if res in attention_resolutions else nn.Identity())
            resample = Upsample2D(ch, use_conv=True) if i > 0 else None
            up.append(Level(blocks, attns, resample))
        self.up = nn.ModuleList(up)

        self.out = nn.Sequential(
            nn.GroupNorm(num_groups(ch), ch, eps=1e-5), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def decoder_block(self, in_ch: int, out_ch: int, temb_ch: int) -> nn.Module:
        """Res block of the middle and the decoder (SDM overrides this with SPADE)."""
        return ResBlock(in_ch, out_ch, temb_ch, self.dropout)

    def encode_condition(
        self, concat: Tensor | None = None, cond: Tensor | None = None, seg: Tensor | None = None
    ) -> dict[str, Any]:
        """The time-independent part of the conditioning, computed once for a whole sampling chain.

        Takes the keywords of :meth:`forward` and returns keywords for it that give the same output
        at every timestep: ``cond`` becomes ``cond_features`` (the encoder branch's feature maps),
        ``seg`` becomes ``seg_features`` (each decoder block's SPADE modulation); ``concat`` passes.
        """
        dtype = self.conv_in.weight.dtype  # forward casts the condition to x_t's dtype, the same
        out: dict[str, Any] = {}
        if concat is not None:
            out["concat"] = concat
        if cond is not None:
            if self.cond_encoder is None:
                raise ValueError("cond given, but the network has no conditioning encoder branch")
            out["cond_features"] = self.cond_encoder(cond.to(dtype))  # per level [B, w_l, H/2^l, W/2^l]
        if seg is not None:
            out["seg_features"] = self.encode_seg(seg.to(dtype))
        return out

    def encode_seg(self, seg: Tensor) -> list[Any]:
        """Each middle and decoder block's precomputed ``seg`` (``encode_seg``), in call order.

        Args:
            seg: Label map ``[B, K, H, W]`` at the input's size.
        """
        sizes = [tuple(seg.shape[-2:])]  # spatial size per level: Downsample2D (stride 2, pad 1) halves up
        for _ in self.down[1:]:
            sizes.append(tuple((s + 1) // 2 for s in sizes[-1]))
        patches = {size: self.label_patches(seg, size) for size in dict.fromkeys(sizes)}  # once per size
        out = [layer.encode_seg(seg, sizes[-1], patches[sizes[-1]]) for layer in self.mid]
        for k, level in enumerate(self.up):
            size = sizes[len(self.down) - 1 - k]
            out.extend(block.encode_seg(seg, size, patches[size]) for block in level.blocks)
        return out

    def label_patches(self, seg: Tensor, size: tuple[int, int]) -> LabelPatches | None:
        """What the blocks at ``size`` share for encoding ``seg``: nothing here (no block uses it)."""
        return None

    @property
    def num_decoder_blocks(self) -> int:
        """Blocks that take ``seg``: the middle layers and the decoder res blocks."""
        return len(self.mid) + sum(len(level.blocks) for level in self.up)

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        concat: Tensor | None = None,
        cond: Tensor | None = None,
        seg: Tensor | None = None,
        cond_features: Sequence[Tensor] | None = None,
        seg_features: Sequence[Any] | None = None,
    ) -> Tensor:
        """Predict (eps, v) for Improved DDPM, or a flow's velocity (``out_channels`` channels).

        Args:
            x: x_t ``[B, C, H, W]``.
            timesteps: ``[B]`` original timestep indices (a flow's float t * 1000).
            concat: Map concatenated to x_t along channels (conditional DDPM's one-hot mask).
            cond: Input of the conditioning encoder branch (mask-guided: one-hot; edge-guided: edges).
            seg: Label map for SPADE blocks (SDM).
            cond_features: ``cond`` encoded by :meth:`encode_condition` (instead of ``cond``).
            seg_features: ``seg`` encoded by :meth:`encode_condition` (instead of ``seg``).

        Returns:
            ``[B, out_channels, H, W]``.
        """
        if concat is not None:
            x = torch.cat([x, concat.to(x.dtype)], dim=1)  # [B, C + K, H, W]
        if x.shape[1] != self.in_channels:
            raise ValueError(f"the network expects {self.in_channels} input channels, got {x.shape[1]}")
        if cond is not None and cond_features is not None:
            raise ValueError("give cond or its encoded cond_features, not both")
        if (cond is None and cond_features is None) != (self.cond_encoder is None):
            raise ValueError("cond must be given exactly when the network has a conditioning encoder branch")
        temb = self.time_embedding(self.time_proj(timesteps.reshape(-1)).to(x.dtype))  # [B, 4 mc]
        feats = cond_features
        if cond is not None and self.cond_encoder is not None:
            feats = self.cond_encoder(cond.to(x.dtype))
        if feats is not None and (len(feats) != len(self.down) or feats[0].shape[0] != x.shape[0]):
            raise ValueError(
                f"cond_features must hold {len(self.down)} maps of batch {x.shape[0]}, got "
                f"{[tuple(f.shape) for f in feats]}"
            )
        segs = self._decoder_segs(seg, seg_features)

        h = self.conv_in(x)
        hs = [h]
        for i, level in enumerate(self.down):
            for j, (block, attn) in enumerate(zip(level.blocks, level.attns)):
                if j == 0 and feats is not None:
                    h = torch.cat([h, feats[i]], dim=1)
                h = attn(block(h, temb))
                hs.append(h)
            if level.resample is not None:
                h = level.resample(h)
                hs.append(h)

        for layer in self.mid:
            h = layer(h, temb, next(segs))

        n = len(self.down)
        for k, level in enumerate(self.up):
            i = n - 1 - k
            for j, (block, attn) in enumerate(zip(level.blocks, level.attns)):
                h = torch.cat([h, hs.pop()], dim=1)
                if j == 0 and feats is not None:
                    h = torch.cat([h, feats[i]], dim=1)
                h = attn(block(h, temb, next(segs)))
            if level.resample is not None:
                h = level.resample(h)
        return self.out(h)

    def _decoder_segs(self, seg: Tensor | None, seg_features: Sequence[Any] | None) -> Iterator[Any]:
        """What each middle/decoder block gets as ``seg``: the label map, or its precomputed part."""
        if seg_features is None:
            return repeat(seg)
        if seg is not None:
            raise ValueError("give seg or its encoded seg_features, not both")
        if len(seg_features) != self.num_decoder_blocks:
            raise ValueError(
                f"seg_features has {len(seg_features)} entries for {self.num_decoder_blocks} decoder blocks"
            )
        return iter(seg_features)


class SPADEDiffusionUNet(DiffusionUNet):
    """SDM denoiser: the plain encoder over x_t, SPADE group-norm res blocks in the middle and decoder.

    Args:
        label_nc: Channels of the label map (the 17-class one-hot).
        spade_hidden: Hidden width of SPADE's modulation net (128 in SDM).
        **kwargs: As :class:`DiffusionUNet` (no conditioning encoder branch).
    """

    def __init__(self, image_size: int, label_nc: int = 17, spade_hidden: int = 128, **kwargs) -> None:
        if kwargs.get("cond_channels", 0):
            raise ValueError("SPADEDiffusionUNet takes the mask through SPADE, not a cond_channels branch")
        if label_nc < 1:
            raise ValueError(f"label_nc must be positive, got {label_nc}")
        self.label_nc, self.spade_hidden = label_nc, spade_hidden
        super().__init__(image_size, **kwargs)
        #: Sampling encodes ``seg`` by lookup over its distinct label patches (:meth:`label_patches`);
        #: False runs the convs as training does (the same values up to float rounding).
        self.spade_lookup = True

    def label_patches(self, seg: Tensor, size: tuple[int, int]) -> LabelPatches | None:
        """The distinct neighbourhoods of ``seg`` at ``size``, shared by the SPADE norms there (their
        encoding becomes a lookup) when sampling; ``None`` where they are too many to pay, and with
        gradients on (training runs the convs, unchanged) or with ``spade_lookup = False``."""
        if torch.is_grad_enabled() or not self.spade_lookup:
            return None
        return LabelPatches.build(seg, size)

    def decoder_block(self, in_ch: int, out_ch: int, temb_ch: int) -> nn.Module:
        return SPADEDiffusionResBlock(in_ch, out_ch, temb_ch, self.label_nc, self.dropout, self.spade_hidden)

    def forward(
        self, x: Tensor, timesteps: Tensor, seg: Tensor | None = None, seg_features: Any = None, **kwargs
    ) -> Tensor:
        if seg is None and seg_features is None:
            raise ValueError("SPADEDiffusionUNet needs seg, the one-hot label map [B, label_nc, H, W]")
        if seg is not None:
            seg = seg.to(x.dtype)
            if seg_features is None and not torch.is_grad_enabled():
                # sampling without the condition cache: encode at this step, as the cache does once
                seg, seg_features = None, self.encode_seg(seg)
        return super().forward(x, timesteps, seg=seg, seg_features=seg_features, **kwargs)
