"""Scoring synthetic slices against real ones: image metrics, organ intensities, segmenter Dice, FD.

:func:`score` gives every metric of the protocol for one set of synthetic slices:

- PSNR and SSIM against the real slice (Zhuang et al., Sec. 3);
- ``background``: mean intensity where the mask is 0 (air must be ~0);
- ``err/<organ>``: |mean synthetic - mean real| inside each organ of the organ table, in window
  units (0.03 = 12 HU on the paper's window), with their maximum and mean over the organs present;
- ``dice/<organ>``: Dice of an in-domain :class:`~medsynth.models.OrganSegmenter` on the synthetic
  slices against the mask, their mean, and ``dice/all_organs`` over every structure of its label set;
- ``frechet_seg``: a Fréchet distance between Gaussian fits of the segmenter's pooled bottleneck
  features of the synthetic and the real slices. NOT FID: an in-domain feature space (``8 * width``
  dimensions), comparable only within one benchmark.

Optional scorers of more metrics (:data:`Extra`, joined with :func:`combine`):
:func:`organ_hu_scorer` (each organ's median HU error and IQR, the scale a radiologist reads),
:func:`frd_scorer` (FRD v1, needs ``medsynth[frd]``) and :func:`memorization_scorer` (copy rate
against the training slices, pixel space).

The organ table maps a metric name to the id of that organ in the segmenter's label set (the
masks scored are in that set): :data:`TARGET_ORGANS` for AMOS ids by default;
:func:`organ_table` gives the same organs in another set by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch

from medsynth.labels import CLASSES, LabelSet
from medsynth.metrics import (
    background_mean,
    dice_per_class,
    frechet_distance,
    organ_hu_statistics,
    organ_intensity_error,
    psnr,
    ssim,
)
from medsynth.models import OrganSegmenter
from medsynth.random import slice_generators

from .budget import quiet_trainer

__all__ = [
    "TARGET_ORGANS",
    "Extra",
    "combine",
    "frd_scorer",
    "memorization_scorer",
    "organ_hu_scorer",
    "Features",
    "SegmenterFeatures",
    "aggregate",
    "load_segmenter",
    "organ_scores",
    "organ_table",
    "save_segmenter",
    "score",
    "synthesize",
    "train_segmenter",
]

#: AMOS ids of the organs the quality targets name: liver, spleen, kidneys, stomach, aorta.
TARGET_ORGANS: dict[str, int] = {
    "liver": 6,
    "spleen": 1,
    "right_kidney": 2,
    "left_kidney": 3,
    "stomach": 7,
    "aorta": 8,
}


def organ_table(label_set: LabelSet, organs: Mapping[str, int] = TARGET_ORGANS) -> dict[str, int]:
    """``organs`` (metric name -> AMOS id) with each id replaced by the id of the same organ in
    ``label_set``, matched by the AMOS class name or its TotalSegmentator name.

    Raises:
        KeyError: naming the label set and its classes when one of the organs is not in it.
    """
    out = {}
    for key, amos_id in organs.items():
        c = CLASSES[amos_id]
        try:
            out[key] = label_set.by_name(c.name).index
        except KeyError:
            if c.totalseg is None:
                raise
            out[key] = label_set.by_name(c.totalseg).index
    return out


class Features(Protocol):
    """What :func:`score` needs of a segmenter: its label set, and label maps and features of images."""

    label_set: LabelSet

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class SegmenterFeatures:
    """Label maps ``[N, H, W]`` and pooled bottleneck features ``[N, 8c]`` of an :class:`OrganSegmenter`."""

    def __init__(self, segmenter: OrganSegmenter) -> None:
        self.segmenter = segmenter.eval()
        self.label_set: LabelSet = segmenter.label_set
        self._feats: list[torch.Tensor] = []
        segmenter.net.down_4.register_forward_hook(lambda m, i, o: self._feats.append(o.mean(dim=(2, 3))))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        labels, feats = [], []
        for i in range(0, len(images), batch_size):
            self._feats.clear()
            labels.append(self.segmenter.segment(images[i : i + batch_size]).cpu())
            feats.append(self._feats[-1].double().cpu())
        return torch.cat(labels), torch.cat(feats)


def train_segmenter(
    dm: L.LightningDataModule,
    steps: int,
    minutes: float | None,
    accelerator: str = "cpu",
    model_channels: int = 16,
) -> OrganSegmenter:
    """An OrganSegmenter (width 16, as experiments/phantom/organ_segmenter.yaml) trained on ``dm``'s
    real training slices for ``steps`` steps, or ``minutes`` if that comes first (None: no limit)."""
    torch.manual_seed(0)
    labels = dm.label_set
    extra = {} if labels.name == "amos" else {"label_set": labels.name}
    seg = OrganSegmenter(image_size=dm.image_size, model_channels=model_channels, **extra)
    quiet_trainer(accelerator, max_steps=steps, max_time=minutes).fit(seg, datamodule=dm)
    return seg


def save_segmenter(seg: OrganSegmenter, path: str | Path) -> None:
    """The ``segmenter.pt`` that :func:`load_segmenter` reads (weights and hyperparameters)."""
    torch.save({"state_dict": seg.state_dict(), "hyper_parameters": dict(seg.hparams)}, path)


def load_segmenter(path: str | Path) -> OrganSegmenter:
    """A Lightning checkpoint of an OrganSegmenter, or the ``segmenter.pt`` :func:`save_segmenter` writes."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if "pytorch-lightning_version" in state:
        return OrganSegmenter.load_from_checkpoint(path, map_location="cpu")
    seg = OrganSegmenter(**state["hyper_parameters"])
    seg.load_state_dict(state["state_dict"])
    return seg


