"""The reference rows of the protocol: the real slices, and each pixel painted with its class's mean.

A synthesis method is worth something where it beats class-mean painting (each pixel painted with
its class's mean training intensity: the mask's information without texture) and approaches the
real slices (the segmenter's own Dice on real CT, and the FD between real training and real test
slices: the floor of that metric).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from medsynth.metrics import (
    background_mean,
    class_mean_painting,
    dice_per_class,
    frechet_distance,
    region_sums,
)

from .data import stored_training_slices
from .scoring import TARGET_ORGANS, Extra, Features, organ_scores, score

__all__ = ["painting_row", "reference_rows", "training_class_means"]


def training_class_means(dm: L.LightningDataModule) -> torch.Tensor:
    """Mean intensity of every class of ``dm``'s label set over its training slices as stored (not
    augmented), float64 ``[num_classes]`` (NaN for classes never seen)."""
    n = dm.label_set.num_classes
    total = torch.zeros(2, n, dtype=torch.float64)
    for b in DataLoader(stored_training_slices(dm), batch_size=64):
        total += region_sums(b["image"], b["mask"], num_classes=n)
    return torch.where(
        total[1] > 0, total[0] / total[1].clamp(min=1), torch.full_like(total[0], float("nan"))
    )


def painting_row(
    dm: L.LightningDataModule,
    mask: torch.Tensor,
    batch: Mapping[str, Any],
    features: Features,
    real_feats: torch.Tensor,
    organs: Mapping[str, int] = TARGET_ORGANS,
    extra: Extra | None = None,
) -> dict[str, float]:
    """Scores of ``mask`` ``[N, H, W]`` (in ``dm``'s label set) painted with ``dm``'s training
    class means, against ``batch``'s real slices."""
    painted = class_mean_painting(mask, training_class_means(dm))  # [N, 1, H, W]
    return score(painted, batch, features, real_feats, organs, extra)


def reference_rows(
    dm: L.LightningDataModule,
    batch: Mapping[str, Any],
    features: Features,
    device: str = "cpu",
    organs: Mapping[str, int] = TARGET_ORGANS,
    extra: Extra | None = None,
) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:
    """Real test-slice features ``[N, D]``, the real-slice row and the class-mean painting row.

    ``dm`` is the data module whose test slices ``batch`` holds (:func:`~.data.eval_slices`), in
    the segmenter's label set. The real row has PSNR NaN, SSIM 1 and organ errors 0 by definition;
    its Dice is the segmenter's on the real slices, its FD that of real training slices (as many,
    spread evenly over the split, not augmented) against the real test slices; ``extra`` scores the real slices
    themselves.
    """
    labels_set = features.label_set
    real_labels, real_feats = features(batch["image"].to(device))
    real_dice = dice_per_class(real_labels, batch["mask"], num_classes=labels_set.num_classes)
    train_ds = stored_training_slices(dm)
    pick = np.linspace(0, len(train_ds) - 1, len(batch["mask"])).round().astype(int)
    _, train_feats = features(torch.stack([train_ds[int(i)]["image"] for i in pick]).to(device))
    real_row = {
        "psnr": float("nan"),
        "ssim": 1.0,
        "background": background_mean(batch["image"], batch["mask"]),
        **organ_scores(torch.zeros(labels_set.num_classes, dtype=torch.float64), real_dice, organs),
        "dice/all_organs": float(np.nanmean([float(real_dice[c]) for c in labels_set.structure_ids])),
        "frechet_seg": frechet_distance(train_feats.numpy(), real_feats.numpy()),
        **(extra(batch["image"], batch) if extra is not None else {}),
    }
    return real_feats, real_row, painting_row(dm, batch["mask"], batch, features, real_feats, organs, extra)
