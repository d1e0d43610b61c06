"""``last.ckpt`` that holds the weights a run ended with.

Lightning's :class:`~lightning.pytorch.callbacks.ModelCheckpoint` (2.6) writes ``last.ckpt`` after a
validation (or at an epoch's end when there is none) and at the end of training only when it has
not written one yet. A run that ``max_steps`` or ``max_time`` stops between two validations, as the
experiment configs' runs do (validation every 1000 steps), so kept the weights of its last
validation: up to ``val_check_interval`` steps of training were not in ``last.ckpt``.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ModelCheckpoint; with ``save_last``, ``last.ckpt`` is written again when training
    ends at a step after the last checkpoint written (module docstring). The experiment configs use
    it in place of Lightning's."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)
