"""The paper's evaluation as a Lightning callback, exact on one or many processes.

Zhuang et al., Sec. 4: every test slice is synthesised from its mask and compared with the real
slice (FID, PSNR, SSIM); learned correspondence is scored by segmenting the synthetic slices and
comparing with the input mask (Dice). Here the segmenter is the in-domain
:class:`medsynth.models.OrganSegmenter` (TotalSegmentator on volumes is
:class:`medsynth.metrics.TotalSegmentatorScorer`).

Beyond the paper: the Fréchet Radiomics Distance (:mod:`medsynth.metrics.frd`, no download),
a memorization check (:mod:`medsynth.metrics.memorization`: nearest training slices) and organ
statistics in HU (:func:`medsynth.metrics.intensity.compare_hu_statistics`).

Exactness under DDP: Lightning's DistributedSampler pads the validation/test sets with repeated
samples so that every process gets the same number. The callback keeps one record per slice,
keyed by ``(case_id, slice_index)``, gathers all records at the end of the epoch and drops
duplicates, so every slice counts exactly once. A record holds what the metrics need of its
slice (PSNR/SSIM, Inception and radiomics features, Dice counts, HU histograms,
nearest-training distances), each a function of that slice alone; set-level values (FID, FRD,
medians, copy rates) are computed from all records in sorted key order. Each batch is
generated in one call with one ``torch.Generator`` per slice, seeded by ``(case_id,
slice_index, seed)``, so a slice's noise and the values do not depend on the number of
processes, the batch a slice is in or the batch size.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from medsynth.data.context import SliceContext, batch_context
from medsynth.data.geometry import WINDOW_LEVEL, WINDOW_WIDTH
from medsynth.diffusion import check_sampler
from medsynth.io import atomic_path
from medsynth.labels import NUM_CLASSES, PAPER_DICE_ORDER, get_label_set
from medsynth.metrics.dice import dice_counts, dice_from_counts
from medsynth.metrics.frd import check_frd_available, frd_from_features, radiomics_features
from medsynth.metrics.image import (
    InceptionFeatures,
    find_inception_weights,
    frechet_distance,
    psnr_per_image,
    ssim_per_image,
)
from medsynth.metrics.intensity import compare_hu_statistics, hu_bins, hu_histogram
from medsynth.metrics.memorization import NearestNeighbors, memorization_summary, pixel_vectors
from medsynth.models.base import check_batch
from medsynth.precision import trainer_precision
from medsynth.random import slice_generators, slice_seed

__all__ = [
    "SynthesisMetrics",
    "slice_seed",
    "slice_generators",
    "METRICS",
    "PAPER_METRICS",
    "FAST_DEV_RUN_STEPS",
    "dev_run_options",
    "check_callback_samplers",
]

#: Every metric name the callback knows.
METRICS: tuple[str, ...] = ("psnr", "ssim", "fid", "dice", "frd", "memorization", "hu")
#: The default: the paper's metrics (Zhuang et al., Sec. 4).
PAPER_METRICS: tuple[str, ...] = ("psnr", "ssim", "fid", "dice")
SliceKey = tuple[str, int]
#: Training slices per batch while the memorization check streams the training set.
TRAIN_SCAN_BATCH = 64
#: Sampling steps of the callbacks under ``Trainer(fast_dev_run=...)``: it checks the code path, not quality.
FAST_DEV_RUN_STEPS = 2


def dev_run_options(trainer: L.Trainer | None, pl_module: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for ``generate()``, with ``num_steps`` cut to :data:`FAST_DEV_RUN_STEPS` under
    ``fast_dev_run`` for a method that takes ``num_steps`` (None there means its full chain)."""
    if trainer is None or not getattr(trainer, "fast_dev_run", False):
        return options
    if "num_steps" not in getattr(pl_module, "generate_options", ()):
        return options
    steps = options.get("num_steps")
    return {**options, "num_steps": FAST_DEV_RUN_STEPS if steps is None else min(steps, FAST_DEV_RUN_STEPS)}


