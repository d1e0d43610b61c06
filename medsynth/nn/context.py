"""2.5D context for any denoiser: the neighbours and the previous slice, concatenated to x_t.

:class:`ContextDenoiser` wraps a denoiser ``net(x_t, t, **kwargs)`` whose input takes
:meth:`ContextDenoiser.channels` more channels than x_t, encodes the context
(:mod:`medsynth.data.context`) into those channels and passes everything else through. The
diffusion process and each variant's own conditioning (concatenated one-hot, encoder branch,
SPADE) stay as they are.

Encoding, chosen for its cost. A one-hot neighbour mask has as many channels as the label set
(17 for AMOS, 119 for TotalSegmentator); ``2k`` of them concatenated would multiply the width of
the first convolution (k = 2, TotalSegmentator: 476 more input channels). Instead each neighbour's
label map goes through one learned embedding table (``num_classes + 1`` rows: the last one marks a
missing neighbour) to ``embed`` channels: the same as a 1x1 convolution of its one-hot map, at the
price of a lookup, and ``2k x embed`` channels in all (16 for k = 2, embed = 4). The previous
slices enter as images (two channels each: the noise-augmented slice, 0 where missing, and its
availability flag) plus one channel holding their augmentation level (Ho et al. 2022, Cascaded
Diffusion Models: the conditioning image is noised at a random level during training, and the level
is given to the network, so that at sampling time it does not take its own slightly-off output for
the truth and drift).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ContextDenoiser"]


class ContextDenoiser(nn.Module):
    """A denoiser with 2.5D context: ``forward(x, t, context_mask=..., previous_image=..., **kwargs)``.

    Args:
        net: The denoiser; its input must take ``1 + channels(...)`` channels where x_t has 1
            (plus whatever it concatenates itself).
        num_classes: Classes of the label maps.
        neighbours: k: masks of slices ``±1..±k`` (0: none).
        previous: p: previous slices (0: none).
        embed: Channels per neighbour mask (its learned embedding).
    """

    def __init__(
        self, net: nn.Module, num_classes: int, neighbours: int, previous: int, embed: int = 4
    ) -> None:
        super().__init__()
        if neighbours < 0 or previous < 0 or not (neighbours or previous):
            raise ValueError(
                f"neighbours and previous must be >= 0, one of them > 0, got {neighbours}, {previous}"
            )
        if neighbours and embed < 1:
            raise ValueError(f"embed must be a positive int, got {embed!r}")
        self.net = net
        self.num_classes, self.neighbours, self.previous = num_classes, neighbours, previous
        # Row num_classes: a missing neighbour (beyond the volume's end, across a gap in z).
        self.embed = nn.Embedding(num_classes + 1, embed) if neighbours else None

    @staticmethod
    def channels(neighbours: int, previous: int, embed: int) -> int:
        """Input channels the context adds: ``2k * embed`` + (``2p + 1`` with previous slices)."""
        return 2 * neighbours * embed + (2 * previous + 1 if previous else 0)

    def encode_context(
        self,
        context_mask: Tensor | None = None,
        context_mask_valid: Tensor | None = None,
        previous_image: Tensor | None = None,
        previous_valid: Tensor | None = None,
        context_level: Tensor | None = None,
    ) -> Tensor:
        """The context channels ``[B, C, H, W]``.

        Args:
            context_mask: int64 ``[B, 2k, H, W]``; context_mask_valid: bool ``[B, 2k]``.
            previous_image: ``[B, p, H, W]`` in [-1, 1], already noise-augmented, 0 where missing;
                previous_valid: bool ``[B, p]``; context_level: ``[B]`` its augmentation level in [0, 1].
        """
        parts = []
        if self.embed is not None:
            if context_mask is None or context_mask_valid is None:
                raise ValueError(
                    "this denoiser needs context_mask and context_mask_valid (the neighbour masks)"
                )
            b, n, h, w = context_mask.shape
            if n != 2 * self.neighbours:
                raise ValueError(f"context_mask must hold {2 * self.neighbours} masks, got {n}")
            valid = context_mask_valid[:, :, None, None]  # [B, 2k, 1, 1]
            ids = torch.where(valid, context_mask, self.num_classes)  # [B, 2k, H, W]; missing: the last row
            parts.append(self.embed(ids).permute(0, 1, 4, 2, 3).reshape(b, -1, h, w))  # [B, 2k * e, H, W]
        if self.previous:
            if previous_image is None or previous_valid is None or context_level is None:
                raise ValueError("this denoiser needs previous_image, previous_valid and context_level")
            if previous_image.shape[1] != self.previous:
                raise ValueError(
                    f"previous_image must hold {self.previous} slices, got {previous_image.shape[1]}"
                )
            b, _, h, w = previous_image.shape
            dtype = previous_image.dtype
            flags = previous_valid.to(dtype)[:, :, None, None].expand(-1, -1, h, w)  # [B, p, H, W]
            level = context_level.to(dtype).reshape(b, 1, 1, 1).expand(-1, 1, h, w)  # [B, 1, H, W]
            parts += [previous_image, flags, level]
        return torch.cat(parts, dim=1)

    def encode_condition(self, **kwargs: Any) -> dict[str, Any]:
        """The time-independent conditioning, once per sampling chain: the context channels as
        ``context_features``, the rest through the wrapped network's ``encode_condition``."""
        context = {k: kwargs.pop(k, None) for k in _CONTEXT_ARGS}
        inner = getattr(self.net, "encode_condition", None)
        return {"context_features": self.encode_context(**context), **(inner(**kwargs) if inner else kwargs)}

    def forward(
        self, x: Tensor, timesteps: Tensor, context_features: Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        """``net(cat[x_t, context], t, **rest)``; ``context_features`` from :meth:`encode_condition`
        instead of the raw context keywords."""
        context = {k: kwargs.pop(k, None) for k in _CONTEXT_ARGS}
        if context_features is None:
            context_features = self.encode_context(**context)
        elif any(v is not None for v in context.values()):
            raise ValueError("give the context or its encoded context_features, not both")
        x = torch.cat([x, context_features.to(x.dtype)], dim=1)  # [B, 1 + C, H, W]
        return self.net(x, timesteps, **kwargs)  # [B, 2, H, W]


_CONTEXT_ARGS = ("context_mask", "context_mask_valid", "previous_image", "previous_valid", "context_level")