def _check_organs(organs: Mapping[str, int], num_classes: int) -> None:
    bad = {k: v for k, v in organs.items() if not 0 < v < num_classes}
    if bad:
        raise ValueError(f"organs {bad} lie outside the label set's ids 1..{num_classes - 1}")


def organ_scores(
    err: torch.Tensor, dice: torch.Tensor | None, organs: Mapping[str, int] = TARGET_ORGANS
) -> dict[str, float]:
    """Per-organ entries of a score from per-class ``err`` (and ``dice``) ``[num_classes]``:
    ``err/<organ>``, ``dice/<organ>``, then ``err/max``, ``err/mean`` and ``dice/mean`` over the
    organs present (NaN entries: organ absent; ``dice`` None leaves the Dice entries out)."""
    out: dict[str, float] = {}
    for name, c in organs.items():
        out[f"err/{name}"] = float(err[c])
        if dice is not None:
            out[f"dice/{name}"] = float(dice[c])
    out["err/max"] = float(np.nanmax([out[f"err/{n}"] for n in organs]))
    out["err/mean"] = float(np.nanmean([out[f"err/{n}"] for n in organs]))
    if dice is not None:
        out["dice/mean"] = float(np.nanmean([out[f"dice/{n}"] for n in organs]))
    return out


#: A scorer of a data set's own metrics: ``(synthetic [N, 1, H, W], batch) -> {metric: value}``.
Extra = Callable[[torch.Tensor, Mapping[str, Any]], Mapping[str, float]]


