"""Reflow data (:mod:`medsynth.reflow`): the pairs file of a rectified flow's (noise, sample) pairs,
its training items, and a data module that trains on them and validates, tests and predicts on the
real data the flow was trained on.

The pairs are small: the sample, the mask and one 63-bit seed per pair. The noise is redrawn from
the seed on the CPU, exactly as :func:`medsynth.diffusion.sample` drew it (:func:`pair_noise`), so a
pair is the flow's map of its noise bit for bit, whatever device made it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from medsynth.data.config import build_datamodule
from medsynth.random import randn, slice_seed

__all__ = [
    "PAIRS_FORMAT",
    "ReflowDataModule",
    "ReflowPairDataset",
    "ReflowPairs",
    "load_pairs",
    "pair_generators",
    "pair_noise",
    "pair_seed",
    "save_pairs",
]

#: The ``format`` entry of a pairs file, and its version.
PAIRS_FORMAT = "medsynth-reflow-pairs"
PAIRS_VERSION = 1
#: How a missing pairs file is made (named in the error).
MAKE_PAIRS = "medsynth reflow --checkpoint <the flow's checkpoint> --data_config <its config> --output <file>"


def pair_seed(case_id: str, slice_index: int, seed: int, copy: int) -> int:
    """The noise seed of copy ``copy`` of a training slice (independent of order, batch and device)."""
    return slice_seed(f"{case_id}\x00reflow{int(copy)}", int(slice_index), int(seed))


def pair_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per pair seed: what the pairs are generated with (CPU, so the noise can
    be redrawn on any machine)."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def pair_noise(seeds: Sequence[int], shape: Sequence[int]) -> Tensor:
    """The noise ``[B, *shape]`` (float32, CPU) that :func:`medsynth.diffusion.sample` draws first
    when given :func:`pair_generators` of ``seeds``."""
    return randn((len(seeds), *shape), pair_generators(seeds), "cpu")


@dataclass
class ReflowPairs:
    """Pairs of a rectified flow: ``images[i] = flow(pair_noise([seeds[i]]) | masks[i])``.

    Attributes:
        images: ``[N, 1, H, W]`` float32 in [0, 1]: the flow's samples.
        masks: ``[N, H, W]`` int64 label maps they were generated from.
        seeds: ``[N]`` int64: the noise of pair ``i`` is ``pair_noise([seeds[i]], (1, H, W))``.
        keys: ``(case_id, slice_index)`` of the training slice of each pair.
        meta: How they were made: method, checkpoint, sampler, num_steps, seed, copies, label_set,
            image_size, window, data (the ``data:`` sections of the training config).
    """

    images: Tensor
    masks: Tensor
    seeds: Tensor
    keys: list[tuple[str, int]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dim() != 4 or self.images.shape[1] != 1:
            raise ValueError(f"images must be [N, 1, H, W], got {tuple(self.images.shape)}")
        if self.masks.shape != (n, *self.images.shape[2:]):
            raise ValueError(
                f"masks {tuple(self.masks.shape)} do not match images {tuple(self.images.shape)}"
            )
        if self.seeds.shape != (n,) or len(self.keys) != n:
            raise ValueError(f"{n} images but {tuple(self.seeds.shape)} seeds and {len(self.keys)} keys")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def noise(self, index: Sequence[int] | Tensor) -> Tensor:
        """The noise ``[B, 1, H, W]`` of pairs ``index``."""
        return pair_noise([int(self.seeds[i]) for i in index], self.images.shape[1:])


def save_pairs(pairs: ReflowPairs, path: str | Path) -> Path:
    """Write ``pairs`` to ``path`` atomically (a temporary file, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    masks = (
        pairs.masks.to(torch.uint8)
        if pairs.masks.numel() == 0 or int(pairs.masks.max()) < 256
        else pairs.masks
    )
    state = {
        "format": PAIRS_FORMAT,
        "version": PAIRS_VERSION,
        "images": pairs.images.float(),
        "masks": masks,
        "seeds": pairs.seeds,
        "keys": [list(k) for k in pairs.keys],
        "meta": dict(pairs.meta),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_pairs(path: str | Path) -> ReflowPairs:
    """Read a pairs file of :func:`save_pairs`.

    Raises:
        FileNotFoundError: naming the file and the command that makes it.
        ValueError: naming the file when it is not a readable pairs file of this version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reflow pairs not found: {path} (make them with `{MAKE_PAIRS}`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: not a readable reflow pairs file ({err})") from err
    if not isinstance(state, dict) or state.get("format") != PAIRS_FORMAT:
        raise ValueError(f"{path}: not a reflow pairs file (made by `{MAKE_PAIRS}`)")
    if state.get("version") != PAIRS_VERSION:
        raise ValueError(
            f"{path}: pairs file version {state.get('version')!r}, this medsynth reads {PAIRS_VERSION}"
        )
    try:
        return ReflowPairs(
            images=state["images"].float(),
            masks=state["masks"].long(),
            seeds=state["seeds"].long(),
            keys=[(str(c), int(k)) for c, k in state["keys"]],
            meta=dict(state.get("meta", {})),
        )
    except (KeyError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: a damaged reflow pairs file ({err})") from err


class ReflowPairDataset(Dataset):
    """Training items of the pairs: the sample as ``image``, its ``mask`` and its ``noise``
    (redrawn from the seed), with the training slice's ``case_id`` and ``slice_index``."""

    def __init__(self, pairs: ReflowPairs) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, j: int) -> dict[str, Any]:
        case_id, slice_index = self.pairs.keys[j]
        return {
            "image": self.pairs.images[j],  # [1, H, W] in [0, 1]
            "mask": self.pairs.masks[j],  # [H, W] int64
            "noise": self.pairs.noise([j])[0],  # [1, H, W]
            "case_id": case_id,
            "slice_index": torch.tensor(slice_index, dtype=torch.int64),
        }


class ReflowDataModule(L.LightningDataModule):
    """Training batches from a pairs file of ``medsynth reflow``; the other splits from the data
    module the pairs' flow was trained on (so validation metrics compare with real slices).

    A training batch holds the flow's sample as ``image``, its ``mask`` and the ``noise`` it was
    made from; a rectified flow trains on that coupling (reflow, Liu et al. 2023) instead of
    drawing new noise. Nothing is augmented: a flipped sample is not the map of the same noise.

    Args:
        pairs: The pairs file (``medsynth reflow --output``).
        image_size: The slices' size; must be the pairs' (the CLI links it to the model's).
        batch_size: Pairs per training batch.
        num_workers: DataLoader worker processes of the training loader.
        data_config: A config whose ``data:`` section gives the real data (val/test/predict);
            None: the sections recorded in the pairs file (the config they were made with).
    """

    def __init__(
        self,
        pairs: str | Path,
        image_size: int,
        batch_size: int = 16,
        num_workers: int = 0,
        data_config: str | Path | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.pairs_path = Path(pairs)
        self.pairs = load_pairs(self.pairs_path)  # a missing or damaged file is named here
        if image_size != self.pairs.image_size:
            raise ValueError(
                f"image_size {image_size!r} is not the pairs' ({self.pairs.image_size}, {self.pairs_path})"
            )
        sections = self.pairs.meta.get("data")
        if data_config is None and not sections:
            raise ValueError(f"{self.pairs_path} records no data config: give data_config")
        #: The real data: validation, test and predict splits, label set and CT window.
        self.data = build_datamodule(data_config if data_config is not None else sections)
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        for what, mine, theirs in (
            ("image_size", getattr(self.data, "image_size", image_size), image_size),
            ("label set", getattr(getattr(self.data, "label_set", None), "name", None), self.pairs.meta.get("label_set")),
            ("CT window", list(getattr(self.data, "window", ())), self.pairs.meta.get("window")),
        ):  # fmt: skip
            if theirs is not None and mine != theirs:
                raise ValueError(
                    f"the real data has {what} {mine!r}, the pairs of {self.pairs_path} {theirs!r}: give the "
                    "data_config the pairs' flow was trained with"
                )

    @property
    def label_set(self) -> Any:
        return getattr(self.data, "label_set", None)

    @property
    def window(self) -> tuple[float, float]:
        return tuple(self.data.window)

    #: No 2.5D context: the flows reflow trains are 2D.
    context = None

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.data.setup(stage)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            ReflowPairDataset(self.pairs),
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> Any:
        return self.data.val_dataloader()

    def test_dataloader(self) -> Any:
        return self.data.test_dataloader()

    def predict_dataloader(self) -> Any:
        return self.data.predict_dataloader()
