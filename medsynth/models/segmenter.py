"""In-domain organ segmenter: scores learned correspondence without any download.

SPADE (Park et al., 2019) and OASIS (Schönfeld et al., 2021) score semantic image synthesis by
segmenting generated images with a network trained on real ones and comparing the result with
the input mask. Zhuang et al. use TotalSegmentator for that on volumes
(:class:`medsynth.metrics.TotalSegmentatorScorer`); this 2-D MONAI U-Net trained on the real
slices of the same split family is the offline counterpart used by
:class:`medsynth.callbacks.SynthesisMetrics`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from torch import Tensor

from medsynth.labels import get_label_set
from medsynth.metrics.dice import dice_counts, dice_from_counts
from medsynth.models.base import CHECKPOINT_CLASS_KEY, check_batch

__all__ = ["OrganSegmenter"]


class OrganSegmenter(L.LightningModule):
    """2-D multi-organ segmenter (MONAI BasicUNet, Dice + cross-entropy loss) on real CT slices.

    Args:
        image_size: Side of the square slices.
        num_classes: Mask classes (None: from ``label_set``, 17 for AMOS); must agree with it.
        label_set: "amos", "totalseg" or a dataset.json path (:func:`medsynth.labels.get_label_set`).
        model_channels: Base width; the U-Net uses ``(c, c, 2c, 4c, 8c, c)`` features.
        lr: Adam learning rate.
        dropout: Dropout of the U-Net blocks.
        window_level, window_width: The CT window (HU) of the images it segments (the paper's
            40/400); recorded so a scorer knows the intensity scale it was trained on.

    Logs ``train/loss``, ``val/loss``, ``val/dice`` (mean organ Dice over the epoch's pixels)
    and the same under ``test/``.
    """

    def __init__(
        self,
        image_size: int,
        num_classes: int | None = None,
        label_set: str = "amos",
        model_channels: int = 32,
        lr: float = 1e-3,
        dropout: float = 0.0,
        window_level: float = 40.0,
        window_width: float = 400.0,
    ) -> None:
        super().__init__()
        if not isinstance(image_size, int) or image_size < 32:  # four 2x poolings, instance norm at 2x2
            raise ValueError(f"image_size must be an int >= 32, got {image_size!r}")
        labels = get_label_set(label_set)
        num_classes = labels.num_classes if num_classes is None else num_classes
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if num_classes != labels.num_classes:
            raise ValueError(
                f"num_classes={num_classes} disagrees with label_set={labels.name!r} ({labels.num_classes} classes)"
            )
        self.label_set = labels
        if not isinstance(model_channels, int) or model_channels < 1:
            raise ValueError(f"model_channels must be a positive int, got {model_channels!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.save_hyperparameters()
        c = model_channels
        from monai.losses import DiceCELoss  # here, not at import: MONAI's import costs ~1 s per process
        from monai.networks.nets import BasicUNet

        self.net = BasicUNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=num_classes,
            features=(c, c, 2 * c, 4 * c, 8 * c, c),
            dropout=dropout,
        )
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        self.num_classes = num_classes
        self._counts: dict[str, Tensor] = {}

    def forward(self, image: Tensor) -> Tensor:
        """``[B, 1, H, W]`` in [0, 1] -> logits ``[B, num_classes, H, W]``."""
        return self.net(image)

    @torch.no_grad()
    def segment(self, image: Tensor) -> Tensor:
        """``[B, 1, H, W]`` in [0, 1] -> label map ``[B, H, W]`` int64 (eval mode)."""
        with self._evaluating(image):
            logits = self(image.to(self.device, torch.float32))  # [B, C, H, W]
        return logits.argmax(dim=1).long()

    @torch.no_grad()
    def bottleneck_features(self, image: Tensor) -> Tensor:
        """Pooled bottleneck features ``[B, 8c]``: the deepest encoder block's output averaged over
        its pixels (eval mode). The in-domain feature space of the memorization check
        (:mod:`medsynth.metrics.memorization`) and the segmenter Fréchet distance of
        ``benchmarks/quality.py``; only the encoder runs."""
        with self._evaluating(image):
            x = self.net.conv_0(image.to(self.device, torch.float32))  # [B, c, H, W]
            for block in (self.net.down_1, self.net.down_2, self.net.down_3, self.net.down_4):
                x = block(x)  # [B, 8c, H/16, W/16] after down_4
        return x.mean(dim=(2, 3))  # [B, 8c]

    @contextmanager
    def _evaluating(self, image: Tensor) -> Iterator[None]:
        """Check ``image`` is ``[B, 1, H, W]`` and run in eval mode, restoring the mode after."""
        if image.dim() != 4 or image.shape[1] != 1:
            raise ValueError(f"image must have shape [B, 1, H, W], got {tuple(image.shape)}")
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    def _loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        image, mask = check_batch(batch, self.num_classes)
        logits = self(image)  # [B, C, H, W]
        return self.loss_fn(logits, mask[:, None]), logits, mask

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss, _, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def _eval_step(self, batch: Mapping[str, Any], stage: str) -> None:
        loss, logits, mask = self._loss(batch)
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=mask.shape[0])
        counts = dice_counts(logits.argmax(dim=1), mask, self.num_classes)
        self._counts[stage] = self._counts.get(stage, torch.zeros_like(counts)) + counts

    def _eval_epoch_end(self, stage: str) -> None:
        counts = self._counts.pop(stage, None)
        if counts is None:
            return
        counts = counts.to(self.device)
        if self.trainer.world_size > 1:
            counts = self.all_gather(counts).sum(dim=0)
        dice = dice_from_counts(counts.cpu())
        organs = list(self.label_set.structure_ids)
        self.log(f"{stage}/dice", float(torch.nanmean(dice[organs])), rank_zero_only=False)
        # Per organ too, under the keys SynthesisMetrics uses, so reports can show real-image Dice.
        for i in organs:
            if not torch.isnan(dice[i]):
                self.log(
                    f"{stage}/dice/{self.label_set.classes[i].name}", float(dice[i]), rank_zero_only=False
                )

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lets medsynth's commands recognise a segmenter checkpoint (and say where it belongs).
        checkpoint[CHECKPOINT_CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
