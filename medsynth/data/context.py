"""2.5D context of an axial slice: the masks of its neighbours and the slice(s) below it.

A slice-by-slice model sees one label map; a 2.5D model also sees the label maps of the slices
``±1..±k`` around it and, optionally, the ``p`` slices just below it: in generation order
(inferior to superior, slice index 0 first) the ones already made. In training those are the
real slices; when a volume is generated they are the generated ones
(:func:`medsynth.synthesis.generate_volumes`).

Neighbours that do not exist stay missing, flagged, never invented: beyond a volume's ends, across
a gap in z (the slices a z split leaves out, slices absent from a volume, an unlabelled slice of
a label volume), the context holds 0 (a background mask, a black image) and its flag is False. A
slice's neighbours are found by ``(case, slice index)``, so the pieces of one case in a dataset
(a z split's training slabs) join where they touch and stay apart across the gap.

Batches carry the context under four keys (only those of the parts a model uses):

- ``context_mask``: int64 ``[B, 2k, H, W]``, the masks of slices ``-k..-1, +1..+k`` (in that order);
- ``context_mask_valid``: bool ``[B, 2k]``;
- ``previous_image``: float32 ``[B, p, H, W]`` in [0, 1], slices ``-1, -2, .., -p``;
- ``previous_valid``: bool ``[B, p]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CONTEXT_KEYS",
    "CONTEXT_MASK",
    "CONTEXT_MASK_VALID",
    "PREVIOUS_IMAGE",
    "PREVIOUS_VALID",
    "ContextSpec",
    "SliceContext",
    "neighbour_positions",
    "volume_context",
    "batch_context",
]

#: Batch keys of the context (see the module docstring).
CONTEXT_MASK, CONTEXT_MASK_VALID = "context_mask", "context_mask_valid"
PREVIOUS_IMAGE, PREVIOUS_VALID = "previous_image", "previous_valid"
CONTEXT_KEYS: tuple[str, ...] = (CONTEXT_MASK, CONTEXT_MASK_VALID, PREVIOUS_IMAGE, PREVIOUS_VALID)


@dataclass(frozen=True)
class ContextSpec:
    """Which neighbours a 2.5D model sees.

    Args:
        neighbours: k: the masks of slices ``±1..±k`` (0: none).
        previous: p: the images of the ``p`` slices below (0: none). A model with ``p > 0`` makes a
            volume in order, one slice index after the other.
    """

    neighbours: int = 0
    previous: int = 0

    def __post_init__(self) -> None:
        for name in ("neighbours", "previous"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")

    @property
    def enabled(self) -> bool:
        """Whether there is any context (a 2D model has none)."""
        return bool(self.neighbours or self.previous)

    @property
    def mask_offsets(self) -> tuple[int, ...]:
        """Slice offsets of the neighbour masks: ``-k..-1, +1..+k``."""
        k = self.neighbours
        return (*range(-k, 0), *range(1, k + 1))

    @property
    def previous_offsets(self) -> tuple[int, ...]:
        """Slice offsets of the previous images: ``-1, -2, .., -p``."""
        return tuple(range(-1, -self.previous - 1, -1))

    @property
    def span(self) -> int:
        """Slices a context window covers, the slice itself included: ``max(2k + 1, p + 1)``."""
        return max(2 * self.neighbours + 1, self.previous + 1)

    def describe(self) -> str:
        """The context in words, for messages."""
        parts = []
        if self.neighbours:
            k = self.neighbours
            parts.append(f"the masks of slices {'±1' if k == 1 else f'±1..±{k}'}")
        if self.previous:
            parts.append(f"the {self.previous} previous slice image(s)")
        return " and ".join(parts) or "no context"


@dataclass(frozen=True)
class SliceContext:
    """The context tensors of a batch of slices (a part a model does not use is None).

    Attributes:
        masks: int64 ``[B, 2k, H, W]``: the neighbours' masks (0 where missing).
        masks_valid: bool ``[B, 2k]``.
        previous: float32 ``[B, p, H, W]`` in [0, 1]: the previous slices (0 where missing).
        previous_valid: bool ``[B, p]``.
    """

    masks: Tensor | None = None
    masks_valid: Tensor | None = None
    previous: Tensor | None = None
    previous_valid: Tensor | None = None

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any], spec: ContextSpec) -> SliceContext:
        """The context ``spec`` needs from a batch dict (keys of the module docstring).

        Raises:
            KeyError: naming the missing keys and the data module arguments that add them.
        """
        need = ([CONTEXT_MASK, CONTEXT_MASK_VALID] if spec.neighbours else []) + (
            [PREVIOUS_IMAGE, PREVIOUS_VALID] if spec.previous else []
        )
        missing = [k for k in need if k not in batch]
        if missing:
            raise KeyError(
                f"the batch has no {missing} ({spec.describe()}), which this 2.5D model needs; build the "
                f"data module with context_slices={spec.neighbours}, context_previous={spec.previous}"
            )
        get = lambda key: batch.get(key) if key in need else None  # noqa: E731
        return cls(get(CONTEXT_MASK), get(CONTEXT_MASK_VALID), get(PREVIOUS_IMAGE), get(PREVIOUS_VALID))

    @classmethod
    def cat(cls, contexts: Sequence[SliceContext]) -> SliceContext:
        """The contexts of several batches as one (along the batch dimension)."""
        if not contexts:
            raise ValueError("no contexts to concatenate")
        parts = [c.parts() for c in contexts]
        return cls(*(None if col[0] is None else torch.cat(col) for col in zip(*parts)))

    def to_batch(self) -> dict[str, Tensor]:
        """The batch entries of this context (the parts it has)."""
        pairs = zip(CONTEXT_KEYS, self.parts())
        return {k: v for k, v in pairs if v is not None}

    def replace(self, **parts: Tensor | None) -> SliceContext:
        """A copy with some parts replaced."""
        return dataclasses.replace(self, **parts)

    def parts(self) -> tuple[Tensor | None, ...]:
        """``(masks, masks_valid, previous, previous_valid)``, the tensors themselves (not copies)."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def _map(self, fn: Any) -> SliceContext:
        return SliceContext(*(None if v is None else fn(v) for v in self.parts()))

    def to(self, device: torch.device | str) -> SliceContext:
        """Every part on ``device``."""
        return self._map(lambda v: v.to(device))

    def select(self, rows: Any) -> SliceContext:
        """The context of some slices of the batch (``rows``: an index, slice or list)."""
        return self._map(lambda v: v[rows])

    def check(
        self, spec: ContextSpec, mask: Tensor, num_classes: int, check_values: bool = True
    ) -> SliceContext:
        """Validate against ``spec`` and the centre masks ``[B, H, W]``; return with exact dtypes.

        ``check_values=False`` skips the range of the mask values (one device sync; checked on the
        host before the transfer in training).

        Raises:
            ValueError: naming the part (``context.masks`` ...), its shape or values.
        """
        b, h, w = mask.shape
        parts = {
            "masks": (self.masks, self.masks_valid, 2 * spec.neighbours, "neighbour masks (slices ±1..±k)"),
            "previous": (self.previous, self.previous_valid, spec.previous, "previous slice images"),
        }
        out = {}
        for name, (value, valid, n, what) in parts.items():
            if n == 0:
                if value is not None:
                    raise ValueError(f"context.{name} is given, but this model takes no {what}")
                continue
            if value is None or valid is None:
                raise ValueError(
                    f"context.{name} and context.{name}_valid are missing: this model needs the {what}, "
                    f"{spec.describe()}"
                )
            if not isinstance(value, Tensor) or tuple(value.shape) != (b, n, h, w):
                raise ValueError(
                    f"context.{name} must have shape [{b}, {n}, {h}, {w}] ({what} of the {b} masks), got "
                    f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}"
                )
            if not isinstance(valid, Tensor) or tuple(valid.shape) != (b, n):
                raise ValueError(
                    f"context.{name}_valid must have shape [{b}, {n}], got {getattr(valid, 'shape', valid)}"
                )
            if name == "masks":
                if value.dtype.is_floating_point or value.dtype == torch.bool:
                    raise ValueError(f"context.masks must hold integer class ids, got dtype {value.dtype}")
                if check_values and value.numel():
                    lo, hi = torch.stack(torch.aminmax(value)).tolist()
                    if lo < 0 or hi >= num_classes:
                        raise ValueError(
                            f"context.masks values must lie in 0..{num_classes - 1}, got {lo}..{hi}"
                        )
                value = value.long()
            else:
                value = value.float()
            out[name], out[f"{name}_valid"] = value, valid.bool()
        return SliceContext(**out)


