"""Lightning data modules for axial CT slices: AMOS22 and the built-in phantom.

Both yield the batches of DESIGN.md: ``image`` float32 ``[B, 1, H, W]`` in [0, 1] (window level
40, width 400), ``mask`` int64 ``[B, H, W]`` in 0..16, ``case_id`` list of str, ``slice_index``
int64 ``[B]`` (axial index in the canonical volume, 0 = most inferior). Every slice of every
volume is used, as in Zhuang et al., Sec. 3.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medsynth.data.transforms import PreprocessConfig, SliceVolume, preprocess_volume

__all__ = ["SliceDataset", "SliceDataModule", "PhantomDataModule", "phantom_case_seed"]

_SPLITS = ("train", "val", "test")
_MAIN_SPLIT = {"fit": "train", "validate": "val", "test": "test", "predict": "test"}


class SliceDataset(Dataset):
    """Axial slices held in (possibly memory-mapped) arrays.

    Args:
        images: ``[N, S, S]`` float16/float32 in [0, 1] (a ``np.memmap`` is read lazily).
        masks: uint8 ``[N, S, S]`` in 0..16.
        case_index: int ``[N]``, index into ``case_names`` for every slice.
        slice_index: int ``[N]``, axial index of every slice in its volume.
        case_names: Names of the cases.
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        case_index: np.ndarray,
        slice_index: np.ndarray,
        case_names: Sequence[str],
    ) -> None:
        n = len(images)
        if not (len(masks) == len(case_index) == len(slice_index) == n):
            raise ValueError(
                f"images, masks, case_index and slice_index must have the same length, got "
                f"{n}, {len(masks)}, {len(case_index)}, {len(slice_index)}"
            )
        self.images, self.masks = images, masks
        self.case_index = np.asarray(case_index, dtype=np.int64)
        self.slice_index = np.asarray(slice_index, dtype=np.int64)
        self.case_names = list(case_names)

    @classmethod
    def from_volumes(cls, volumes: Sequence[SliceVolume]) -> SliceDataset:
        """Concatenate preprocessed volumes (in memory)."""
        if not volumes:
            raise ValueError("volumes must not be empty")
        return cls(
            np.concatenate([v.image for v in volumes]),
            np.concatenate([v.mask for v in volumes]),
            np.concatenate([np.full(len(v.image), i, dtype=np.int64) for i, v in enumerate(volumes)]),
            np.concatenate([np.arange(len(v.image), dtype=np.int64) for v in volumes]),
            [v.case_id for v in volumes],
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = torch.from_numpy(np.asarray(self.images[i], dtype=np.float32).copy())[None]  # [1, S, S]
        mask = torch.from_numpy(np.asarray(self.masks[i], dtype=np.int64))  # [S, S]
        return {
            "image": image,
            "mask": mask,
            "case_id": self.case_names[int(self.case_index[i])],
            "slice_index": torch.tensor(int(self.slice_index[i]), dtype=torch.int64),
        }


class SliceDataModule(L.LightningDataModule):
    """Shared loaders of the slice data modules; subclasses fill ``self.datasets[split]`` in ``setup``.

    Args:
        image_size: Slice size (square).
        batch_size: Slices per batch (16 in the paper).
        num_workers: DataLoader worker processes.
    """

    def __init__(self, image_size: int = 256, batch_size: int = 16, num_workers: int = 0) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.config = PreprocessConfig(image_size=image_size)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.datasets: dict[str, SliceDataset] = {}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        if split not in self.datasets:
            raise ValueError(f"{type(self).__name__} has no {split!r} split (0 cases)")
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    @staticmethod
    def _splits_for(stage: str | None) -> tuple[str, ...]:
        return {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
            None: _SPLITS,
        }[stage]


def phantom_case_seed(seed: int, split: str, index: int) -> int:
    """Seed of phantom case ``index`` of ``split``: distinct across splits and indices."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    ss = np.random.SeedSequence([int(seed), _SPLITS.index(split), int(index)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


class PhantomDataModule(SliceDataModule):
    """Slices of procedural abdominal CT volumes (:mod:`medsynth.data.phantom`), no download.

    The phantom volumes (HU, AMOS labels, affine) run through the same preprocessing as AMOS
    (:func:`medsynth.data.transforms.preprocess_volume`: orientation, body class, window,
    resize). The slices of these small sets are kept in memory (a few MB to ~100 MB); use
    :class:`AMOSDataModule` on a folder written by ``write_phantom_dataset`` to exercise the
    on-disk slice cache. Train, val and test cases are different phantoms (seeds from
    :func:`phantom_case_seed`); the same arguments always give the same data.

    Args:
        num_train_cases: Training volumes.
        num_val_cases: Validation volumes.
        num_test_cases: Test volumes.
        depth: Axial slices per volume (spread from the pelvis to the lung bases).
        image_size: Slice size; the phantom is generated at ``phantom_size`` (default
            ``image_size``) and resized to this.
        batch_size: Slices per batch.
        num_workers: DataLoader workers.
        seed: Seeds every case.
        phantom_size: In-plane matrix of the generated volumes (None: ``image_size``).
    """

    def __init__(
        self,
        num_train_cases: int = 8,
        num_val_cases: int = 2,
        num_test_cases: int = 2,
        depth: int = 32,
        image_size: int = 256,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        phantom_size: int | None = None,
    ) -> None:
        super().__init__(image_size=image_size, batch_size=batch_size, num_workers=num_workers)
        for name, value in (
            ("num_train_cases", num_train_cases),
            ("num_val_cases", num_val_cases),
            ("num_test_cases", num_test_cases),
        ):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        if phantom_size is not None and (not isinstance(phantom_size, int) or phantom_size < 8):
            raise ValueError(f"phantom_size must be None or an int >= 8, got {phantom_size!r}")
        self.save_hyperparameters()
        self.counts = {"train": num_train_cases, "val": num_val_cases, "test": num_test_cases}
        self.depth = depth
        self.seed = seed
        self.phantom_size = phantom_size or image_size

    def make_volume(self, split: str, index: int) -> SliceVolume:
        """Generate and preprocess one phantom case."""
        from medsynth.data.phantom import make_phantom_case

        case = make_phantom_case(
            phantom_case_seed(self.seed, split, index),
            depth=self.depth,
            size=self.phantom_size,
            case_id=f"phantom_{split}_{index:04d}",
        )
        return preprocess_volume(case.image, case.label, case.affine, self.config, case.case_id)

    def setup(self, stage: str | None = None) -> None:
        for split in self._splits_for(stage):
            if split in self.datasets:
                continue
            if self.counts[split] == 0:
                if split == _MAIN_SPLIT.get(stage):
                    raise ValueError(f"num_{split}_cases is 0 but stage {stage!r} needs the {split} split")
                continue
            volumes = [self.make_volume(split, i) for i in range(self.counts[split])]
            self.datasets[split] = SliceDataset.from_volumes(volumes)

    def val_dataloader(self) -> DataLoader | list:
        if self.counts["val"] == 0:
            return []
        return super().val_dataloader()
