"""Lightning data modules for axial CT slices: AMOS22 and the built-in phantom.

Both yield the same batches: ``image`` float32 ``[B, 1, H, W]`` in [0, 1] (window level
40, width 400), ``mask`` int64 ``[B, H, W]`` in 0..16, ``case_id`` list of str, ``slice_index``
int64 ``[B]`` (axial index in the canonical volume, 0 = most inferior). Every slice of every
volume is used, as in Zhuang et al., Sec. 3.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medsynth.data.amos import AMOSCase, index_amos, load_checked
from medsynth.data.augment import AugmentedSlices, SliceAugmentation
from medsynth.data.cache import BadCaseError, CacheEntry, SliceCache, files_fingerprint
from medsynth.data.context import (
    CONTEXT_MASK,
    CONTEXT_MASK_VALID,
    PREVIOUS_IMAGE,
    PREVIOUS_VALID,
    ContextSpec,
    neighbour_positions,
)
from medsynth.data.transforms import (
    WINDOW_LEVEL,
    WINDOW_WIDTH,
    PreprocessConfig,
    SliceVolume,
    preprocess_volume,
)

__all__ = [
    "SliceDataset",
    "SliceDataModule",
    "PhantomDataModule",
    "AMOSDataModule",
    "NNUNetDataModule",
    "phantom_case_seed",
    "default_cache_dir",
]

_SPLITS = ("train", "val", "test")
_MAIN_SPLIT = {"fit": "train", "validate": "val", "test": "test", "predict": "test"}


class SliceDataset(Dataset):
    """The axial slices of a list of volumes, each held in (possibly memory-mapped) arrays.

    Slice ``i`` of the dataset is found by a binary search over the cumulative slice counts,
    and only that slice is read, so memory-mapped volumes are never loaded whole.

    Args:
        images: Per case (or piece of a case), ``[D, S, S]`` float16/float32 in [0, 1]
            (``np.memmap`` is fine).
        masks: Per case, uint8 ``[D, S, S]`` in 0..16.
        case_names: Per case, its name.
        first_slices: Per case, the axial index of its first slice in the canonical volume
            (None: 0 for every case). Lets a dataset hold slabs of a volume (a z split) while
            ``slice_index`` stays the index in the whole volume.
        context: 2.5D context of every item (None: none): the neighbours' masks and the previous
            slices (:mod:`medsynth.data.context`), found by ``(case name, slice index)`` across
            the pieces of a case; missing neighbours (volume ends, gaps in z) stay missing, flagged.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        case_names: Sequence[str],
        first_slices: Sequence[int] | None = None,
        context: ContextSpec | None = None,
    ) -> None:
        first_slices = [0] * len(images) if first_slices is None else [int(f) for f in first_slices]
        if not (len(images) == len(masks) == len(case_names) == len(first_slices)):
            raise ValueError(
                f"images, masks, case_names and first_slices must have one entry per case, got "
                f"{len(images)}, {len(masks)}, {len(case_names)}, {len(first_slices)}"
            )
        for name, img, msk in zip(case_names, images, masks):
            if img.ndim != 3 or img.shape != msk.shape:
                raise ValueError(
                    f"case {name}: image {img.shape} and mask {msk.shape} must be equal [D, S, S]"
                )
        self.images, self.masks, self.case_names = list(images), list(masks), list(case_names)
        self.first_slices = first_slices
        self.offsets = np.cumsum([0] + [len(x) for x in self.images])  # [num_cases + 1]
        # Plain ndarray views of the same buffers (np.memmap indexing has a per-call overhead).
        self._images = [np.asarray(x) for x in self.images]
        self._masks = [np.asarray(x) for x in self.masks]
        self.context = context if context is not None and context.enabled else None
        # [N, 2k + p]: the dataset index of each item's neighbour at every context offset, -1 if absent.
        self._neighbours = self._neighbour_table() if self.context is not None else None

    @classmethod
    def from_volumes(cls, volumes: Sequence[SliceVolume]) -> SliceDataset:
        """Dataset over preprocessed volumes held in memory."""
        return cls([v.image for v in volumes], [v.mask for v in volumes], [v.case_id for v in volumes])

    def with_context(self, context: ContextSpec | None) -> SliceDataset:
        """The same slices (the arrays are shared, not copied), each item with ``context``."""
        return SliceDataset(self.images, self.masks, self.case_names, self.first_slices, context)

    def _neighbour_table(self) -> np.ndarray:
        assert self.context is not None
        offsets = self.context.mask_offsets + self.context.previous_offsets
        table = np.full((len(self), len(offsets)), -1, dtype=np.int64)
        pieces: dict[str, list[int]] = {}
        for piece, name in enumerate(self.case_names):
            pieces.setdefault(name, []).append(piece)
        for name, group in pieces.items():
            items = np.concatenate([np.arange(self.offsets[p], self.offsets[p + 1]) for p in group])
            z = np.concatenate([self.first_slices[p] + np.arange(len(self.images[p])) for p in group])
            try:
                pos = neighbour_positions(z, offsets)  # [n, 2k + p] positions within the case
            except ValueError as err:
                raise ValueError(
                    f"case {name}: {err} in this dataset; 2.5D context needs each (case, slice index) once"
                ) from err
            table[items] = np.where(pos >= 0, items[pos.clip(min=0)], -1)
        return table

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """``(case, slice)`` of dataset index ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"slice {i} out of range for {len(self)} slices")
        i = int(i) % len(self)
        case = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return case, i - int(self.offsets[case])

    def __getitem__(self, i: int) -> dict:
        case, k = self.locate(i)
        # Copy the one slice out of the (memory-mapped) array, convert in torch: numpy's
        # float16 -> float32 cast is ~10x slower.
        image = torch.from_numpy(np.array(self._images[case][k])).float()[None]  # [1, S, S]
        mask = torch.from_numpy(np.array(self._masks[case][k])).long()  # [S, S]
        item = {
            "image": image,
            "mask": mask,
            "case_id": self.case_names[case],
            "slice_index": torch.tensor(self.first_slices[case] + k, dtype=torch.int64),
        }
        if self._neighbours is not None:
            item.update(self._context_item(self._neighbours[i % len(self)], mask.shape))
        return item

    def _slice(self, arrays: list[np.ndarray], i: int) -> torch.Tensor:
        case, k = self.locate(i)
        return torch.from_numpy(np.array(arrays[case][k]))

    def _context_item(self, neighbours: np.ndarray, shape: torch.Size) -> dict[str, torch.Tensor]:
        """The context entries of one item from its row of the neighbour table (0 where missing)."""
        assert self.context is not None
        n = 2 * self.context.neighbours
        out = {}
        if n:
            blank = torch.zeros(shape, dtype=torch.long)
            masks = [self._slice(self._masks, j).long() if j >= 0 else blank for j in neighbours[:n]]
            out[CONTEXT_MASK] = torch.stack(masks)  # [2k, S, S]
            out[CONTEXT_MASK_VALID] = torch.from_numpy(neighbours[:n] >= 0)
        if self.context.previous:
            blank = torch.zeros(shape)
            images = [self._slice(self._images, j).float() if j >= 0 else blank for j in neighbours[n:]]
            out[PREVIOUS_IMAGE] = torch.stack(images)  # [p, S, S]
            out[PREVIOUS_VALID] = torch.from_numpy(neighbours[n:] >= 0)
        return out


class SliceDataModule(L.LightningDataModule):
    """Shared loaders of the slice data modules; subclasses fill ``self.datasets[split]`` in ``setup``.

    Args:
        image_size: Slice size (square).
        batch_size: Slices per batch (16 in the paper).
        num_workers: DataLoader worker processes.
        window_level: CT window centre in HU (40, the paper's).
        window_width: CT window width in HU (400, the paper's: [-160, 240] HU -> [0, 1]; e.g. level 0,
            width 2000 keeps air at -1000 and bone up to 1000 HU, at a cost in soft-tissue contrast).
        augment: Random flips and small affines of the training slices with their masks (False;
            True: :class:`~medsynth.data.augment.SliceAugmentation`'s defaults, or one of them).
        context_slices: 2.5D context: every batch also holds the masks of the slices ``±1..±k``
            around each slice (0: none; :mod:`medsynth.data.context`). Must equal the model's.
        context_previous: 2.5D context: every batch also holds the ``p`` real slices below each
            slice (0: none). Must equal the model's.
    """

    def __init__(
        self,
        image_size: int = 256,
        batch_size: int = 16,
        num_workers: int = 0,
        window_level: float = WINDOW_LEVEL,
        window_width: float = WINDOW_WIDTH,
        augment: bool | SliceAugmentation = False,
        context_slices: int = 0,
        context_previous: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(augment, (bool, SliceAugmentation)):
            raise ValueError(f"augment must be a bool or a SliceAugmentation, got {augment!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.config = PreprocessConfig(
            image_size=image_size, window_level=float(window_level), window_width=float(window_width)
        )
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.datasets: dict[str, SliceDataset] = {}
        self.augmentation = SliceAugmentation() if augment is True else (augment or None)
        try:
            spec = ContextSpec(context_slices, context_previous)
        except ValueError as err:
            raise ValueError(f"context_slices/context_previous: {err}") from err
        #: The 2.5D context every batch holds (None: none).
        self.context = spec if spec.enabled else None

    @property
    def window(self) -> tuple[float, float]:
        """``(level, width)`` in HU of the window that maps CT to the [0, 1] images."""
        return (self.config.window_level, self.config.window_width)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        if split not in self.datasets:
            raise ValueError(f"{type(self).__name__} has no {split!r} split (0 cases)")
        dataset = self.datasets[split]
        if self.context is not None:
            dataset = dataset.with_context(self.context)
        if split == "train" and self.augmentation is not None:
            dataset = AugmentedSlices(dataset, self.augmentation, self.image_size)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
            pin_memory=torch.cuda.is_available(),  # page-locked batches: asynchronous copies to the GPU
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
        label_set: ``"amos"`` (default) or ``"totalseg"``: the same images labelled with
            TotalSegmentator ids for every structure drawn (bones, muscles, bowel, lungs, ...),
            body id 118 (:func:`medsynth.data.phantom.make_phantom_case`).
        irregularity: Lobulated organ outlines, 0-0.5 (0: the default phantom, unchanged; 0.5:
            ellipse IoU of stomach, bladder and spleen 0.79-0.82, see docs/data.md).
        window_level, window_width: The CT window in HU (the paper's 40/400; see
            :class:`SliceDataModule`).
        augment: Random flips and small affines of the training slices (see :class:`SliceDataModule`).
        context_slices, context_previous: 2.5D context in every batch (see :class:`SliceDataModule`).
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
        label_set: str = "amos",
        irregularity: float = 0.0,
        window_level: float = WINDOW_LEVEL,
        window_width: float = WINDOW_WIDTH,
        augment: bool = False,
        context_slices: int = 0,
        context_previous: int = 0,
    ) -> None:
        super().__init__(
            image_size,
            batch_size,
            num_workers,
            window_level,
            window_width,
            augment,
            context_slices,
            context_previous,
        )
        from medsynth.data.phantom import check_irregularity

        irregularity = check_irregularity(irregularity)
        if label_set not in ("amos", "totalseg"):
            raise ValueError(f"label_set must be 'amos' or 'totalseg' for the phantom, got {label_set!r}")
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
        self.label_set_name = label_set
        self.irregularity = float(irregularity)
        if label_set == "totalseg":
            from medsynth.labels import get_label_set

            ts = get_label_set("totalseg")
            self.config = dataclasses.replace(self.config, body_label=ts.body, max_label=ts.body - 1)

    @property
    def label_set(self):
        """The :class:`~medsynth.labels.LabelSet` of the masks."""
        from medsynth.labels import get_label_set

        return get_label_set(self.label_set_name)

    def make_volume(self, split: str, index: int) -> SliceVolume:
        """Generate and preprocess one phantom case."""
        from medsynth.data.phantom import make_phantom_case

        case = make_phantom_case(
            phantom_case_seed(self.seed, split, index),
            depth=self.depth,
            size=self.phantom_size,
            case_id=f"phantom_{split}_{index:04d}",
            label_set=self.label_set_name,
            irregularity=self.irregularity,
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


def default_cache_dir() -> Path:
    """``$MEDSYNTH_CACHE_DIR`` or ``~/.cache/medsynth``."""
    return Path(os.environ.get("MEDSYNTH_CACHE_DIR", "~/.cache/medsynth")).expanduser()


class _CachedDataModule(SliceDataModule):
    """Shared by the data modules of NIfTI folders: validation, the slice cache, bad cases.

    A subclass provides ``splits`` (``{"train"|"val"|"test": [case]}``, each case with
    ``case_id``, ``image`` and ``label``), ``_load(case)`` (a :class:`SliceVolume` or a problem
    string) and sets ``self.kind`` (the dataset's name in messages), ``self.cache``,
    ``self.on_bad_case``, ``self.progress`` and ``self.root``.
    """

    kind = "dataset"

    @property
    def splits(self) -> dict[str, list]:
        raise NotImplementedError

    def _load(self, case) -> SliceVolume | str:
        raise NotImplementedError

    def _all_cases(self) -> list:
        seen: dict[str, object] = {}
        for split in _SPLITS:
            for c in self.splits[split]:
                seen.setdefault(c.case_id, c)
        return list(seen.values())

    def _bad(self, entry: CacheEntry) -> None:
        if self.on_bad_case == "raise":
            raise BadCaseError(f"bad {self.kind} case {entry.case_id}: {entry.problem}")
        warnings.warn(f"skipping bad {self.kind} case {entry.case_id}: {entry.problem}", stacklevel=2)

    def prepare_data(self) -> None:
        """Validate every case and build the missing slice-cache entries (rank 0 only)."""
        cases = self._all_cases()
        by_id = {c.case_id: c for c in cases}
        keys = [(c.case_id, files_fingerprint(c.image, c.label)) for c in cases]
        fresh: set[str] = set()

        def on_built(case_id: str, entry: CacheEntry) -> None:
            fresh.add(case_id)
            if entry.problem is not None:
                self._bad(entry)

        self.cache.build(
            keys,
            lambda cid: self._load(by_id[cid]),
            progress=self.progress,
            on_built=on_built,
            info=lambda cid: {"image_file": str(by_id[cid].image), "label_file": str(by_id[cid].label)},
        )
        for case_id, fp in keys:  # cases validated by an earlier run
            if case_id not in fresh:
                entry = self.cache.load(case_id, fp)
                if entry.problem is not None:
                    self._bad(entry)

    def setup(self, stage: str | None = None) -> None:
        for split in self._splits_for(stage):
            if split in self.datasets or not self.splits[split]:
                continue
            entries = []
            for c in self.splits[split]:
                entry = self.cache.load(c.case_id, files_fingerprint(c.image, c.label))
                if entry.problem is None:
                    entries.append(entry)
                elif self.on_bad_case == "raise":
                    raise BadCaseError(f"bad {self.kind} case {entry.case_id}: {entry.problem}")
            if not entries:
                raise ValueError(f"{self.kind} {split} split at {self.root} has no usable case")
            self.datasets[split] = SliceDataset(*zip(*self._pieces(split, entries)))

    def _pieces(self, split: str, entries: list[CacheEntry]) -> list[tuple[np.ndarray, np.ndarray, str, int]]:
        """``(image, mask, case_id, first slice index)`` of every volume (or slab) in ``split``."""
        return [(e.image, e.mask, e.case_id, 0) for e in entries]


class AMOSDataModule(_CachedDataModule):
    """Axial slices of the AMOS22 CT volumes (Zhuang et al., Sec. 3).

    Splits (deterministic): fit = the CT cases of ``training`` (200 in AMOS22), the first
    ``max_train_cases`` of them. Val and test both come from the CT cases of ``validation`` in
    AMOS number order (AMOS22 labels no test set):

    - test = the first ``max_test_cases`` of them (the paper tests on 50; None: all);
    - val = the ``max_val_cases`` cases that follow the test cases (None: all that follow), so
      val and test are disjoint; when fewer than ``max_val_cases`` (or none, for None) follow,
      val falls back to the first ``max_val_cases`` of ``validation`` (None: all of them),
      which overlap the test cases. ``max_test_cases=None`` always takes this fallback.

    Whenever val and test share cases a ``UserWarning`` names how many. ``prepare_data``
    (rank 0 under DDP) validates every case and preprocesses it once into the slice cache
    (:mod:`medsynth.data.cache`); ``setup`` (every rank) opens the cache through memory maps.

    Args:
        root: The AMOS22 folder (``dataset.json``, ``imagesTr/`` ...).
        image_size: Slice size (256 in the paper).
        batch_size: Slices per batch (16 in the paper).
        num_workers: DataLoader workers.
        cache_dir: Where the slice cache lives (None: ``$MEDSYNTH_CACHE_DIR`` or
            ``~/.cache/medsynth``).
        on_bad_case: ``"raise"``: stop with an error naming the file and the problem;
            ``"skip"``: warn and leave the case out.
        max_train_cases: Use only the first N training cases (None: all).
        max_val_cases: Validation cases, taken after the test cases when enough remain (None:
            all that remain; see Splits).
        max_test_cases: Test cases, the first of ``validation`` (None: all; 50 for the paper's
            test set).
        window_level: CT window centre in HU.
        window_width: CT window width in HU.
        augment: Random flips and small affines of the training slices (see :class:`SliceDataModule`).
        progress: Show a progress bar while the cache is built.
        context_slices, context_previous: 2.5D context in every batch (see :class:`SliceDataModule`).
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 256,
        batch_size: int = 16,
        num_workers: int = 4,
        cache_dir: str | Path | None = None,
        on_bad_case: str = "raise",
        max_train_cases: int | None = None,
        max_val_cases: int | None = None,
        max_test_cases: int | None = None,
        window_level: float = WINDOW_LEVEL,
        window_width: float = WINDOW_WIDTH,
        progress: bool = True,
        augment: bool = False,
        context_slices: int = 0,
        context_previous: int = 0,
    ) -> None:
        super().__init__(
            image_size,
            batch_size,
            num_workers,
            window_level,
            window_width,
            augment,
            context_slices,
            context_previous,
        )
        if on_bad_case not in ("raise", "skip"):
            raise ValueError(f"on_bad_case must be 'raise' or 'skip', got {on_bad_case!r}")
        for name, value in (
            ("max_train_cases", max_train_cases),
            ("max_val_cases", max_val_cases),
            ("max_test_cases", max_test_cases),
        ):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.cache = SliceCache(cache_dir if cache_dir is not None else default_cache_dir(), self.config)
        self.on_bad_case = on_bad_case
        self.limits = {"train": max_train_cases, "val": max_val_cases, "test": max_test_cases}
        self.progress = progress
        self._splits: dict[str, list[AMOSCase]] | None = None

    @property
    def splits(self) -> dict[str, list[AMOSCase]]:
        """The CT cases of each split (the folder is indexed on first use)."""
        if self._splits is None:
            index = index_amos(self.root)
            self._splits = {"train": index["training"][: self.limits["train"]]}
            self._splits["test"], self._splits["val"] = self._test_val(index["validation"])
        return self._splits

    def _test_val(self, cases: list[AMOSCase]) -> tuple[list[AMOSCase], list[AMOSCase]]:
        """``(test, val)`` from the CT cases of ``validation``: val after test when enough remain."""
        n_test, n_val = self.limits["test"], self.limits["val"]
        test = cases[:n_test]
        rest = cases[len(test) :] if n_test is not None else []
        enough = len(rest) >= n_val if n_val is not None else bool(rest)
        val = rest[:n_val] if enough else cases[:n_val]
        shared = {c.case_id for c in test} & {c.case_id for c in val}
        if shared:
            why = (
                "max_test_cases=None puts every case in test"
                if n_test is None
                else f"{self.root} has {len(cases)} CT cases in `validation`, too few for "
                f"max_test_cases={n_test} followed by max_val_cases={n_val}"
            )
            warnings.warn(
                f"AMOS22 val and test share {len(shared)} of the {len(val)} val cases ({why}); "
                "set max_test_cases and max_val_cases to keep them apart",
                stacklevel=3,
            )
        return test, val

    kind = "AMOS22"

    def _load(self, case: AMOSCase) -> SliceVolume | str:
        return load_checked(case, self.config)


class NNUNetDataModule(_CachedDataModule):
    """Axial slices of any nnU-Net v2 raw dataset, in any label set.

    Splits (deterministic): train = the ``imagesTr`` cases minus the validation ones; val =
    ``num_val_cases`` cases of ``imagesTr`` chosen by hash (:func:`medsynth.data.nnunet.validation_cases`;
    default 10%, at least 1 when there are two or more cases); test = ``imagesTs/labelsTs`` when
    present, else the validation cases (a UserWarning says so). Preprocessing, the slice cache,
    validation and bad-case handling are the AMOS module's; the body class is derived exactly
    as there and gets the label set's body id.

    Args:
        root: The dataset folder (``dataset.json``, ``imagesTr/``, ``labelsTr/`` ...).
        label_set: The training label set (``"amos"``, ``"totalseg"``, a dataset.json path); None:
            the dataset's own (its dataset.json ``labels``, body appended).
        image_size: Slice size.
        batch_size: Slices per batch.
        num_workers: DataLoader workers.
        cache_dir: Slice cache location (None: ``$MEDSYNTH_CACHE_DIR`` or ``~/.cache/medsynth``).
        on_bad_case: ``"raise"`` or ``"skip"`` (warn and leave the case out).
        remap: How the dataset's labels become ``label_set``'s when the two differ: ``"by_name"``
            (classes matched by name or TotalSegmentator name, unmatched ones become body) or a
            ``{dataset name: label_set name}`` dict of extra pairs on top of that.
        num_val_cases: Validation cases taken from imagesTr (None: 10%, at least 1; must be None
            or 0 with ``test_slab``).
        max_train_cases: Use only the first N training cases (None: all).
        progress: Show a progress bar while the cache is built.
        window_level, window_width: The CT window in HU (the paper's 40/400; see
            :class:`SliceDataModule`).
        augment: Random flips and small affines of the training slices (see :class:`SliceDataModule`).
        test_slab: ``(start, stop)``: split along z instead of by case, for one patient or a few.
            The axial slices ``start..stop-1`` (canonical indices, 0 = most inferior) of every
            imagesTr case are the val and test splits; training gets the slices below
            ``start - slab_gap`` and from ``stop + slab_gap`` on. imagesTs is then not used.
            :func:`medsynth.data.nnunet.organ_slab` finds the smallest slab holding given organs.
        slab_gap: Slices left out on both sides of ``test_slab`` (4): neighbouring slices are
            nearly copies of each other, so a slab without a gap is no held-out test. With 2.5D
            context the left-out slices are missing neighbours (flagged), as at a volume's end.
        context_slices, context_previous: 2.5D context in every batch (see :class:`SliceDataModule`).
    """

    kind = "nnU-Net"

    def __init__(
        self,
        root: str | Path,
        label_set: str | None = None,
        image_size: int = 256,
        batch_size: int = 16,
        num_workers: int = 4,
        cache_dir: str | Path | None = None,
        on_bad_case: str = "raise",
        remap: str | dict[str, str] | None = None,
        num_val_cases: int | None = None,
        max_train_cases: int | None = None,
        progress: bool = True,
        window_level: float = WINDOW_LEVEL,
        window_width: float = WINDOW_WIDTH,
        test_slab: tuple[int, int] | None = None,
        slab_gap: int = 4,
        augment: bool = False,
        context_slices: int = 0,
        context_previous: int = 0,
    ) -> None:
        from medsynth.data.nnunet import read_dataset_json
        from medsynth.labels import get_label_set

        super().__init__(
            image_size,
            batch_size,
            num_workers,
            window_level,
            window_width,
            augment,
            context_slices,
            context_previous,
        )
        if on_bad_case not in ("raise", "skip"):
            raise ValueError(f"on_bad_case must be 'raise' or 'skip', got {on_bad_case!r}")
        for name, value in (("num_val_cases", num_val_cases), ("max_train_cases", max_train_cases)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
        if test_slab is not None:
            test_slab = tuple(test_slab)
            if len(test_slab) != 2 or not all(isinstance(v, int) for v in test_slab):
                raise ValueError(f"test_slab must be two ints (start, stop), got {test_slab!r}")
            if not 0 <= test_slab[0] < test_slab[1]:
                raise ValueError(
                    f"test_slab=({test_slab[0]}, {test_slab[1]}) holds no slice: it needs 0 <= start < stop"
                )
            if num_val_cases:
                raise ValueError(
                    f"num_val_cases={num_val_cases} with test_slab: the slab is the val and test split; "
                    "leave num_val_cases out"
                )
        if not isinstance(slab_gap, int) or slab_gap < 0:
            raise ValueError(f"slab_gap must be an int >= 0, got {slab_gap!r}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"nnU-Net dataset {str(self.root)!r} does not exist or is not a folder")
        declared = read_dataset_json(self.root)["labels"]
        # Largest id the label files may hold: what dataset.json declares (the body only if declared).
        self.file_max_label = max(
            int(k if isinstance(v, str) and not v.isdigit() else v) for k, v in declared.items()
        )
        self.source_set = get_label_set(self.root / "dataset.json")
        self.label_set = get_label_set(label_set) if label_set is not None else self.source_set
        lut = None
        if self.label_set.names() != self.source_set.names():
            if remap is None:
                raise ValueError(
                    f"the labels of {self.root / 'dataset.json'} ({len(self.source_set.classes)} classes) "
                    f"differ from label_set {self.label_set.name!r}; pass remap='by_name' (or a "
                    f"{{dataset name: label_set name}} dict) to map them by name"
                )
            extra = None if remap == "by_name" else remap
            if extra is not None and not isinstance(extra, dict):
                raise ValueError(f"remap must be None, 'by_name' or a dict, got {remap!r}")
            lut = tuple(int(v) for v in self.source_set.lookup_to(self.label_set, extra))
        elif remap not in (None, "by_name"):
            raise ValueError("remap is given but the dataset's labels already are label_set's")
        self.config = dataclasses.replace(
            self.config,
            body_label=self.label_set.body,
            max_label=self.label_set.num_classes - 1,
            label_lut=lut,
        )
        self.cache = SliceCache(cache_dir if cache_dir is not None else default_cache_dir(), self.config)
        self.on_bad_case = on_bad_case
        self.num_val_cases = num_val_cases
        self.max_train_cases = max_train_cases
        self.progress = progress
        self.test_slab = test_slab
        self.slab_gap = slab_gap
        self._splits: dict | None = None

    @property
    def num_classes(self) -> int:
        return self.label_set.num_classes

    @property
    def splits(self) -> dict[str, list]:
        from medsynth.data.nnunet import index_nnunet, validation_cases

        if self._splits is None and self.test_slab is not None:
            index = index_nnunet(self.root)
            if index["test"]:
                warnings.warn(
                    f"{self.root}: test_slab is set, so the val and test splits are that slab of the "
                    f"imagesTr cases; the {len(index['test'])} imagesTs case(s) are not used",
                    stacklevel=3,
                )
            cases = index["training"][: self.max_train_cases]
            self._splits = {"train": cases, "val": cases, "test": cases}
        if self._splits is None:
            index = index_nnunet(self.root)
            cases = index["training"]
            n = len(cases)
            n_val = (
                self.num_val_cases
                if self.num_val_cases is not None
                else (max(1, round(0.1 * n)) if n > 1 else 0)
            )
            if n_val >= n:
                raise ValueError(f"num_val_cases={n_val} leaves no training case of the {n} in {self.root}")
            val_ids = validation_cases([c.case_id for c in cases], n_val)
            train = [c for c in cases if c.case_id not in val_ids][: self.max_train_cases]
            val = [c for c in cases if c.case_id in val_ids]
            test = index["test"]
            if not test and val:
                warnings.warn(
                    f"{self.root} has no imagesTs/labelsTs: the test split is the {len(val)} validation case(s)",
                    stacklevel=3,
                )
                test = val
            self._splits = {"train": train, "val": val, "test": test}
        return self._splits

    def _load(self, case) -> SliceVolume | str:
        problem = load_checked(case, self.config, self.file_max_label)
        if isinstance(problem, str) and "label values outside" in problem:
            problem += (
                f"; {self.root / 'dataset.json'} declares ids 0..{self.file_max_label}. A label volume "
                "from another TotalSegmentator version (or another tool) numbers its structures "
                "differently: rebuild the dataset with `medsynth dataset --names <that volume's "
                "id -> name table>` and train with remap='by_name'"
            )
        return problem

    def _pieces(self, split: str, entries: list[CacheEntry]) -> list[tuple[np.ndarray, np.ndarray, str, int]]:
        if self.test_slab is None:
            return super()._pieces(split, entries)
        start, stop = self.test_slab
        out = []
        for e in entries:
            depth = len(e.image)
            if stop > depth:
                raise ValueError(
                    f"test_slab=({start}, {stop}) reaches past the {depth} slices of case {e.case_id} "
                    f"({self.root})"
                )
            if split == "train":
                lo, hi = max(0, start - self.slab_gap), min(depth, stop + self.slab_gap)
                out += [(e.image[a:b], e.mask[a:b], e.case_id, a) for a, b in ((0, lo), (hi, depth)) if b > a]
            else:
                out.append((e.image[start:stop], e.mask[start:stop], e.case_id, start))
        if not out:
            raise ValueError(
                f"test_slab=({start}, {stop}) with slab_gap={self.slab_gap} leaves no training slice "
                f"in {self.root}"
            )
        return out
