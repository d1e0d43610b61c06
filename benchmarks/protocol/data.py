"""The protocol's data: the phantom split, and the evaluation slices of any slice data module.

Any :class:`medsynth.data.datamodule.SliceDataModule` serves (the phantom, AMOS, an nnU-Net
dataset): the protocol reads ``setup``, ``train_dataloader``, ``test_dataloader`` and
``label_set`` of it, and the test items' ``image``, ``mask``, ``case_id`` and ``slice_index``.
A data module with a slice cache (AMOS, nnU-Net) needs its ``prepare_data()`` called once first;
:func:`~benchmarks.protocol.run.run_quality` does.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from medsynth.data import PhantomDataModule
from medsynth.data.augment import stored_training_slices

__all__ = ["eval_slices", "phantom"]


def phantom(image_size: int = 64, batch_size: int = 16, label_set: str = "amos") -> PhantomDataModule:
    """The phantom split of experiments/phantom/*.yaml: 12 train, 2 val, 4 test cases of 32 slices.

    ``label_set="totalseg"`` labels the same images (byte for byte) with the rich set.
    """
    return PhantomDataModule(
        label_set=label_set,
        num_train_cases=12,
        num_val_cases=2,
        num_test_cases=4,
        depth=32,
        image_size=image_size,
        batch_size=batch_size,
        seed=0,
    )


def eval_slices(dm: L.LightningDataModule, num: int | None) -> dict[str, Any]:
    """``num`` test slices spread evenly over ``dm``'s test split (all of it for None or ``num`` >=
    its length): ``{"image": [N, 1, H, W], "mask": [N, H, W], "keys": [(case_id, slice_index)]}``."""
    if num is not None and (not isinstance(num, int) or num < 1):
        raise ValueError(f"num must be a positive int or None, got {num!r}")
    dm.setup("test")
    ds = dm.test_dataloader().dataset
    n = len(ds)
    if n == 0:
        raise ValueError(f"{type(dm).__name__} has no test slices to evaluate on")
    if num is None or num >= n:
        idx = list(range(n))
    else:
        idx = sorted({round(i * (n - 1) / max(num - 1, 1)) for i in range(num)})
    items = [ds[i] for i in idx]
    return {
        "image": torch.stack([it["image"] for it in items]),  # [N, 1, H, W]
        "mask": torch.stack([it["mask"] for it in items]),  # [N, H, W]
        "keys": [(str(it["case_id"]), int(it["slice_index"])) for it in items],
    }


def training_images(dm: L.LightningDataModule) -> torch.Tensor:
    """``dm``'s training slices as stored (not augmented), ``[M, 1, H, W]``: the reference of the
    memorization check."""
    data = stored_training_slices(dm)
    return torch.stack([data[i]["image"] for i in range(len(data))])
