"""Image grids for TensorBoard: mask overlay | real | synthetic, one row per slice (cf. the
paper's Figs. 3 and 4)."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from medsynth.callbacks.metrics import check_callback_samplers, dev_run_options
from medsynth.data.context import batch_context
from medsynth.labels import LabelSet, colorize
from medsynth.models.base import check_batch
from medsynth.precision import trainer_precision
from medsynth.random import slice_generators

__all__ = ["overlay", "comparison_grid", "SynthesisImageGrid"]


def overlay(
    image: Tensor | np.ndarray,
    mask: Tensor | np.ndarray,
    alpha: float = 0.5,
    label_set: LabelSet | None = None,
) -> np.ndarray:
    """Blend class colours over a gray slice: ``[H, W]`` in [0, 1] + ``[H, W]`` ids -> uint8 ``[H, W, 3]``.

    Background (id 0) stays gray. The colours are ``label_set``'s (AMOS's when None).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    img = np.clip(np.asarray(torch.as_tensor(image).detach().cpu().float()), 0.0, 1.0)
    m = np.asarray(torch.as_tensor(mask).detach().cpu().long())
    if img.shape != m.shape or img.ndim != 2:
        raise ValueError(f"image {img.shape} and mask {m.shape} must both be [H, W]")
    gray = np.repeat(img[..., None] * 255.0, 3, axis=-1)
    color = (colorize if label_set is None else label_set.colorize)(m).astype(np.float64)
    a = np.where(m[..., None] > 0, alpha, 0.0)
    return np.clip(np.rint((1 - a) * gray + a * color), 0, 255).astype(np.uint8)


def comparison_grid(
    mask: Tensor, real: Tensor, fake: Tensor, alpha: float = 0.5, label_set: LabelSet | None = None
) -> np.ndarray:
    """Rows of (mask overlay on the real slice | real | synthetic): uint8 ``[n*H, 3*W, 3]``.

    Args:
        mask: ``[n, H, W]`` class ids of ``label_set`` (AMOS's when None).
        real: ``[n, 1, H, W]`` in [0, 1].
        fake: ``[n, 1, H, W]`` in [0, 1].
    """
    if real.shape != fake.shape or real.dim() != 4 or real.shape[0] != mask.shape[0]:
        raise ValueError(
            f"shapes do not match: mask {tuple(mask.shape)}, real {tuple(real.shape)}, fake {tuple(fake.shape)}"
        )

    def gray(x: Tensor) -> np.ndarray:
        v = np.clip(np.asarray(x.detach().cpu().float()), 0.0, 1.0)
        return np.repeat(np.rint(v[..., None] * 255.0), 3, axis=-1).astype(np.uint8)

    rows = [
        np.concatenate(
            [overlay(real[i, 0], mask[i], alpha, label_set), gray(real[i, 0]), gray(fake[i, 0])], axis=1
        )
        for i in range(mask.shape[0])
    ]
    return np.concatenate(rows, axis=0)


class SynthesisImageGrid(Callback):
    """Log a grid (mask overlay | real | synthetic) of the first validation/test batch to TensorBoard.

    Under ``Trainer(fast_dev_run=...)`` diffusion models sample with
    :data:`~medsynth.callbacks.metrics.FAST_DEV_RUN_STEPS` steps.

    Args:
        num_images: Rows of the grid.
        every_n_epochs: Validation epochs between grids.
        num_steps, sampler, guidance_scale: Passed to ``generate``.
        seed: Base seed; each slice's noise is seeded from ``(case_id, slice_index, seed)``.
        alpha: Opacity of the mask colours.
    """

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 1,
        num_steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        alpha: float = 0.5,
    ) -> None:
        super().__init__()
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive int, got {num_images!r}")
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive int, got {every_n_epochs!r}")
        self.num_images, self.every_n_epochs, self.seed, self.alpha = (
            num_images,
            every_n_epochs,
            int(seed),
            alpha,
        )
        self.options = {"num_steps": num_steps, "sampler": sampler, "guidance_scale": guidance_scale}
        #: The last grid, uint8 ``[n*H, 3*W, 3]``.
        self.last_grid: np.ndarray | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_callback_samplers(self, pl_module, sampler=self.options["sampler"])

    @torch.no_grad()
    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, tag: str) -> None:
        image, mask = check_batch(batch, getattr(pl_module, "num_classes", 17))
        n = min(self.num_images, mask.shape[0])
        case_ids = list(batch.get("case_id", [str(i) for i in range(n)]))
        slice_idx = torch.as_tensor(batch.get("slice_index", torch.arange(n))).reshape(-1).tolist()
        gens = slice_generators(list(zip(case_ids[:n], slice_idx[:n])), self.seed, pl_module.device)
        options = dev_run_options(trainer, pl_module, self.options)  # a few steps under fast_dev_run
        with trainer_precision(trainer):  # the trainer's autocast: Lightning's skips callback hooks
            context = batch_context(pl_module, batch, slice(0, n))  # a 2.5D model's: the real neighbours
            fake = pl_module.generate(
                mask[:n].to(pl_module.device), generator=gens, context=context, **options
            ).cpu()
        label_set = getattr(pl_module, "label_set", None)  # the model's classes (totalseg: 118 structures)
        grid = comparison_grid(mask[:n].cpu(), image[:n].cpu(), fake, self.alpha, label_set)
        self.last_grid = grid
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, grid, global_step=trainer.global_step, dataformats="HWC")

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        self._log(trainer, pl_module, batch, "val/samples")

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0 and trainer.is_global_zero:
            self._log(trainer, pl_module, batch, "test/samples")
