"""Joint augmentation of a training slice and its mask (MONAI ``RandFlipd`` and ``RandAffined``).

With one patient (or a few) a model sees the same ~100 slices again and again and learns to
return them; a random left-right flip and a small rotation, scaling and shift of image and mask
together give it new pairs that still obey the mask-to-CT mapping (the mapping is local: a
flipped slice is a valid, if mirrored, pair). Intensities are left alone: Hounsfield units are
what the model must learn, so no intensity augmentation is offered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from medsynth.data.context import CONTEXT_MASK, PREVIOUS_IMAGE

__all__ = ["SliceAugmentation", "AugmentedSlices", "stored_slices", "stored_training_slices"]

#: Item entries that move with the slice, and their interpolation: images bilinear, masks nearest.
_MODES = {
    "image": "bilinear",
    "mask": "nearest",
    CONTEXT_MASK: "nearest",
    PREVIOUS_IMAGE: "bilinear",
}


@dataclass(frozen=True)
class SliceAugmentation:
    """Random flip and affine, applied to ``image`` (bilinear) and ``mask`` (nearest) together.

    Args:
        flip: Probability of a left-right flip (columns: the patient's right/left).
        rotate_deg: Largest in-plane rotation, degrees (uniform in +-).
        scale: Largest relative zoom (uniform in 1 +- scale).
        translate: Largest shift as a fraction of the image side (uniform in +-).
        prob: Probability of the affine part.

    Outside the original field of view the image gets 0 (the bottom of the window: air for the
    paper's and every wider window) and the mask background. A 2.5D item's context (its
    neighbours' masks, its previous slices: :mod:`medsynth.data.context`) gets the same flip and
    affine as the slice, masks nearest, images bilinear.
    """

    flip: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.05
    prob: float = 1.0

    def __post_init__(self) -> None:
        for name in ("flip", "prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)!r}")
        for name in ("rotate_deg", "scale", "translate"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.scale >= 1.0:
            raise ValueError(f"scale must be < 1 (a zoom factor 1 +- scale), got {self.scale!r}")

    def transforms(self, size: int) -> tuple[Any, Any]:
        """The MONAI flip and affine transforms for ``size`` x ``size`` slices."""
        from monai.transforms import RandAffined, RandFlipd

        # One draw of the random parameters per call, applied to every key present.
        flip = RandFlipd(keys=list(_MODES), prob=self.flip, spatial_axis=1, allow_missing_keys=True)
        affine = RandAffined(
            keys=list(_MODES),
            prob=self.prob,
            rotate_range=math.radians(self.rotate_deg),
            scale_range=(self.scale, self.scale),
            translate_range=(self.translate * size, self.translate * size),
            mode=tuple(_MODES.values()),
            padding_mode="zeros",
            allow_missing_keys=True,
        )
        return flip, affine


class AugmentedSlices(Dataset):
    """A slice dataset whose items pass through a :class:`SliceAugmentation`.

    The random state of each item is drawn from torch's generator, so ``seed_everything`` makes
    a run reproducible and every DataLoader worker (seeded differently by torch) draws its own.
    """

    def __init__(self, dataset: Dataset, augmentation: SliceAugmentation, size: int) -> None:
        self.dataset = dataset
        self.augmentation = augmentation
        self._flip, self._affine = augmentation.transforms(size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # the wrapped dataset's attributes (images, masks, ...)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.dataset[i])
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
        self._flip.set_random_state(seed=seed)
        self._affine.set_random_state(seed=seed + 1)
        pair = {"image": item["image"], "mask": item["mask"][None].float()}  # [1, H, W] each
        for key in (CONTEXT_MASK, PREVIOUS_IMAGE):  # [2k, H, W] / [p, H, W]: channels move together
            if key in item:
                pair[key] = item[key].float()
        from monai.data.meta_obj import get_track_meta, set_track_meta

        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors: 5x faster, and no transform history is needed here
        try:
            pair = self._affine(self._flip(pair))
        finally:
            set_track_meta(tracking)
        image, mask = (_plain(pair[k]) for k in ("image", "mask"))
        item["image"] = image.float().clamp_(0.0, 1.0)  # [1, H, W]
        item["mask"] = mask[0].round().long()  # [H, W]
        if CONTEXT_MASK in pair:
            item[CONTEXT_MASK] = _plain(pair[CONTEXT_MASK]).round().long()  # [2k, H, W]
        if PREVIOUS_IMAGE in pair:
            item[PREVIOUS_IMAGE] = _plain(pair[PREVIOUS_IMAGE]).float().clamp_(0.0, 1.0)  # [p, H, W]
        return item


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor from MONAI's output (a MetaTensor carries its transform history)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def stored_slices(dataset: Dataset) -> Dataset:
    """``dataset`` without its :class:`AugmentedSlices` wrappers: the slices as stored (what a
    memorization check compares with)."""
    while isinstance(dataset, AugmentedSlices):
        dataset = dataset.dataset
    return dataset


def stored_training_slices(datamodule: Any) -> Dataset:
    """A data module's training slices as stored: not through the loader's augmentation (random
    flips and affines), which would make what is computed from them random (the memorization
    reference, reflow pairs, class-mean references)."""
    datamodule.setup("fit")
    return stored_slices(datamodule.train_dataloader().dataset)