def check_callback_samplers(callback: Callback, pl_module: Any, **samplers: str | None) -> None:
    """Raise a ValueError at setup, before any training, when a sampler a callback will pass to
    ``generate()`` is not one of the model's process (a DDPM sampler for a rectified flow, or the
    reverse); the message names the callback, the argument and the process's samplers."""
    process = getattr(pl_module, "diffusion", None)
    if process is None or "sampler" not in getattr(pl_module, "generate_options", ()):
        return
    for name, sampler in samplers.items():
        if sampler is not None:
            try:
                check_sampler(process, sampler)
            except ValueError as err:
                raise ValueError(f"{type(callback).__name__}({name}={sampler!r}): {err}") from None


def _unit_hash(key: SliceKey, seed: int) -> float:
    """Deterministic number in [0, 1) per slice, used to pick the validation subset."""
    return slice_seed(key[0], key[1], seed + 7919) / float(1 << 63)


class SynthesisMetrics(Callback):
    """Generate every validation/test slice from its mask and log the paper's metrics.

    Logs ``val/...`` or ``test/...``: ``psnr``, ``ssim``, ``fid``, ``dice/<organ>`` for every
    organ present, and ``dice/mean`` (mean over the present organs among the paper's 14 Dice
    columns, i.e. without prostate/uterus). Dice pools the voxel counts of
    all scored slices (a split-level Dice per organ). Under ``Trainer(fast_dev_run=...)``
    diffusion models sample with :data:`FAST_DEV_RUN_STEPS` steps (a code check, not a score).
    A 2.5D model is given each slice's context from the batch, i.e. the real neighbours and
    previous slices (teacher forcing); volumes made in order are scored by benchmarks/volumes.py.

    - ``frd``: FRD v1 of the synthetic slices against the real ones (real = reference).
    - ``hu/<class>/real_median``, ``real_q1``, ``real_q3``, ``synthetic_median``,
      ``synthetic_q1``, ``synthetic_q3``, ``median_error`` (HU), ``median_error_window`` for
      every class present but background, both inside the slice's mask (from 1-HU histograms:
      exact to whole HU).
    - ``memorization/<space>/copy_rate``, ``threshold``, ``synthetic_qNN``, ``real_qNN`` for
      ``space`` = ``pixel`` and, with a segmenter, ``feature``
      (:func:`~medsynth.metrics.memorization.memorization_summary`). At the end of the epoch
      every process streams the whole training set once in order to find each of its slices'
      nearest training slices (synthetic and real).

    Args:
        metrics: Any of "psnr", "ssim", "fid", "dice", "frd" (needs ``pip install
            'medsynth[frd]'``), "memorization", "hu".
        num_steps: ``generate(num_steps=...)`` at test time (None: the method's default).
        sampler: ``generate(sampler=...)`` at test time.
        guidance_scale: ``generate(guidance_scale=...)`` (validation and test).
        segmenter: An :class:`~medsynth.models.OrganSegmenter` or the path of its checkpoint
            (required for "dice"; with "memorization" it adds the feature space).
        fid_weights: clean-fid's ``inception-2015-12-05.pt`` (file or folder); None searches
            clean-fid's cache folder. Checked when the callback is built.
        feature_extractor: Replaces the Inception network: ``[B, 1, H, W]`` in [0, 1] -> ``[B, D]``.
        val_num_steps: ``num_steps`` during validation (a cheap setting while training);
            None uses ``num_steps``.
        val_sampler: ``sampler`` during validation; None uses ``sampler``.
        val_fraction: Fraction of validation slices scored, chosen by a hash of
            ``(case_id, slice_index)``: the same slices whatever the number of processes.
        max_val_batches: Stop scoring after this many validation batches per process (cheap,
            but the subset then depends on the number of processes); None: no limit.
        max_test_batches: The same for testing; None (default) scores the complete test set.
        seed: Base seed of the per-slice noise.
        fid_cache_dir: Folder caching real-image Inception features per split (key: split
            identity and feature extractor); None keeps them in memory only.
        fid_cache_key: Identity of the data for the cache; None derives it from the data
            module's class and hyperparameters (no disk cache when it has none).
        window: ``(level, width)`` in HU of the slices' window, for "hu" and "frd"; None: the
            model's ``window`` (checked equal to the data's at fit), else the data module's, else
            the paper's 40 / 400.
        train_data: The training slices for "memorization": a dataset of dicts with ``image``
            or a data module (its ``train_dataloader().dataset``); None: the trainer's data
            module.
    """

    def __init__(
        self,
        metrics: Sequence[str] = PAPER_METRICS,
        num_steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        segmenter: L.LightningModule | str | os.PathLike | None = None,
        fid_weights: str | os.PathLike | None = None,
        feature_extractor: Callable[[Tensor], Tensor] | None = None,
        val_num_steps: int | None = None,
        val_sampler: str | None = None,
        val_fraction: float = 1.0,
        max_val_batches: int | None = None,
        max_test_batches: int | None = None,
        seed: int = 0,
        fid_cache_dir: str | os.PathLike | None = None,
        fid_cache_key: str | None = None,
        window: tuple[float, float] | None = None,
        train_data: Any = None,
    ) -> None:
        super().__init__()
        metrics = tuple(metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {metrics!r}")
        if not 0.0 < val_fraction <= 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1], got {val_fraction!r}")
        for name, value in (("max_val_batches", max_val_batches), ("max_test_batches", max_test_batches)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        self.check_inputs(metrics, segmenter, fid_weights, feature_extractor)
        if window is not None:
            hu_bins(window)  # ValueError naming a bad window
        self.metrics = metrics
        self.num_steps, self.sampler, self.guidance_scale = num_steps, sampler, guidance_scale
        self.val_num_steps = num_steps if val_num_steps is None else val_num_steps
        self.val_sampler = sampler if val_sampler is None else val_sampler
        self.val_fraction = float(val_fraction)
        self.max_batches = {"val": max_val_batches, "test": max_test_batches}
        self.seed = int(seed)
        self.fid_weights = fid_weights
        self.fid_cache_dir = None if fid_cache_dir is None else Path(fid_cache_dir)
        self.fid_cache_key = fid_cache_key
        self._segmenter_arg = segmenter
        self.segmenter: L.LightningModule | None = None
        self.feature_extractor = feature_extractor
        self.window = None if window is None else (float(window[0]), float(window[1]))
        self.train_data = train_data
        self._window = self.window or (WINDOW_LEVEL, WINDOW_WIDTH)
        self._train_dataset: Any = None
        self._frd_memo: dict[str, dict[SliceKey, np.ndarray]] = {}
        self._queries: dict[SliceKey, dict[str, Tensor]] = {}  # memorization: images, features
        self._records: dict[SliceKey, dict[str, Any]] = {}
        self._real_memo: dict[str, dict[SliceKey, np.ndarray]] = {}
        self._real_dirty: set[str] = set()
        #: The last computed values per stage, e.g. ``results["test"]["psnr"]``.
        self.results: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ setup

    @staticmethod
    def check_inputs(
        metrics: Sequence[str],
        segmenter: Any = None,
        fid_weights: str | os.PathLike | None = None,
        feature_extractor: Any = None,
    ) -> None:
        """The files and packages ``metrics`` need: a FileNotFoundError/ValueError naming the missing
        one (the segmenter checkpoint, the Inception weights, frd-score), before any sampling."""
        if "dice" in metrics and segmenter is None:
            raise ValueError(
                "metrics include 'dice' but segmenter is None: pass an OrganSegmenter or its checkpoint"
            )
        if isinstance(segmenter, (str, os.PathLike)) and not Path(segmenter).is_file():
            raise FileNotFoundError(f"segmenter checkpoint not found: {segmenter}")
        if "fid" in metrics and feature_extractor is None:
            find_inception_weights(fid_weights)  # fail now, not after hours of sampling
        if "frd" in metrics:
            check_frd_available()

    @classmethod
    def check_config(cls, init_args: Mapping[str, Any]) -> None:
        """:meth:`check_inputs` on a config's ``init_args`` (the CLI calls it before building
        anything: :func:`medsynth.configs.check_callback_inputs`)."""
        metrics = init_args.get("metrics")
        cls.check_inputs(
            tuple(PAPER_METRICS if metrics is None else metrics),
            init_args.get("segmenter"),
            init_args.get("fid_weights"),
            init_args.get("feature_extractor"),
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_callback_samplers(self, pl_module, sampler=self.sampler, val_sampler=self.val_sampler)
        device = pl_module.device
        if "fid" in self.metrics and self.feature_extractor is None:
            self.feature_extractor = InceptionFeatures(self.fid_weights, device=device)
        wants_segmenter = "dice" in self.metrics or "memorization" in self.metrics
        if wants_segmenter and self.segmenter is None and self._segmenter_arg is not None:
            seg = self._segmenter_arg
            if isinstance(seg, (str, os.PathLike)):
                from medsynth.models.segmenter import OrganSegmenter

                seg = OrganSegmenter.load_from_checkpoint(str(seg), map_location="cpu")
            for method, metric in (("segment", "dice"), ("bottleneck_features", "memorization")):
                if metric in self.metrics and not callable(getattr(seg, method, None)):
                    raise TypeError(f"segmenter must have a {method}(image) method, got {type(seg).__name__}")
            self.segmenter = seg
        if self.segmenter is not None:
            self.segmenter.to(device).eval().requires_grad_(False)

    # ------------------------------------------------------------------ per batch
    def _split_id(self, trainer: L.Trainer, stage: str, feature_id: str | None = None) -> str | None:
        """Identity of ``stage``'s real slices and a feature extractor (default: the FID one)."""
        feature_id = feature_id or getattr(self.feature_extractor, "feature_id", None)
        if feature_id is None:
            return None
        if self.fid_cache_key is not None:
            data_id = self.fid_cache_key
        else:
            dm = getattr(trainer, "datamodule", None)
            hp = dict(getattr(dm, "hparams", {}) or {})
            if dm is None or not hp:
                return None
            data_id = (
                f"{type(dm).__module__}.{type(dm).__qualname__}:{sorted((k, repr(v)) for k, v in hp.items())}"
            )
        return f"{data_id}|{stage}|{feature_id}"

    def _cache_file(self, split_id: str) -> Path:
        assert self.fid_cache_dir is not None
        digest = hashlib.sha256(split_id.encode()).hexdigest()[:24]
        return self.fid_cache_dir / f"fid_real_features_{digest}.pt"

    def _real_features(self, trainer: L.Trainer, stage: str) -> dict[SliceKey, np.ndarray]:
        split_id = self._split_id(trainer, stage) or f"<memory>|{stage}"
        if split_id not in self._real_memo:
            memo: dict[SliceKey, np.ndarray] = {}
            if self.fid_cache_dir is not None and not split_id.startswith("<memory>"):
                path = self._cache_file(split_id)
                if path.is_file():
                    data = torch.load(path, weights_only=False)
                    if data.get("split_id") == split_id:
                        memo = {tuple(k): v for k, v in zip(data["keys"], data["features"])}
            self._real_memo[split_id] = memo
        self._current_split = split_id
        return self._real_memo[split_id]

    def _reset(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._records = {}
        for net in (self.feature_extractor, self.segmenter):  # setup() runs before the model moves
            if isinstance(net, torch.nn.Module):
                net.to(pl_module.device)
        if "fid" in self.metrics:
            self._real_features(trainer, stage)
        dm = getattr(trainer, "datamodule", None)
        config = getattr(dm, "config", None)
        if self.window is None:  # the model's window (its images' units), else the data module's
            window = getattr(pl_module, "window", None) or getattr(dm, "window", None)
            if window is None and hasattr(config, "window_level") and hasattr(config, "window_width"):
                window = (config.window_level, config.window_width)
            if window is not None:
                self._window = (float(window[0]), float(window[1]))
        self._queries = {}
        if "memorization" in self.metrics and self._train_dataset is None:
            self._train_dataset = self._training_slices(dm)  # fail before any sampling

    def _training_slices(self, dm: Any) -> Any:
        """The dataset of training slices for the memorization check (``train_data`` or ``dm``)."""
        source = self.train_data if self.train_data is not None else dm
        if source is None:
            raise ValueError(
                "metrics include 'memorization' but there are no training slices: pass train_data= "
                "(a dataset or data module) or run with a data module that has a training split"
            )
        if isinstance(source, L.LightningDataModule):
            try:
                source = source.train_dataloader().dataset
            except Exception as err:
                raise ValueError(
                    f"metrics include 'memorization' but {type(source).__name__} has no training split: {err}"
                ) from err
        from medsynth.data.augment import stored_slices

        source = stored_slices(source)  # copies are judged against the slices as stored
        if len(source) == 0:
            raise ValueError("metrics include 'memorization' but the training set is empty")
        return source

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset(trainer, pl_module, "test")

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._score_batch(trainer, pl_module, batch, batch_idx, "val")

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._score_batch(trainer, pl_module, batch, batch_idx, "test")

    def _generate(
        self,
        pl_module: L.LightningModule,
        mask: Tensor,
        keys: list[SliceKey],
        stage: str,
        context: SliceContext | None = None,
    ) -> Tensor:
        options = {
            "num_steps": self.val_num_steps if stage == "val" else self.num_steps,
            "sampler": self.val_sampler if stage == "val" else self.sampler,
            "guidance_scale": self.guidance_scale,
        }
        options = dev_run_options(getattr(pl_module, "_trainer", None), pl_module, options)
        # One generator per slice: batched, yet each slice's noise is independent of its batch.
        gens = slice_generators(keys, self.seed, pl_module.device)
        with trainer_precision(pl_module.trainer):  # the trainer's autocast: Lightning's skips callbacks
            return pl_module.generate(mask, generator=gens, context=context, **options)  # [n, 1, H, W]

    @torch.no_grad()
    def _score_batch(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, stage: str
    ) -> None:
        limit = self.max_batches[stage]
        if limit is not None and batch_idx >= limit:
            return
        if not isinstance(batch, Mapping) or "case_id" not in batch or "slice_index" not in batch:
            raise KeyError(
                "SynthesisMetrics needs dict batches with 'image', 'mask', 'case_id' and 'slice_index'"
            )
        image, mask = check_batch(batch, getattr(pl_module, "num_classes", NUM_CLASSES))
        case_ids = batch["case_id"]
        slice_idx = torch.as_tensor(batch["slice_index"]).reshape(-1).tolist()
        keys_all = [(str(c), int(s)) for c, s in zip(case_ids, slice_idx)]
        rows = []
        for i, key in enumerate(keys_all):
            if key in self._records or key in [keys_all[r] for r in rows]:
                continue  # padded duplicate on this process
            if stage == "val" and self.val_fraction < 1.0 and _unit_hash(key, self.seed) >= self.val_fraction:
                continue
            rows.append(i)
        if not rows:
            return
        keys = [keys_all[i] for i in rows]
        real = image[rows].to(pl_module.device)  # [n, 1, H, W]
        m = mask[rows].to(pl_module.device)  # [n, H, W]
        # A 2.5D model gets the batch's context: the real neighbours and previous slices (teacher forcing).
        context = batch_context(pl_module, batch, rows)
        fake = self._generate(pl_module, m, keys, stage, context).float()  # [n, 1, H, W]
        recs: list[dict[str, Any]] = [{} for _ in keys]
        if "psnr" in self.metrics or "ssim" in self.metrics:
            f64, r64 = fake.double().cpu(), real.double().cpu()
            for j in range(len(keys)):  # one image at a time: independent of batch composition
                if "psnr" in self.metrics:
                    recs[j]["psnr"] = float(psnr_per_image(f64[j : j + 1], r64[j : j + 1])[0])
                if "ssim" in self.metrics:
                    recs[j]["ssim"] = float(ssim_per_image(f64[j : j + 1], r64[j : j + 1])[0])
        if "fid" in self.metrics:
            memo = self._real_memo[self._current_split]
            fake_feats = self.feature_extractor(fake).detach().double().cpu().numpy()  # [n, D]
            missing = [j for j, k in enumerate(keys) if k not in memo]
            if missing:
                real_feats = self.feature_extractor(real[missing]).detach().double().cpu().numpy()
                for j, f in zip(missing, real_feats):
                    memo[keys[j]] = f.astype(np.float32)
                self._real_dirty.add(self._current_split)
            for j, k in enumerate(keys):
                recs[j]["fake"] = fake_feats[j].astype(np.float32)
                recs[j]["real"] = memo[k]
        labels = getattr(pl_module, "label_set", None) or get_label_set("amos")
        self._label_set = labels
        if "frd" in self.metrics:
            memo = self._frd_memo.setdefault(
                self._split_id(trainer, stage, f"frd-v1|window={self._window}") or f"<memory>|{stage}", {}
            )
            fake_rad = radiomics_features(fake, self._window)  # [n, D]
            missing = [j for j, k in enumerate(keys) if k not in memo]
            if missing:
                for j, f in zip(missing, radiomics_features(real[missing], self._window)):
                    memo[keys[j]] = f
            for j, k in enumerate(keys):
                recs[j]["frd_fake"], recs[j]["frd_real"] = fake_rad[j], memo[k]
        if "hu" in self.metrics:
            for j in range(len(keys)):
                for name, img in (("hu_real", real), ("hu_fake", fake)):
                    hist = hu_histogram(img[j : j + 1], m[j : j + 1], labels.num_classes, self._window)
                    recs[j][name] = _sparse(hist.numpy())
        if "memorization" in self.metrics:
            fake_cpu, real_cpu = fake.cpu(), real.float().cpu()  # [n, 1, H, W]: scaled at the search
            feats = None
            if self.segmenter is not None:  # one slice at a time: independent of batch composition
                embed = self.segmenter.bottleneck_features
                feats = [
                    torch.cat([embed(x[j : j + 1].to(self.segmenter.device)).cpu() for j in range(len(keys))])
                    for x in (fake, real)
                ]  # 2 x [n, F]
            for j, k in enumerate(keys):
                query = {"pixel_fake": fake_cpu[j], "pixel_real": real_cpu[j]}
                if feats is not None:
                    query.update(feature_fake=feats[0][j], feature_real=feats[1][j])
                self._queries[k] = query
        if "dice" in self.metrics:
            if getattr(self.segmenter, "num_classes", labels.num_classes) != labels.num_classes:
                raise ValueError(
                    f"the segmenter has {self.segmenter.num_classes} classes, the model's label set "
                    f"{labels.name!r} {labels.num_classes}; train the segmenter on the same label set"
                )
            seg = self.segmenter.segment(fake.to(self.segmenter.device))  # [n, H, W]
            for j in range(len(keys)):
                recs[j]["counts"] = dice_counts(seg[j], m[j], labels.num_classes).numpy()
        for k, r in zip(keys, recs):
            self._records[k] = r

    # ------------------------------------------------------------------ epoch end
    @torch.no_grad()
    def _nearest_training(self, pl_module: L.LightningModule) -> None:
        """Nearest-training distances of this process's slices (synthetic and real; pixels and,
        with a segmenter, its features), into their records."""
        if not self._queries:
            return
        from torch.utils.data import DataLoader

        keys = sorted(self._queries)
        names = list(self._queries[keys[0]])  # pixel_fake, pixel_real[, feature_fake, feature_real]
        device = pl_module.device
        search = {}
        for n in names:
            rows = torch.stack([self._queries[k][n] for k in keys])  # [Q, 1, H, W] or [Q, F]
            search[n] = NearestNeighbors(
                pixel_vectors(rows) if n.startswith("pixel") else rows, device=device
            )
        loader = DataLoader(self._train_dataset, batch_size=TRAIN_SCAN_BATCH, shuffle=False)
        for batch in loader:  # the training set in order: ties resolve the same on every process
            image = batch["image"].to(device)  # [b, 1, H, W]
            pixels = pixel_vectors(image)
            feats = self.segmenter.bottleneck_features(image) if "feature_fake" in search else None
            for n, nn in search.items():
                nn.update(pixels if n.startswith("pixel") else feats)
        for n, nn in search.items():
            for k, d in zip(keys, nn.distances.cpu().tolist()):
                self._records[k][f"nn_{n}"] = d
        self._queries = {}

    def _gather(self, trainer: L.Trainer) -> dict[SliceKey, dict[str, Any]]:
        records = self._records
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, records)
            merged: dict[SliceKey, dict[str, Any]] = {}
            for part in gathered:
                for k, v in part.items():
                    merged.setdefault(k, v)  # padded duplicates: identical values, keep one
            records = merged
        return records

    def compute(self, records: Mapping[SliceKey, Mapping[str, Any]]) -> dict[str, float]:
        """Metric values from per-slice records (in sorted slice order, float64)."""
        keys = sorted(records)
        out: dict[str, float] = {}
        if not keys:
            return out
        for name in ("psnr", "ssim"):
            if name in self.metrics:
                out[name] = float(np.mean(np.array([records[k][name] for k in keys], np.float64)))
        if "fid" in self.metrics:
            if len(keys) >= 2:
                real = np.stack([records[k]["real"] for k in keys]).astype(np.float64)
                fake = np.stack([records[k]["fake"] for k in keys]).astype(np.float64)
                out["fid"] = frechet_distance(real, fake)
            else:
                warnings.warn("FID needs at least 2 slices; not logged", stacklevel=2)
        if "frd" in self.metrics:
            if len(keys) >= 2:
                real = np.stack([records[k]["frd_real"] for k in keys])
                fake = np.stack([records[k]["frd_fake"] for k in keys])
                out["frd"] = frd_from_features(real, fake)
            else:
                warnings.warn("FRD needs at least 2 slices; not logged", stacklevel=2)
        labels = getattr(self, "_label_set", None) or get_label_set("amos")
        if "hu" in self.metrics:
            shape = (labels.num_classes, hu_bins(self._window)[1])
            real = sum(_dense(records[k]["hu_real"], shape) for k in keys)
            fake = sum(_dense(records[k]["hu_fake"], shape) for k in keys)
            for c, stats in compare_hu_statistics(real, fake, self._window).items():
                for name, value in stats.items():
                    out[f"hu/{labels.classes[c].name}/{name}"] = value
        if "memorization" in self.metrics:
            for space in ("pixel", "feature"):
                if f"nn_{space}_fake" in records[keys[0]]:
                    summary = memorization_summary(
                        [records[k][f"nn_{space}_fake"] for k in keys],
                        [records[k][f"nn_{space}_real"] for k in keys],
                    )
                    out.update({f"memorization/{space}/{n}": v for n, v in summary.items()})
        if "dice" in self.metrics:
            counts = np.sum([records[k]["counts"] for k in keys], axis=0)
            dice = dice_from_counts(counts).numpy()
            if labels.name == "amos":
                organ = [dice[i] for i in PAPER_DICE_ORDER]  # the paper's 14 organ columns
            else:
                organ = [dice[i] for i in labels.structure_ids]  # every structure of the set
            for i in labels.structure_ids:
                if not math.isnan(dice[i]):
                    out[f"dice/{labels.classes[i].name}"] = float(dice[i])
            present = [d for d in organ if not math.isnan(d)]
            if present:
                out["dice/mean"] = float(np.mean(present))
        return out

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if "memorization" in self.metrics:
            self._nearest_training(pl_module)
        records = self._gather(trainer)
        values = self.compute(records)
        values["num_slices"] = float(len(records))
        self.results[stage] = values
        for name, value in values.items():
            pl_module.log(f"{stage}/{name}", value, sync_dist=False, rank_zero_only=False)
        self._save_real_cache(trainer, records)
        self._records = {}

    def _save_real_cache(self, trainer: L.Trainer, records: Mapping[SliceKey, Mapping[str, Any]]) -> None:
        split_id = getattr(self, "_current_split", None)
        if "fid" not in self.metrics or split_id is None:
            return
        memo = self._real_memo[split_id]
        for k, r in records.items():  # features computed on other processes
            if k not in memo:
                memo[k] = r["real"]
                self._real_dirty.add(split_id)
        if self.fid_cache_dir is None or split_id.startswith("<memory>") or split_id not in self._real_dirty:
            return
        if trainer.is_global_zero:
            keys = sorted(memo)
            with atomic_path(self._cache_file(split_id)) as tmp:
                torch.save({"split_id": split_id, "keys": keys, "features": [memo[k] for k in keys]}, tmp)
        self._real_dirty.discard(split_id)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")


def _sparse(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A histogram as (flat indices, counts) of its non-empty bins (records stay small)."""
    idx = np.flatnonzero(hist)
    return idx.astype(np.int32), hist.reshape(-1)[idx].astype(np.int64)


def _dense(sparse: tuple[np.ndarray, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(int(np.prod(shape)), np.int64)
    out[sparse[0]] = sparse[1]
    return out.reshape(shape)
