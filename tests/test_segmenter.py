"""OrganSegmenter: learns a simple slice set (Dice by direct count), logs its losses, argument checks."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medsynth.models import OrganSegmenter


def _slices(n: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        mask = torch.zeros(32, 32, dtype=torch.long)
        mask[4:28, 4:28] = 16
        mask[6 + i : 16, 6:16] = 6
        mask[18:24, 18 : 24 - i] = 1
        level = torch.tensor([0.0, 0.8] + [0.0] * 4 + [0.6] + [0.0] * 9 + [0.35])
        image = (level[mask] + 0.02 * torch.randn(32, 32, generator=g))[None]
        out.append({"image": image, "mask": mask, "case_id": "c", "slice_index": torch.tensor(i)})
    return out


def test_segmenter_learns_and_logs():
    torch.manual_seed(0)
    model = OrganSegmenter(32, model_channels=8, lr=1e-2)
    loader = DataLoader(_slices(), batch_size=4)
    trainer = L.Trainer(
        max_steps=100,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=100,
    )
    trainer.fit(model, loader, loader)
    assert {"train/loss", "val/loss", "val/dice"} <= set(trainer.callback_metrics)
    batch = next(iter(loader))
    pred = model.segment(batch["image"])
    assert pred.dtype == torch.int64 and pred.shape == (4, 32, 32)
    p, t = pred.numpy(), batch["mask"].numpy()
    for c in (1, 6, 16):  # direct count
        dice = 2 * np.sum((p == c) & (t == c)) / (np.sum(p == c) + np.sum(t == c))
        assert dice > 0.8, (c, dice)
    assert float(trainer.callback_metrics["val/dice"]) > 0.8


def test_segmenter_arguments():
    with pytest.raises(ValueError, match="image_size"):
        OrganSegmenter(16)
    with pytest.raises(ValueError, match="model_channels"):
        OrganSegmenter(32, model_channels=0)
    with pytest.raises(ValueError, match="image"):
        OrganSegmenter(32, model_channels=4).segment(torch.rand(2, 32, 32))
