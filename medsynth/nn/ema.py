"""Exponential moving average of a module's weights (Improved DDPM and OASIS use decay 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA(nn.Module):
    """Holds an averaged copy of ``model``; a submodule, so it is saved in every checkpoint.

    ``shadow = decay * shadow + (1 - decay) * param`` after each optimiser step; buffers
    (batch-norm statistics) are copied as they are.

    Args:
        model: The module to average (the denoiser or the generator, never a discriminator).
        decay: EMA decay in [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay!r}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for s, p in zip(self.shadow.parameters(), model.parameters(), strict=True):
            s.lerp_(p.detach().to(s.dtype), 1.0 - self.decay)
        for s, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            s.copy_(b)

    def forward(self, *args, **kwargs):
        return self.shadow(*args, **kwargs)

    def train(self, mode: bool = True) -> EMA:
        # The averaged copy always runs in eval mode (no dropout, frozen batch-norm statistics).
        super().train(mode)
        self.shadow.eval()
        return self
