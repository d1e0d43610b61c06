"""Seeded noise for generation: one generator for a batch, or one per sample.

A list of generators, one per slice, makes each slice's noise independent of the batch it is
generated in; batched sampling then gives the same slices whatever the batch size or the number
of processes (what exact, batched evaluation under DDP needs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["GeneratorLike", "check_generator", "randn", "slice_seed", "slice_generators"]

GeneratorLike = torch.Generator | Sequence[torch.Generator] | None


def check_generator(generator: GeneratorLike, batch: int) -> None:
    """Raise a TypeError/ValueError naming ``generator`` unless it fits a batch of ``batch``."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, Sequence) or not all(isinstance(g, torch.Generator) for g in generator):
        raise TypeError(
            f"generator must be a torch.Generator, a sequence of them or None, got {type(generator).__name__}"
        )
    if len(generator) != batch:
        raise ValueError(
            f"generator has {len(generator)} generators for a batch of {batch}; give one per sample"
        )


def randn(
    shape: Sequence[int],
    generator: GeneratorLike,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of ``shape`` (``[B, ...]``) on ``device``.

    Args:
        shape: Output shape; the first dimension is the batch.
        generator: None (global RNG), one generator for the whole tensor, or one per sample
            (row ``b`` comes from ``generator[b]`` alone).
        device: Output device; each generator draws on its own device first.
        dtype: Output dtype.
    """
    shape = tuple(int(s) for s in shape)
    if generator is None or isinstance(generator, torch.Generator):
        where = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=where, dtype=torch.float32).to(device, dtype)
    check_generator(generator, shape[0])
    rows = [
        torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32).to(device)
        for g in generator
    ]
    return torch.stack(rows).to(dtype)


def slice_seed(case_id: str, slice_index: int, seed: int = 0) -> int:
    """A 63-bit seed for one slice from ``(case_id, slice_index, seed)``: independent of process, batch and order."""
    digest = hashlib.sha256(f"{case_id}\x00{int(slice_index)}\x00{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def slice_generators(
    keys: Sequence[tuple[str, int]], seed: int, device: torch.device | str
) -> list[torch.Generator]:
    """One generator per ``(case_id, slice_index)``, for ``generate(..., generator=[...])``."""
    return [torch.Generator(device=device).manual_seed(slice_seed(str(c), int(k), seed)) for c, k in keys]
