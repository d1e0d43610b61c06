"""Reflow: a rectified flow's own (noise, sample) pairs, to train a straighter flow on.

Liu et al., "Flow Straight and Fast" (ICLR 2023), reflow: the ODE of a trained rectified flow
carries each noise ``z`` to a sample ``x = Phi(z | mask)``. Trained again on these *coupled* pairs
(same loss, ``x_t = (1 - t) x + t z``, target ``z - x``), the next flow's paths are straighter
(the paper's analysis: straightness improves with each reflow, and transport costs do not rise)
and a few Euler steps, one at best, follow them. InstaFlow (Liu et al., ICLR 2024) makes
one-step text-to-image generators this way.

``medsynth reflow`` makes the pairs (:func:`make_pairs`); the file format and
:class:`~medsynth.data.ReflowDataModule`, which trains on them, are in :mod:`medsynth.data.reflow`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from medsynth.data.augment import stored_training_slices
from medsynth.data.reflow import ReflowPairs, pair_generators, pair_seed
from medsynth.models.base import check_data_label_set, check_data_window

__all__ = ["check_reflow_teacher", "make_pairs"]


def check_reflow_teacher(model: Any) -> None:
    """Raise a ValueError naming the problem unless ``model`` can make reflow pairs: a rectified
    flow (``process="rflow"``), 2D, without classifier-free guidance (its pairs would carry the
    guidance into a student that is trained and sampled without it)."""
    name = type(model).__name__
    process = getattr(model, "hparams", {}).get("process", None)
    if process != "rflow":
        raise ValueError(
            f"reflow needs a rectified flow, but this {name} has process {process!r}: train one with "
            "process='rflow' (experiments/<data>/<method>_rflow.yaml) and make the pairs from its checkpoint"
        )
    if "guidance_scale" in getattr(model, "generate_options", ()):
        raise ValueError(
            f"reflow pairs of a classifier-free guided model ({name}) are not supported: the student "
            "would learn the guided map and be guided again; use ConditionalDDPM, MaskGuidedDDPM or "
            "EdgeGuidedDDPM trained as a flow"
        )
    if getattr(model, "context_spec", None) is not None:
        raise ValueError(f"reflow pairs of a 2.5D model ({name}) are not supported")


def make_pairs(
    model: Any,
    datamodule: L.LightningDataModule,
    *,
    copies: int = 1,
    sampler: str = "euler",
    num_steps: int = 8,
    seed: int = 0,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> ReflowPairs:
    """Generate ``copies`` pairs per training slice of ``datamodule`` (as stored, not augmented)
    with the flow ``model``'s ``sampler`` at ``num_steps`` network evaluations.

    Raises:
        ValueError: naming the argument: not a flow (:func:`check_reflow_teacher`), data of another
            label set, window or image size, ``copies``/``batch_size``/``num_steps`` not positive.
    """
    check_reflow_teacher(model)
    for name, value in (("copies", copies), ("batch_size", batch_size), ("num_steps", num_steps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    check_data_label_set(model, datamodule)
    check_data_window(model, datamodule)
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()  # a slice cache (nnU-Net, AMOS) is built once here
    slices = stored_training_slices(datamodule)
    items = [slices[i] for i in range(len(slices))]
    if not items:
        raise ValueError(f"{type(datamodule).__name__} has no training slices to make pairs from")
    size = tuple(items[0]["mask"].shape)
    if size != (model.image_size, model.image_size):
        raise ValueError(f"the data's slices are {size}, the model's image_size is {model.image_size}")
    work = [(it, c) for it in items for c in range(copies)]
    images, masks, seeds, keys = [], [], [], []
    model.eval()
    for start in range(0, len(work), batch_size):
        chunk = work[start : start + batch_size]
        mask = torch.stack([it["mask"] for it, _ in chunk]).long()  # [B, H, W]
        chunk_keys = [(str(it["case_id"]), int(it["slice_index"])) for it, _ in chunk]
        chunk_seeds = [pair_seed(k[0], k[1], seed, c) for k, (_, c) in zip(chunk_keys, chunk)]
        with torch.no_grad():
            out = model.generate(
                mask, sampler=sampler, num_steps=num_steps, generator=pair_generators(chunk_seeds)
            )
        images.append(out.float().cpu())  # [B, 1, H, W]
        masks.append(mask.cpu())
        seeds += chunk_seeds
        keys += chunk_keys
        if progress is not None:
            progress(min(start + batch_size, len(work)), len(work))
    return ReflowPairs(
        images=torch.cat(images),
        masks=torch.cat(masks),
        seeds=torch.tensor(seeds, dtype=torch.int64),
        keys=keys,
        meta={
            "method": type(model).__name__,
            "sampler": sampler,
            "num_steps": num_steps,
            "seed": seed,
            "copies": copies,
            "label_set": model.label_set.name,
            "image_size": model.image_size,
            "window": [float(v) for v in model.window],
        },
    )
