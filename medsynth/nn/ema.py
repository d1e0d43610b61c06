"""Exponential moving average of a module's weights (Improved DDPM and OASIS use decay 0.9999)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["EMA", "ema_decay_at", "EMADecay"]


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


class EMADecay:
    """The ``multi_avg_fn`` of :class:`EMA`: one EMA step, its decay from the update number.

    ``AveragedModel`` calls it with ``num_averaged`` = the number of averages so far, the copy made
    at construction counting as the first; update ``n`` (1-based) therefore gets ``num_averaged = n``
    and uses :func:`ema_decay_at` ``(decay, n, warmup)``. The step itself is torch's
    (:func:`torch.optim.swa_utils.get_ema_multi_avg_fn`): ``shadow.lerp_(param, 1 - decay_n)``.
    """

    def __init__(self, decay: float, warmup: bool) -> None:
        self.decay, self.warmup = float(decay), bool(warmup)

    @torch.no_grad()
    def __call__(self, averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor | int) -> None:
        decay = ema_decay_at(self.decay, int(num_averaged), self.warmup)
        current = [c.to(a.dtype) for a, c in zip(averaged, current, strict=True)]
        get_ema_multi_avg_fn(decay)(averaged, current, num_averaged)


class EMA(AveragedModel):
    """An averaged copy of ``model``: ``torch.optim.swa_utils.AveragedModel`` with an EMA schedule.

    ``shadow = decay_n * shadow + (1 - decay_n) * param`` after each optimiser step (the caller
    calls :meth:`update` once per step); buffers (batch-norm statistics) are copied as they are
    (``use_buffers=False``). The copy is a registered submodule (``<name>.module.*`` in the state
    dict; :attr:`shadow` is the public name), so ``.to()``, ``state_dict`` and distributed
    strategies that walk the module tree (FSDP, DeepSpeed) see it as any other module. Its
    parameters do not require gradients, and it always stays in eval mode (:meth:`train` keeps
    it there); :class:`~medsynth.models.base.SynthesisModule` quiets Lightning's notice about
    modules in eval mode for exactly these modules.

    The update counter is AveragedModel's ``n_averaged`` (the copy made here counts as the first
    average, so ``num_updates = n_averaged - 1``) and is saved, so the warm-up resumes exactly.
    State dicts of the earlier layout (``shadow.*``, ``num_updates``) load through a
    ``load_state_dict`` pre-hook.

    Args:
        model: The module to average (the denoiser or the generator, never a discriminator).
        decay: EMA decay in [0, 1).
        warmup: Use decay_n = min(decay, (1 + n) / (10 + n)) for the n-th update (see
            :func:`ema_decay_at`); False: ``decay`` from the first update (the paper's setting).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay!r}")
        super().__init__(model, multi_avg_fn=EMADecay(decay, warmup), use_buffers=False)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module.requires_grad_(False)
        self.n_averaged.fill_(1)  # the copy is the first average: update n averages with num_averaged = n
        self.train(False)
        self.register_load_state_dict_pre_hook(_load_earlier_layout)

    @property
    def shadow(self) -> nn.Module:
        """The averaged network (eval mode, no gradients)."""
        return self.module

    @property
    def num_updates(self) -> Tensor:
        """Updates so far (a 0-dim long tensor on the module's device)."""
        return self.n_averaged - 1

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        return ema_decay_at(self.decay, int(self.num_updates) + 1, self.warmup)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s weights (one fused kernel per dtype/device group)."""
        self.update_parameters(model)

    def train(self, mode: bool = True) -> EMA:
        """Always eval mode: the average is only ever evaluated (``mode`` is ignored)."""
        return super().train(False)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, warmup={self.warmup}"


def _load_earlier_layout(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Rename an earlier EMA state dict in place: ``shadow.*`` -> ``module.*`` and the counter
    ``num_updates`` -> ``n_averaged`` (= num_updates + 1); one written before the counter existed
    keeps the module's current count."""
    old = prefix + "shadow."
    keys = [k for k in state_dict if k.startswith(old)]
    for key in keys:
        state_dict[prefix + "module." + key[len(old) :]] = state_dict.pop(key)
    counter = prefix + "num_updates"
    if counter in state_dict:
        state_dict[prefix + "n_averaged"] = state_dict.pop(counter) + 1
    elif keys and prefix + "n_averaged" not in state_dict:
        state_dict[prefix + "n_averaged"] = module.n_averaged.clone()
