"""Numeric precision of ``generate()``: fp32 by default, bf16 autocast when asked.

Lightning autocasts only its ``*_step`` hooks, so sampling elsewhere (callback hooks, ``medsynth
synthesize``) runs in fp32 unless it enters one of these contexts: :func:`sampling_autocast` for an
explicit precision (``model.autocast(precision)``), :func:`trainer_precision` for the precision
a trainer was configured with.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import lightning as L
import torch

__all__ = ["PRECISIONS", "autocast_dtype", "sampling_autocast", "trainer_precision"]

#: The names ``medsynth synthesize --precision`` takes; Lightning's spellings are accepted too.
PRECISIONS: tuple[str, ...] = ("32", "bf16")
_DTYPES: dict[str, torch.dtype | None] = {
    "32": None,
    "32-true": None,
    "bf16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "16": torch.float16,
    "16-mixed": torch.float16,
}


def autocast_dtype(precision: str | int | None) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (None, 32, "32", "bf16", "bf16-mixed", "16-mixed"); None = fp32."""
    key = "32" if precision is None else str(precision)
    if key not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(_DTYPES)}")
    return _DTYPES[key]


def sampling_autocast(precision: str | int | None, device: torch.device | str) -> AbstractContextManager:
    """Autocast to ``precision`` on ``device``'s type; fp32 turns any enclosing autocast off.

    bf16 runs the convolutions and matmuls in bfloat16 (on CUDA the fast path; on CPU only when
    asked); the sampler's own arithmetic stays float32.
    """
    dtype = autocast_dtype(precision)
    device_type = torch.device(device).type
    if dtype is None:
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=dtype)


def trainer_precision(trainer: L.Trainer | None) -> AbstractContextManager:
    """The context Lightning runs the ``*_step`` hooks in (its autocast under ``bf16-mixed``), for
    ``generate()`` in callback hooks; no-op without a trainer."""
    if trainer is None:
        return nullcontext()
    return trainer.precision_plugin.forward_context()