def combine(*extras: Extra | None) -> Extra:
    """One :data:`Extra` that joins the rows of ``extras`` (None entries are skipped)."""
    parts = [e for e in extras if e is not None]

    def scores(synth: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for e in parts:
            out.update(e(synth, batch))
        return out

    return scores


def organ_hu_scorer(window: tuple[float, float], organs: Mapping[str, int] = TARGET_ORGANS) -> Extra:
    """Organ statistics in HU (:func:`medsynth.metrics.organ_hu_statistics`: histograms at 1 HU,
    numpy's linear quantiles of whole HU), each organ's pixels pooled over the slices, both sets
    mapped to HU through ``window`` (level, width):

    - ``hu/<organ>``: synthetic minus real median; ``hu/abs_max``: the largest |error|;
    - ``hu_iqr/<organ>`` and ``hu_iqr_real/<organ>``: the interquartile range of each set.

    An organ absent from the masks is NaN. ``organs``: metric name -> id in the masks' label set.
    """
    level, width = window
    if not width > 0:
        raise ValueError(f"window width must be positive, got {window!r}")
    ids = dict(organs)

    def scores(synth: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, float]:
        mask = batch["mask"]  # [N, H, W]
        n = max(int(mask.max()), *ids.values()) + 1
        fake = organ_hu_statistics(synth, mask, list(ids.values()), (level, width), n)
        real = organ_hu_statistics(batch["image"], mask, list(ids.values()), (level, width), n)
        out: dict[str, float] = {}
        for name, c in ids.items():
            f, r = fake.get(c), real.get(c)
            out[f"hu/{name}"] = f["median"] - r["median"] if f and r else float("nan")
            out[f"hu_iqr/{name}"] = f["iqr"] if f else float("nan")
            out[f"hu_iqr_real/{name}"] = r["iqr"] if r else float("nan")
        errors = [abs(out[f"hu/{name}"]) for name in ids if np.isfinite(out[f"hu/{name}"])]
        out["hu/abs_max"] = max(errors) if errors else float("nan")
        return out

    return scores


def frd_scorer(window: tuple[float, float]) -> Extra:
    """``frd``: FRD v1 (:mod:`medsynth.metrics.frd`) of the synthetic slices against the batch's
    real ones, both mapped to HU through ``window``; the real slices' features are extracted once,
    and the real slices themselves score NaN (FRD v1 is ln d², -inf for a set against itself).
    Raises ImportError naming the install command when ``frd-score`` is missing (before any work)."""
    from medsynth.metrics.frd import check_frd_available, frd_from_features, radiomics_features

    check_frd_available()
    cache: dict[int, np.ndarray] = {}

    def scores(synth: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, float]:
        if torch.equal(synth, batch["image"]):  # the real row: ln of a zero distance, no information
            return {"frd": float("nan")}
        key = id(batch["image"])
        if key not in cache:
            cache[key] = radiomics_features(batch["image"], window)  # [N, D] float64
        return {"frd": frd_from_features(cache[key], radiomics_features(synth, window))}

    return scores


def memorization_scorer(train_images: torch.Tensor) -> Extra:
    """``memorization/copy_rate``, ``/threshold``, ``/synthetic_q50``, ``/real_q50``: each synthetic
    slice's RMS distance to its nearest training slice (``train_images`` ``[M, 1, H, W]``) against
    the same distance of the real held-out slices (:func:`medsynth.metrics.memorization_summary`:
    copy rate = share of synthetic slices nearer than the real ones' 5th percentile)."""
    from medsynth.metrics import memorization_summary, nearest_neighbors, pixel_vectors

    reference = pixel_vectors(train_images)  # [M, H*W]
    cache: dict[int, torch.Tensor] = {}

    def scores(synth: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, float]:
        key = id(batch["image"])
        if key not in cache:
            cache[key] = nearest_neighbors(pixel_vectors(batch["image"]), reference)[0]  # [N]
        fake = nearest_neighbors(pixel_vectors(synth), reference)[0]  # [N]
        summary = memorization_summary(fake, cache[key])
        keep = ("copy_rate", "threshold", "synthetic_q50", "real_q50")
        return {f"memorization/{k}": float(summary[k]) for k in keep}

    return scores


def score(
    synth: torch.Tensor,
    batch: Mapping[str, Any],
    features: Features,
    real_feats: torch.Tensor,
    organs: Mapping[str, int] = TARGET_ORGANS,
    extra: Extra | None = None,
) -> dict[str, float]:
    """Every metric of one set of synthetic slices ``[N, 1, H, W]`` against ``batch``'s real ones.

    Args:
        synth: Synthetic slices in [0, 1].
        batch: ``image`` ``[N, 1, H, W]`` and ``mask`` ``[N, H, W]`` in ``features.label_set``.
        features: The segmenter (:class:`SegmenterFeatures`).
        real_feats: Its features of the real slices ``[M, D]`` (the FD's reference).
        organs: Metric name -> id in ``features.label_set``.
        extra: More metrics of the data set (e.g. the real CT's organ medians in HU), added to the row.
    """
    labels_set = features.label_set
    n = labels_set.num_classes
    _check_organs(organs, n)
    real, mask = batch["image"], batch["mask"]
    err = organ_intensity_error(synth, real, mask, num_classes=n)
    labels, feats = features(synth)
    dice = dice_per_class(labels, mask, num_classes=n)
    return {
        "psnr": float(psnr(synth, real)),
        "ssim": float(ssim(synth, real)),
        "background": background_mean(synth, mask),
        **organ_scores(err, dice, organs),
        "dice/all_organs": float(np.nanmean([float(dice[c]) for c in labels_set.structure_ids])),
        "frechet_seg": frechet_distance(feats.numpy(), real_feats.numpy()),
        **(extra(synth, batch) if extra is not None else {}),
    }


def aggregate(rows: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "sd", "n"}}`` over seeds (sample SD, ddof 1; 0 for one seed)."""
    if not rows:
        raise ValueError("aggregate needs at least one row")
    out = {}
    for k in rows[0]:
        v = np.array([r[k] for r in rows], dtype=np.float64)
        out[k] = {
            "mean": float(np.mean(v)),
            "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "n": len(v),
        }
    return out


@torch.no_grad()
def synthesize(
    model: Any, batch: Mapping[str, Any], seed: int, opts: Mapping[str, Any], bs: int = 32
) -> torch.Tensor:
    """The model's slices ``[N, 1, H, W]`` (on the CPU) for ``batch``'s masks, ``bs`` at a time,
    each slice drawn with its own generator (:func:`medsynth.random.slice_generators` of its key
    in ``batch["keys"]`` and ``seed``), so a slice does not depend on the batching.

    ``batch["gen_mask"]``, if given, is what the model generates from (its own label set);
    scoring uses ``batch["mask"]``. ``opts`` are filtered by the model's ``generate_kwargs``.
    """
    outs = []
    dev = model.device
    kw = model.generate_kwargs(**opts)
    masks = batch.get("gen_mask", batch["mask"])
    for i in range(0, len(masks), bs):
        gens = slice_generators(batch["keys"][i : i + bs], seed, dev)
        outs.append(model.generate(masks[i : i + bs].to(dev), generator=gens, **kw).cpu())
    return torch.cat(outs)