def neighbour_positions(indices: Sequence[int] | np.ndarray, offsets: Sequence[int]) -> np.ndarray:
    """Where each slice's neighbours are: ``[D, len(offsets)]`` positions in ``indices``, -1 if absent.

    Args:
        indices: The axial slice indices of one volume's slices, in any order, each once (gaps
            in z allowed: a missing index is a missing neighbour).
        offsets: Slice offsets to look up (e.g. ``(-2, -1, 1, 2)``).

    Raises:
        ValueError: when an index appears twice (naming it).
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    off = np.asarray(list(offsets), dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    ranked = idx[order]
    if len(ranked) > 1 and (np.diff(ranked) == 0).any():
        raise ValueError(f"slice index {int(ranked[1:][np.diff(ranked) == 0][0])} appears twice")
    if len(idx) == 0 or len(off) == 0:
        return np.full((len(idx), len(off)), -1, dtype=np.int64)
    target = idx[:, None] + off[None, :]  # [D, O]
    at = np.searchsorted(ranked, target).clip(max=len(ranked) - 1)
    return np.where(ranked[at] == target, order[at], -1)


def volume_context(
    masks: Tensor,
    indices: Sequence[int] | np.ndarray,
    spec: ContextSpec,
    rows: Sequence[int] | None = None,
    images: Tensor | None = None,
    done: Tensor | None = None,
) -> SliceContext:
    """The context of some slices of one volume, from its masks and the images made so far.

    Args:
        masks: int ``[D, H, W]``: the volume's label slices.
        indices: ``[D]`` their axial indices (gaps allowed, see :func:`neighbour_positions`).
        spec: What the model sees.
        rows: Positions of the slices to build the context for (None: all ``D``).
        images: ``[D, H, W]`` in [0, 1]: the slices generated (or real) so far; needed when
            ``spec.previous`` > 0.
        done: bool ``[D]``: which entries of ``images`` hold a slice (None: all). A previous slice
            that exists but is not done is an error: generation order was broken.

    Returns:
        A :class:`SliceContext` of ``len(rows)`` slices on ``masks``' device.
    """
    d = masks.shape[0]
    rows = list(range(d)) if rows is None else [int(r) for r in rows]
    pos = neighbour_positions(indices, spec.mask_offsets + spec.previous_offsets)[rows]  # [R, 2k + p]
    n_masks = 2 * spec.neighbours
    out: dict[str, Tensor] = {}
    if spec.neighbours:
        where = torch.from_numpy(pos[:, :n_masks]).to(masks.device)  # [R, 2k]
        valid = where >= 0
        found = masks.long()[where.clamp(min=0)]  # [R, 2k, H, W]
        out["masks"] = torch.where(valid[:, :, None, None], found, torch.zeros_like(found))
        out["masks_valid"] = valid
    if spec.previous:
        if images is None:
            raise ValueError("images is needed for the previous-slice context (spec.previous > 0)")
        where = torch.from_numpy(pos[:, n_masks:]).to(images.device)  # [R, p]
        valid = where >= 0
        if done is not None:
            ready = done.to(images.device)[where.clamp(min=0)]
            if bool((valid & ~ready).any()):
                r, j = (valid & ~ready).nonzero()[0].tolist()
                raise ValueError(
                    f"slice at position {rows[r]} needs slice offset {spec.previous_offsets[j]}, which is "
                    "not generated yet: previous slices must be generated first"
                )
        out["previous"] = torch.where(valid[:, :, None, None], images.float()[where.clamp(min=0)], 0.0)
        out["previous_valid"] = valid
    return SliceContext(**out)


def batch_context(model: Any, batch: Mapping[str, Any], rows: Any = None) -> SliceContext | None:
    """The context ``model`` needs from a data batch (its ``context_spec``), or None for a 2D model.

    For the validation and test loops, whose batches hold the real previous slices: a 2.5D model
    is then scored given the real slice below (teacher forcing), not in generation order.
    """
    spec = getattr(model, "context_spec", None)
    if spec is None:
        return None
    context = SliceContext.from_batch(batch, spec)
    return context if rows is None else context.select(rows)
