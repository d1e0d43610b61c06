"""Exponential moving average of a module's weights (Improved DDPM and OASIS use decay 0.9999)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EMA", "ema_decay_at"]


def ema_decay_at(decay: float, num_updates: int, warmup: bool) -> float:
    """The decay used by the ``num_updates``-th update (1-based).

    With warm-up, decay_n = min(decay, (1 + n) / (10 + n)) (the schedule of TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)``): the average starts by following the weights
    closely (0.18 at n = 1, 0.9 at n = 80) and reaches ``decay`` only after about
    ``(10 decay - 1) / (1 - decay)`` updates (8,991 for 0.999). Without it the average of a short
    run is still mostly its initialisation (0.9999^2000 = 0.82).
    """
    if not warmup:
        return decay
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


class EMA(nn.Module):
    """Holds an averaged copy of ``model``, saved in every checkpoint under ``<name>.shadow.*``.

    ``shadow = decay_n * shadow + (1 - decay_n) * param`` after each optimiser step (the caller
    calls :meth:`update` once per step); buffers (batch-norm statistics) are copied as they are.
    The number of updates is a buffer (``num_updates``), so the warm-up resumes exactly.

    The copy is held outside the module tree (not a registered submodule): it always runs in
    eval mode, and Lightning's check for modules left in eval mode at the start of training, the
    optimisers and the model summary see only the trained network. ``.to()``, ``.half()`` etc.
    and ``state_dict``/``load_state_dict`` still cover it.

    Args:
        model: The module to average (the denoiser or the generator, never a discriminator).
        decay: EMA decay in [0, 1).
        warmup: Use decay_n = min(decay, (1 + n) / (10 + n)) for the n-th update (see
            :func:`ema_decay_at`); False: ``decay`` from the first update (the paper's setting).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self._holder: tuple[nn.Module] = (shadow,)  # a tuple: not registered as a submodule
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @property
    def shadow(self) -> nn.Module:
        """The averaged network (eval mode, no gradients)."""
        return self._holder[0]

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        return ema_decay_at(self.decay, int(self.num_updates) + 1, self.warmup)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s weights (one fused kernel per dtype/device group)."""
        weight = 1.0 - self.current_decay()
        shadow_params = list(self.shadow.parameters())
        params = [p.detach().to(s.dtype) for s, p in zip(shadow_params, model.parameters(), strict=True)]
        if shadow_params:
            torch._foreach_lerp_(shadow_params, params, weight)
        shadow_buffers = list(self.shadow.buffers())
        buffers = [b.detach().to(s.dtype) for s, b in zip(shadow_buffers, model.buffers(), strict=True)]
        if shadow_buffers:
            torch._foreach_copy_(shadow_buffers, buffers)
        self.num_updates += 1

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.shadow(*args, **kwargs)

    # ---- the hidden copy still moves with the module and lives in its state dict ----------
    def _apply(self, fn: Any, recurse: bool = True) -> EMA:
        self.shadow._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        self.shadow.state_dict(destination=destination, prefix=prefix + "shadow.", keep_vars=keep_vars)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        counter = prefix + "num_updates"
        had_counter = counter in state_dict
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if not had_counter and counter in missing_keys:
            # Checkpoints written before the counter existed: keep counting from the current value.
            missing_keys.remove(counter)
        shadow_prefix = prefix + "shadow."
        sub = {k[len(shadow_prefix) :]: v for k, v in state_dict.items() if k.startswith(shadow_prefix)}
        result = self.shadow.load_state_dict(sub, strict=False)
        missing_keys.extend(shadow_prefix + k for k in result.missing_keys)
        unexpected_keys[:] = [k for k in unexpected_keys if not k.startswith(shadow_prefix)]
        unexpected_keys.extend(shadow_prefix + k for k in result.unexpected_keys)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, warmup={self.warmup}, shadow={type(self.shadow).__name__}"
