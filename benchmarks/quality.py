"""Quality protocol on the built-in phantom: every method under the same wall-clock budget.

Trains each of the seven methods of Zhuang et al. (the three DDPMs, SDM, Pix2Pix, SPADE, OASIS)
on the 64x64 phantom (12 training cases, the split of experiments/phantom/*.yaml) for
``--budget`` minutes each, saving checkpoints at 25 / 50 / 100 % of the budget. Each checkpoint
samples the test split (``--num-eval`` slices spread over its 4 cases) with ``--seeds`` noise
seeds (per-slice generators, :func:`medsynth.random.slice_generators`), and is scored with:

- PSNR and SSIM against the real slice (Zhuang et al., Sec. 3);
- background mean: mean intensity where the mask is 0 (air must be ~0);
- per-organ mean-intensity error |mean synthetic - mean real| inside liver, spleen, both
  kidneys, stomach and aorta, in window units (0.03 = 12 HU);
- organ Dice of an in-domain :class:`~medsynth.models.OrganSegmenter` (trained here on the real
  training slices, or ``--segmenter``) on the synthetic slices, next to its Dice on real slices;
- a Fréchet distance between Gaussian fits of the segmenter's pooled bottleneck features of the
  synthetic and the real test slices. It is NOT FID: a different, in-domain feature space
  (``8 * width`` dimensions), so its values are comparable only within this benchmark.

Every number is mean +- SD over the noise seeds. Reference rows: the class-mean painting (each
pixel painted with its class's mean training intensity) and the real slices. Writes
``quality.md``, ``quality.json`` and ``quality.png`` (mask | real | each method) to ``--output``.

The full protocol (7 x 30 min of training) is longer than one working session on the 2-core
machine, so a run can be continued: ``--resume`` adds the methods still missing from the
``--output`` folder's ``quality.json`` to it, with the same segmenter and test slices, and refuses
when the settings (``--budget``, ``--num-eval``, ...) or a method's recipe differ from the earlier
part. Each method records where and when it ran (``runs``), so a table assembled over several
sessions says which machine gave each row. Without ``--resume`` a folder that already holds
results is refused, never overwritten.

``--samplers`` instead compares DDIM, DPM-Solver++ and respaced ancestral sampling at 10 / 25 /
50 / 100 network evaluations against the 1000-step chain on the trained diffusion models (or
on ``--ckpt``), and writes ``samplers.md`` / ``samplers.json``.

    python benchmarks/quality.py                                  # all methods, 30 min each
    python benchmarks/quality.py --resume --methods sdm oasis     # continue that run
    python benchmarks/quality.py --budget 0.5 --seeds 2 --methods conditional_ddpm pix2pix
    python benchmarks/quality.py --samplers --ckpt outputs/quality/checkpoints/mask_guided_ddpm_100.ckpt
    python benchmarks/quality.py --gpu --budget 10                # on a GPU
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from medsynth.data import PhantomDataModule
from medsynth.labels import ORGAN_IDS
from medsynth.metrics import (
    background_mean,
    class_mean_painting,
    dice_per_class,
    frechet_distance,
    organ_intensity_error,
    psnr,
    region_sums,
    ssim,
)
from medsynth.models import OrganSegmenter
from medsynth.random import slice_generators

#: AMOS ids of the organs the targets name (issue 9): liver, spleen, kidneys, stomach, aorta.
TARGET_ORGANS: dict[str, int] = {
    "liver": 6,
    "spleen": 1,
    "right_kidney": 2,
    "left_kidney": 3,
    "stomach": 7,
    "aorta": 8,
}
FRACTIONS: tuple[float, ...] = (0.25, 0.5, 1.0)

# The phantom recipe of the diffusion models (docs/benchmarks.md), read from the one place that
# states it, experiments/phantom/_diffusion.yaml: cosine schedule, v-prediction, EMA with warm-up,
# a higher lr with warm-up than the paper's 1e-4 (which needs 150k steps), the small UNet. The
# sampler is the benchmark's own option (--sampler / --num-steps).
_RECIPE_FILE = Path(__file__).resolve().parents[1] / "experiments" / "phantom" / "_diffusion.yaml"
DIFFUSION_RECIPE: dict[str, Any] = {
    k: tuple(v) if isinstance(v, list) else v
    for k, v in yaml.safe_load(_RECIPE_FILE.read_text())["model"]["init_args"].items()
    if k not in ("sampler", "num_steps")
}
#: name -> (class in medsynth.models, init_args besides image_size). The GAN widths are those of
#: experiments/phantom/*.yaml. SPADE runs without its VGG19 perceptual term (lambda_vgg=0): medsynth
#: never downloads the ImageNet weights it needs.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "conditional_ddpm": ("ConditionalDDPM", DIFFUSION_RECIPE),
    "mask_guided_ddpm": ("MaskGuidedDDPM", DIFFUSION_RECIPE),
    "edge_guided_ddpm": ("EdgeGuidedDDPM", DIFFUSION_RECIPE),
    "sdm": ("SDM", {**DIFFUSION_RECIPE, "spade_hidden": 32}),
    "pix2pix": ("Pix2Pix", {"model_channels": 16, "disc_channels": 16}),
    "spade": ("SPADE", {"model_channels": 8, "disc_channels": 16, "spade_hidden": 32, "lambda_vgg": 0.0}),
    "oasis": (
        "OASIS",
        {
            "model_channels": 8,
            "disc_channels": 16,
            "spade_hidden": 32,
            "ema_decay": 0.999,
            "ema_warmup": True,
            "ema_bn_batches": 4,
        },
    ),
}
SAMPLER_SETTINGS: tuple[tuple[str, int], ...] = tuple(
    (s, n) for s in ("ddpm", "ddim", "dpm++") for n in (10, 25, 50, 100)
)


# ---------------------------------------------------------------------------------- data
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


def eval_slices(dm: PhantomDataModule, num: int | None) -> dict[str, Any]:
    """``num`` test slices spread evenly over the split (all of it for None or ``num`` >= its length)."""
    dm.setup("test")
    ds = dm.test_dataloader().dataset
    n = len(ds)
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


def training_class_means(dm: PhantomDataModule) -> torch.Tensor:
    """Mean intensity of every class of ``dm``'s label set over the training slices, float64
    ``[num_classes]`` (NaN for classes never seen)."""
    dm.setup("fit")
    n = dm.label_set.num_classes
    total = torch.zeros(2, n, dtype=torch.float64)
    for b in dm.train_dataloader():
        total += region_sums(b["image"], b["mask"], num_classes=n)
    return torch.where(
        total[1] > 0, total[0] / total[1].clamp(min=1), torch.full_like(total[0], float("nan"))
    )


# ---------------------------------------------------------------------------------- segmenter
class SegmenterFeatures:
    """Label maps and pooled bottleneck features ``[N, 8c]`` of an :class:`OrganSegmenter`."""

    def __init__(self, segmenter: OrganSegmenter) -> None:
        self.segmenter = segmenter.eval()
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


def train_segmenter(dm: PhantomDataModule, steps: int, minutes: float, accelerator: str) -> OrganSegmenter:
    """An OrganSegmenter (width 16, as experiments/phantom/organ_segmenter.yaml) on the real training slices."""
    torch.manual_seed(0)
    seg = OrganSegmenter(image_size=64, model_channels=16)
    trainer(accelerator, max_steps=steps, max_time=minutes).fit(seg, datamodule=dm)
    return seg


def save_segmenter(seg: OrganSegmenter, path: str | Path) -> None:
    """The ``segmenter.pt`` that :func:`load_segmenter` reads (weights and hyperparameters)."""
    torch.save({"state_dict": seg.state_dict(), "hyper_parameters": dict(seg.hparams)}, path)


def load_segmenter(path: str | Path) -> OrganSegmenter:
    """A Lightning checkpoint of an OrganSegmenter, or the ``segmenter.pt`` this benchmark writes."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if "pytorch-lightning_version" in state:
        return OrganSegmenter.load_from_checkpoint(path, map_location="cpu")
    seg = OrganSegmenter(**state["hyper_parameters"])
    seg.load_state_dict(state["state_dict"])
    return seg


# ---------------------------------------------------------------------------------- scoring
def score(
    synth: torch.Tensor,
    batch: Mapping[str, Any],
    features: SegmenterFeatures,
    real_feats: torch.Tensor,
) -> dict[str, float]:
    """Every metric of one set of synthetic slices ``[N, 1, H, W]`` against the real ones."""
    real, mask = batch["image"], batch["mask"]
    err = organ_intensity_error(synth, real, mask)
    labels, feats = features(synth)
    dice = dice_per_class(labels, mask)
    out: dict[str, float] = {
        "psnr": float(psnr(synth, real)),
        "ssim": float(ssim(synth, real)),
        "background": background_mean(synth, mask),
    }
    for name, c in TARGET_ORGANS.items():
        out[f"err/{name}"] = float(err[c])
        out[f"dice/{name}"] = float(dice[c])
    # over the target organs present in the evaluated slices (NaN entries: organ absent)
    out["err/max"] = float(np.nanmax([out[f"err/{n}"] for n in TARGET_ORGANS]))
    out["err/mean"] = float(np.nanmean([out[f"err/{n}"] for n in TARGET_ORGANS]))
    out["dice/mean"] = float(np.nanmean([out[f"dice/{n}"] for n in TARGET_ORGANS]))
    out["dice/all_organs"] = float(np.nanmean([float(dice[c]) for c in ORGAN_IDS]))
    out["frechet_seg"] = frechet_distance(feats.numpy(), real_feats.numpy())
    return out


def aggregate(rows: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "sd", "n"}}`` over seeds (sample SD, 0 for one seed)."""
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
    """The model's slices for ``batch``'s masks with per-slice generators (seed ``seed``)."""
    outs = []
    dev = model.device
    for i in range(0, len(batch["mask"]), bs):
        gens = slice_generators(batch["keys"][i : i + bs], seed, dev)
        kw = model.generate_kwargs(**opts)
        masks = batch.get("gen_mask", batch["mask"])  # the model's label set (scoring uses "mask")
        outs.append(model.generate(masks[i : i + bs].to(dev), generator=gens, **kw).cpu())
    return torch.cat(outs)


# ---------------------------------------------------------------------------------- training
class BudgetCheckpoints(Callback):
    """Saves ``<dir>/<name>_<pct>.ckpt`` when 25 / 50 % of the budget have passed, and at the end."""

    def __init__(self, name: str, budget_s: float, directory: Path, fractions: Sequence[float] = FRACTIONS):
        self.name, self.budget_s, self.dir = name, budget_s, directory
        self.pending = sorted(f for f in fractions if f < 1.0)
        self.saved: dict[float, dict[str, Any]] = {}
        self.t0 = 0.0

    def path(self, fraction: float) -> Path:
        return self.dir / f"{self.name}_{round(100 * fraction)}.ckpt"

    def _save(self, trainer: L.Trainer, fraction: float) -> None:
        trainer.save_checkpoint(self.path(fraction))
        self.saved[fraction] = {"step": trainer.global_step, "seconds": time.perf_counter() - self.t0}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        while self.pending and time.perf_counter() - self.t0 >= self.pending[0] * self.budget_s:
            self._save(trainer, self.pending.pop(0))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for f in self.pending:  # budget too short to reach them: save what there is
            self._save(trainer, f)
        self._save(trainer, 1.0)


def trainer(accelerator: str, max_steps: int = -1, max_time: float | None = None, callbacks=()) -> L.Trainer:
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=max_steps,
        max_epochs=-1,
        max_time=None if max_time is None else datetime.timedelta(minutes=max_time),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
    )


def method_class(name: str) -> type:
    return getattr(importlib.import_module("medsynth.models"), METHODS[name][0])


def train_method(
    name: str, dm: PhantomDataModule, args: argparse.Namespace, ckpt_dir: Path
) -> dict[float, Any]:
    """Train ``name`` for ``args.budget`` minutes; returns ``{fraction: {"path", "step", "seconds"}}``."""
    cls_name, init_args = METHODS[name]
    torch.manual_seed(0)
    extra = {} if args.label_set == "amos" else {"label_set": args.label_set}
    model = method_class(name)(image_size=64, **init_args, **extra)
    cb = BudgetCheckpoints(name, 60 * args.budget, ckpt_dir)
    trainer(args.accelerator, max_time=args.budget, callbacks=[cb]).fit(model, datamodule=dm)
    return {f: {"path": str(cb.path(f)), **info} for f, info in sorted(cb.saved.items())}


def load(name: str, path: str | Path, dm: PhantomDataModule, device: str) -> Any:
    cls = method_class(name)
    model = cls.load_from_checkpoint(path, map_location=device).eval()
    if getattr(model, "ema", None) is not None and getattr(model, "ema_bn_batches", 0) > 0:
        dm.setup("fit")  # OASIS: batch-norm statistics of the EMA generator, as before its tests
        model.recompute_ema_batch_norm(dm.train_dataloader(), model.ema_bn_batches)
    return model


# ---------------------------------------------------------------------------------- report
def fmt(cell: Mapping[str, float] | None, digits: int = 2) -> str:
    if cell is None or not math.isfinite(cell["mean"]):
        return "—"
    return (
        f"{cell['mean']:.{digits}f} ± {cell['sd']:.{digits}f}" if cell["sd"] else f"{cell['mean']:.{digits}f}"
    )


def markdown(results: Mapping[str, Any]) -> str:
    cols = [
        ("PSNR", "psnr", 2),
        ("SSIM", "ssim", 3),
        ("background", "background", 3),
        ("organ err mean", "err/mean", 3),
        ("organ err max", "err/max", 3),
        ("Dice (synthetic)", "dice/mean", 3),
        ("FD (segmenter)", "frechet_seg", 4),
    ]
    lines = [
        f"Phantom 64x64, trained on {results.get('label_set', 'amos')} labels, budget {results['budget_min']} min per method, {results['num_eval']} test slices, "
        f"seeds {results['seeds']}, sampler {results['sampler']} ({results['num_steps']} steps) for the "
        f"diffusion models; mean ± SD over seeds. Segmenter Dice on real slices: "
        f"{results['real']['dice/mean']['mean']:.3f} (mean over {', '.join(TARGET_ORGANS)}). "
        "FD (segmenter) is a Fréchet distance in the in-domain segmenter's feature space: NOT FID, "
        "comparable only within this table.",
        "",
        "| method | budget | steps | " + " | ".join(c[0] for c in cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    runs = results.get("runs") or {}
    if runs:  # a run continued with --resume can span machines: the step counts show their speed
        where: dict[str, list[str]] = {}
        for name, r in runs.items():
            label = f"{r['date']}, {r.get('gpu') or r['cpu']}, {r['threads']} threads"
            where.setdefault(label, []).append(name)
        unrecorded = [n for n in results["methods"] if n not in runs]  # parts run before runs existed
        if unrecorded:
            where["not recorded"] = unrecorded
        lines[1:1] = ["", "Trained on: " + "; ".join(f"{', '.join(n)}: {w}" for w, n in where.items()) + "."]
    refs = [("real slices", "real"), ("class-mean painting", "painting")]
    if "painting_rich" in results:
        refs.append((f"class-mean painting ({results['label_set']} labels)", "painting_rich"))
    for label, key in refs:
        row = results[key]
        lines.append(f"| {label} | — | — | " + " | ".join(fmt(row.get(k), d) for _, k, d in cols) + " |")
    for name, per in results["methods"].items():
        for frac, entry in per.items():
            m = entry["metrics"]
            lines.append(
                f"| {name} | {round(100 * float(frac))}% | {entry['step']} | "
                + " | ".join(fmt(m.get(k), d) for _, k, d in cols)
                + " |"
            )
    lines += [
        "",
        "Per-organ mean-intensity error (window units) and segmenter Dice at 100% of the budget:",
        "",
    ]
    organs = list(TARGET_ORGANS)
    lines.append(
        "| method | "
        + " | ".join(f"err {o}" for o in organs)
        + " | "
        + " | ".join(f"Dice {o}" for o in organs)
        + " |"
    )
    lines.append("|---|" + "---|" * (2 * len(organs)))
    rows = {"real slices": results["real"], "class-mean painting": results["painting"]}
    if "painting_rich" in results:
        rows[f"class-mean painting ({results['label_set']} labels)"] = results["painting_rich"]
    rows.update({n: per["1.0"]["metrics"] for n, per in results["methods"].items() if "1.0" in per})
    for label, m in rows.items():
        lines.append(
            f"| {label} | "
            + " | ".join(fmt(m.get(f"err/{o}"), 3) for o in organs)
            + " | "
            + " | ".join(fmt(m.get(f"dice/{o}"), 3) for o in organs)
            + " |"
        )
    found = claims(results)
    if found:
        lines += ["", "Claims of Zhuang et al. on this run:", ""] + [f"- {c}" for c in found]
    return "\n".join(lines) + "\n"


DIFFUSION = ("conditional_ddpm", "mask_guided_ddpm", "edge_guided_ddpm", "sdm")
GANS = ("pix2pix", "spade", "oasis")


def claims(results: Mapping[str, Any]) -> list[str]:
    """The paper's two claims, checked on this run's means (a line per comparison that can be made).

    Mask-guided converges earlier: at 25 % and 50 % of the budget its mean organ-intensity error
    is lower and its segmenter Dice higher than the conditional DDPM's. Diffusion beats GANs: at
    100 % the best diffusion model has higher PSNR and lower segmenter FD than the best GAN. A
    difference within twice the larger seed SD of the two rows is reported as a tie, not a verdict
    (Pix2Pix and SPADE are deterministic given the mask, SD 0: the other row's SD sets the margin).
    """
    methods = results["methods"]

    def mean(name: str, frac: str, key: str) -> float:
        return methods[name][frac]["metrics"][key]["mean"]

    def margin(a: str, b: str, frac: str, key: str) -> float:
        return 2.0 * max(methods[n][frac]["metrics"][key].get("sd", 0.0) for n in (a, b))

    def verdict(better: bool, worse: bool) -> str:
        return "holds" if better else ("does not hold" if worse else "tie (within 2 seed SD)")

    lines = []
    if "mask_guided_ddpm" in methods and "conditional_ddpm" in methods:
        for frac in ("0.25", "0.5"):
            if frac in methods["mask_guided_ddpm"] and frac in methods["conditional_ddpm"]:
                e_m, e_c = (
                    mean("mask_guided_ddpm", frac, "err/mean"),
                    mean("conditional_ddpm", frac, "err/mean"),
                )
                d_m, d_c = (
                    mean("mask_guided_ddpm", frac, "dice/mean"),
                    mean("conditional_ddpm", frac, "dice/mean"),
                )
                m_e = margin("mask_guided_ddpm", "conditional_ddpm", frac, "err/mean")
                m_d = margin("mask_guided_ddpm", "conditional_ddpm", frac, "dice/mean")
                said = verdict(
                    e_m < e_c - m_e and d_m > d_c + m_d,  # both clearly better
                    e_m > e_c + m_e or d_m < d_c - m_d,  # either clearly worse
                )
                lines.append(
                    f"Mask-guided converges earlier, at {round(100 * float(frac))}% of the budget: {said} "
                    f"(organ err {e_m:.3f} vs {e_c:.3f}, Dice {d_m:.3f} vs {d_c:.3f}, mask-guided vs conditional)."
                )
    diff = [n for n in DIFFUSION if n in methods and "1.0" in methods[n]]
    gans = [n for n in GANS if n in methods and "1.0" in methods[n]]
    if diff and gans:
        for key, better, label in (("psnr", max, "PSNR"), ("frechet_seg", min, "segmenter FD")):
            bd = better(diff, key=lambda n: mean(n, "1.0", key))
            bg = better(gans, key=lambda n: mean(n, "1.0", key))
            vd, vg = mean(bd, "1.0", key), mean(bg, "1.0", key)
            sign = 1.0 if better is max else -1.0  # > 0: diffusion ahead
            gap, m = sign * (vd - vg), margin(bd, bg, "1.0", key)
            lines.append(
                f"Diffusion beats GANs on {label}: {verdict(gap > m, gap < -m)} "
                f"(best diffusion {bd} {vd:.4f} vs best GAN {bg} {vg:.4f}, margin {m:.4f})."
            )
    return lines


def sampler_markdown(results: Mapping[str, Any]) -> str:
    lines = [
        "Samplers against the 1000-step ancestral chain (first row of each model; mean ± SD over "
        "seeds). 'within 2%': |Dice - Dice_1000| <= 0.02 Dice_1000 and mean organ intensity error "
        "<= 1.02 err_1000 + 0.002 (window units; 0.002 = 0.8 HU, the seed-to-seed noise floor).",
        "",
        "| model | sampler | NFE | s/slice | PSNR | SSIM | background | organ err mean | organ err max | Dice | FD (segmenter) | within 2% |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, rows in results.items():
        for r in rows:
            m = r["metrics"]
            lines.append(
                f"| {model} | {r['sampler']} | {r['num_steps']} | {r['seconds_per_slice']:.3f} | {fmt(m['psnr'])} | "
                f"{fmt(m['ssim'], 3)} | {fmt(m['background'], 3)} | {fmt(m['err/mean'], 3)} | {fmt(m['err/max'], 3)} | "
                f"{fmt(m['dice/mean'], 3)} | {fmt(m['frechet_seg'], 4)} | {r.get('within_2pct', '—')} |"
            )
    return "\n".join(lines) + "\n"


def within_2pct(m: Mapping[str, Any], ref: Mapping[str, Any]) -> bool:
    """Organ metrics and Dice of ``m`` within 2% of the reference chain's (means over seeds).

    Dice within 2% relative; the mean organ intensity error may exceed the reference by 2% of
    it plus 0.002 window units (0.8 HU: a few-seed noise floor, as the error itself is ~0.01).
    """
    d, d0 = m["dice/mean"]["mean"], ref["dice/mean"]["mean"]
    e, e0 = m["err/mean"]["mean"], ref["err/mean"]["mean"]
    return abs(d - d0) <= 0.02 * d0 and e <= 1.02 * e0 + 0.002


# ---------------------------------------------------------------------------------- main
def reference_rows(
    dm: PhantomDataModule, batch: Mapping[str, Any], features: SegmenterFeatures, device: str
) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:
    """Real test-slice features, the real-slice row and the class-mean painting row."""
    real_labels, real_feats = features(batch["image"].to(device))
    real_dice = dice_per_class(real_labels, batch["mask"])
    # Real-row FD: real training slices against the real test slices (the floor of this metric).
    dm.setup("fit")
    train_ds = dm.train_dataloader().dataset
    pick = np.linspace(0, len(train_ds) - 1, len(batch["mask"])).round().astype(int)
    _, train_feats = features(torch.stack([train_ds[int(i)]["image"] for i in pick]).to(device))
    real_row = {
        "psnr": float("nan"),
        "ssim": 1.0,
        "background": background_mean(batch["image"], batch["mask"]),
        **{f"err/{n}": 0.0 for n in TARGET_ORGANS},
        **{f"dice/{n}": float(real_dice[c]) for n, c in TARGET_ORGANS.items()},
        "err/max": 0.0,
        "err/mean": 0.0,
        "dice/mean": float(np.nanmean([float(real_dice[c]) for c in TARGET_ORGANS.values()])),
        "dice/all_organs": float(np.nanmean([float(real_dice[c]) for c in ORGAN_IDS])),
        "frechet_seg": frechet_distance(train_feats.numpy(), real_feats.numpy()),
    }
    painted = class_mean_painting(batch["mask"], training_class_means(dm))
    return real_feats, real_row, score(painted, batch, features, real_feats)


# ---------------------------------------------------------------------------------- resuming
#: Header entries of quality.json that every part of one run must share -> the flag that sets each.
RUN_SETTINGS: dict[str, str] = {
    "label_set": "--label-set",
    "budget_min": "--budget",
    "num_eval": "--num-eval",
    "seeds": "--seeds",
    "sampler": "--sampler",
    "num_steps": "--num-steps",
}


class ResumeError(ValueError):
    """An ``--output`` folder that cannot take this run; the message names the flag to change."""


def _jsonable(value: Any) -> Any:
    """``value`` as quality.json stores it (tuples become lists), for comparing with what it stored."""
    return json.loads(json.dumps(value, default=float))


def previous_results(out: Path, resume: bool) -> dict[str, Any] | None:
    """The earlier part of the run in ``out`` (``--resume``), or None for a fresh folder.

    Raises :class:`ResumeError` when ``out`` already holds results and ``resume`` is off (results are
    never overwritten), and when ``resume`` is on but there is no readable result or no segmenter
    to continue with; all of it before any training.
    """
    path = out / "quality.json"
    if not path.is_file():
        if resume:
            raise ResumeError(
                f"--resume: {path} does not exist; drop --resume to start a run in this --output"
            )
        return None
    if not resume:
        raise ResumeError(
            f"--output {out} already holds results ({path}); pass --resume to add methods to them, "
            "or choose another --output"
        )
    try:
        prev = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResumeError(f"--resume: {path} is not valid JSON ({e})") from e
    if not isinstance(prev, dict) or not isinstance(prev.get("methods"), dict):
        raise ResumeError(f"--resume: {path} has no 'methods' table; it is not a quality.py result")
    seg = out / "checkpoints" / "segmenter.pt"
    if not seg.is_file():
        raise ResumeError(
            f"--resume: {seg} is missing; added methods must be scored by the earlier segmenter"
        )
    return prev


def check_compatible(prev: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Raise :class:`ResumeError` where this run's header ``current`` differs from the earlier part
    ``prev``: a setting (named by its flag), the segmenter file, the recipe of a method already
    run, or the reference rows (which only the phantom, the test slices and the segmenter set)."""
    for key, flag in RUN_SETTINGS.items():
        if key in prev and _jsonable(prev[key]) != _jsonable(current[key]):
            raise ResumeError(
                f"--resume: the earlier part ran with {flag} {prev[key]!r}, this one with {current[key]!r}; "
                "their rows would not be comparable"
            )
    if prev.get("segmenter_sha256") not in (None, current["segmenter_sha256"]):
        raise ResumeError(
            "--resume: checkpoints/segmenter.pt is not the file the earlier part was scored with"
        )
    for name in prev["methods"]:
        before, now = prev.get("recipes", {}).get(name), current["recipes"].get(name)
        if before is not None and now is not None and _jsonable(now) != _jsonable(before):
            raise ResumeError(
                f"--resume: the recipe of {name} changed since the earlier part ({before} -> {_jsonable(now)}); "
                "start a new --output"
            )
    for row in ("real", "painting"):
        for metric, cell in prev.get(row, {}).items():
            if metric not in current[row]:  # a metric this version no longer computes
                continue
            a, b = float(cell["mean"]), float(current[row][metric]["mean"])
            if not (math.isnan(a) and math.isnan(b)) and not abs(a - b) <= 1e-6 * max(1.0, abs(a)):
                raise ResumeError(
                    f"--resume: the {row} reference row changed since the earlier part ({metric} {a} -> {b}): "
                    "the phantom, the test slices or the segmenter differ"
                )


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def machine(device: str) -> dict[str, Any]:
    """Where a method ran (a table assembled over sessions may mix machines): date, processor,
    cores, torch threads, torch version, and the GPU's name on CUDA."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def figure_row(
    name: str, path: Path, batch: Mapping[str, Any], train_dm: PhantomDataModule, args: argparse.Namespace
) -> torch.Tensor:
    """Seed-0 samples of the figure slices from checkpoint ``path`` (a resumed run without figure.pt)."""
    picks = args.figure_slices
    sub = {k: v[picks] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    sub["keys"] = [batch["keys"][i] for i in picks]
    model = load(name, path, train_dm, args.device)
    return synthesize(model, sub, 0, {"sampler": args.sampler, "num_steps": args.num_steps})


def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.output)
    prev = previous_results(out, args.resume)  # before any work: a folder with results is never overwritten
    if prev is not None and args.segmenter:
        raise ResumeError(
            "--segmenter: a resumed run scores with the earlier part's checkpoints/segmenter.pt"
        )
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    dm = phantom()  # AMOS labels: the segmenter, the scores and the reference rows
    batch = eval_slices(dm, args.num_eval)
    train_dm = dm if args.label_set == "amos" else phantom(label_set=args.label_set)
    rich_painting = None
    if train_dm is not dm:  # the same slices labelled with the training set, for generate()
        rich = eval_slices(train_dm, args.num_eval)
        if rich["keys"] != batch["keys"] or not torch.equal(rich["image"], batch["image"]):
            raise RuntimeError("the phantom's label sets gave different test slices")
        batch["gen_mask"] = rich["mask"]
    seg_file = ckpt_dir / "segmenter.pt"  # the one every part of the run scores with
    if prev is not None:
        seg = load_segmenter(seg_file)
    else:
        if args.segmenter:
            seg = load_segmenter(args.segmenter)
        else:
            seg = train_segmenter(
                dm, args.segmenter_steps, args.segmenter_minutes or args.budget, args.accelerator
            )
        if not (seg_file.exists() and args.segmenter and seg_file.samefile(args.segmenter)):
            save_segmenter(seg, seg_file)
    seg = seg.to(args.device)
    features = SegmenterFeatures(seg)
    real_feats, real_row, painting_row = reference_rows(dm, batch, features, args.device)
    if train_dm is not dm:  # the bound of the richer mask: each pixel painted with its rich class's mean
        painted = class_mean_painting(batch["gen_mask"], training_class_means(train_dm))
        rich_painting = aggregate([score(painted, batch, features, real_feats)])
    results: dict[str, Any] = {
        "label_set": args.label_set,
        "budget_min": args.budget,
        "num_eval": len(batch["mask"]),
        "seeds": list(range(args.seeds)),
        "sampler": args.sampler,
        "num_steps": args.num_steps,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "real": aggregate([real_row]),
        "painting": aggregate([painting_row]),
        **({"painting_rich": rich_painting} if rich_painting else {}),
        "segmenter_sha256": sha256(seg_file),
        "methods": {},
        "recipes": {n: {"class": METHODS[n][0], **METHODS[n][1]} for n in args.methods},
        "runs": {},
    }
    figure: dict[str, torch.Tensor] = {}
    if prev is not None:  # continue the earlier part: same settings, segmenter, recipes, references
        check_compatible(
            prev, {**results, "recipes": {n: {"class": c, **a} for n, (c, a) in METHODS.items()}}
        )
        results["methods"] = dict(prev["methods"])
        results["runs"] = dict(prev.get("runs", {}))
        results["recipes"] = {**prev.get("recipes", {}), **results["recipes"]}
        if (out / "figure.pt").is_file():
            figure.update(torch.load(out / "figure.pt", weights_only=True))
        for name in results["methods"]:
            if name not in figure and (ckpt_dir / f"{name}_100.ckpt").is_file():
                figure[name] = figure_row(name, ckpt_dir / f"{name}_100.ckpt", batch, train_dm, args)
    opts = {"sampler": args.sampler, "num_steps": args.num_steps}
    todo = [n for n in args.methods if n not in results["methods"]]
    for name in (n for n in args.methods if n not in todo):
        print(f"=== {name}: kept from the earlier part of this run", flush=True)
    for name in todo:
        print(f"=== {name}: training {args.budget} min", flush=True)
        results["runs"][name] = machine(args.device)
        ckpts = train_method(name, train_dm, args, ckpt_dir)
        per: dict[str, Any] = {}
        for frac, info in ckpts.items():
            model = load(name, info["path"], train_dm, args.device)
            t0 = time.perf_counter()
            rows = []
            for s in range(args.seeds):
                synth = synthesize(model, batch, s, opts)
                rows.append(score(synth, batch, features, real_feats))
                if frac == 1.0 and s == 0:
                    figure[name] = synth[args.figure_slices]
            per[str(frac)] = {
                "step": info["step"],
                "train_seconds": info["seconds"],
                "sample_seconds": time.perf_counter() - t0,
                "metrics": aggregate(rows),
                "per_seed": rows,
            }
            print(
                f"  {round(100 * frac)}% (step {info['step']}): "
                + ", ".join(
                    f"{k} {v['mean']:.3f}"
                    for k, v in per[str(frac)]["metrics"].items()
                    if k in ("psnr", "background", "err/max", "dice/mean")
                ),
                flush=True,
            )
        results["methods"][name] = per
        write_quality(results, out, batch, figure, args.figure_slices)  # after every method
    if not todo:  # a resumed run with nothing new to train still rewrites the table and the figure
        write_quality(results, out, batch, figure, args.figure_slices)
    return results


def write_quality(
    results: Mapping[str, Any],
    out: Path,
    batch: Mapping[str, Any],
    figure: Mapping[str, torch.Tensor],
    picks: Sequence[int],
) -> None:
    from medsynth.metrics.report import comparison_figure

    (out / "quality.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "quality.md").write_text(markdown(results))
    if figure:
        torch.save(dict(figure), out / "figure.pt")  # the seed-0 figure slices, for --resume
        comparison_figure(batch["mask"][picks], dict(figure), out / "quality.png", real=batch["image"][picks])


def run_samplers(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    dm = phantom()
    batch = eval_slices(dm, args.num_eval)
    seg_path = Path(args.segmenter or out / "checkpoints" / "segmenter.pt")
    if args.segmenter or seg_path.is_file():
        seg = load_segmenter(seg_path)
    else:
        seg = train_segmenter(dm, args.segmenter_steps, args.segmenter_minutes or 10.0, args.accelerator)
        seg_path.parent.mkdir(parents=True, exist_ok=True)
        save_segmenter(seg, seg_path)
    features = SegmenterFeatures(seg.to(args.device))
    real_feats, real_row, painting_row = reference_rows(dm, batch, features, args.device)
    if args.ckpt:
        targets = {Path(args.ckpt).stem: (args.ckpt_method, args.ckpt)}
    else:
        targets = {
            n: (n, out / "checkpoints" / f"{n}_100.ckpt")
            for n in args.methods
            if n.endswith("ddpm") or n == "sdm"
        }
    ref = {"sampler": "—", "num_steps": 0, "seconds_per_slice": 0.0, "within_2pct": "—"}
    results: dict[str, Any] = {
        "real slices": [{**ref, "metrics": aggregate([real_row])}],
        "class-mean painting": [{**ref, "metrics": aggregate([painting_row])}],
    }
    for label, (name, path) in targets.items():
        model = load(name, path, dm, args.device)
        rows = []
        for sampler, steps in (*args.reference, *args.settings):
            t0 = time.perf_counter()
            per_seed = [
                score(
                    synthesize(model, batch, s, {"sampler": sampler, "num_steps": steps}),
                    batch,
                    features,
                    real_feats,
                )
                for s in range(args.seeds)
            ]
            rows.append(
                {
                    "sampler": sampler,
                    "num_steps": steps,
                    "seconds_per_slice": (time.perf_counter() - t0) / (args.seeds * len(batch["mask"])),
                    "metrics": aggregate(per_seed),
                    "per_seed": per_seed,
                }
            )
            ok = within_2pct(rows[-1]["metrics"], rows[0]["metrics"])
            if not args.reference:
                rows[-1]["within_2pct"] = "n/a"
            else:
                rows[-1]["within_2pct"] = "reference" if len(rows) == 1 else ("yes" if ok else "no")
            print(
                f"  {label} {sampler}:{steps} "
                + json.dumps(
                    {
                        k: round(v["mean"], 4)
                        for k, v in rows[-1]["metrics"].items()
                        if k in ("psnr", "err/mean", "dice/mean")
                    }
                ),
                flush=True,
            )
            results[label] = rows
            (out / "samplers.json").write_text(json.dumps(results, indent=2, default=float))
            (out / "samplers.md").write_text(sampler_markdown(results))
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--budget", type=float, default=30.0, help="training minutes per method (30)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--gpu", action="store_true", help="train and sample on the GPU")
    p.add_argument("--seeds", type=int, default=4, help="noise seeds 0..n-1 (4)")
    p.add_argument("--output", default="outputs/quality")
    p.add_argument(
        "--resume",
        action="store_true",
        help="add the --methods missing from --output's quality.json to it (same settings and segmenter)",
    )
    p.add_argument("--segmenter", default=None, help="an OrganSegmenter checkpoint instead of training one")
    p.add_argument("--segmenter-steps", type=int, default=600)
    p.add_argument(
        "--segmenter-minutes", type=float, default=None, help="segmenter time limit (default: --budget)"
    )
    p.add_argument(
        "--num-eval",
        type=int,
        default=64,
        help="test slices to sample, spread over the 4 test cases (64; 0: all 128)",
    )
    p.add_argument(
        "--sampler",
        default="ddpm",
        help="diffusion sampler (ddpm: respaced ancestral, the documented default)",
    )
    p.add_argument("--num-steps", type=int, default=100, help="diffusion network evaluations (100)")
    p.add_argument(
        "--samplers", action="store_true", help="sampler comparison on trained diffusion models instead"
    )
    p.add_argument("--ckpt", default=None, help="--samplers: one diffusion checkpoint")
    p.add_argument(
        "--ckpt-method", default="mask_guided_ddpm", choices=[m for m in METHODS if "ddpm" in m or m == "sdm"]
    )
    p.add_argument(
        "--settings",
        nargs="+",
        default=[f"{s}:{n}" for s, n in SAMPLER_SETTINGS],
        metavar="SAMPLER:STEPS",
        help="--samplers: the settings to compare (default: ddpm, ddim, dpm++ at 10/25/50/100)",
    )
    p.add_argument(
        "--reference", default="ddpm:1000", help="--samplers: the reference setting, or 'none' (ddpm:1000)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--label-set",
        default="amos",
        choices=["amos", "totalseg"],
        help="the phantom labels the methods train on and generate from (amos); scores stay on AMOS organs",
    )
    a = p.parse_args(argv)

    def setting(text: str) -> tuple[str, int]:
        sampler, _, steps = text.partition(":")
        if sampler not in ("ddpm", "ddim", "dpm++") or not steps.isdigit() or int(steps) < 1:
            p.error(f"a sampler setting looks like ddim:25, got {text!r}")
        return sampler, int(steps)

    if a.samplers and a.resume:
        p.error("--resume continues a quality run; --samplers writes its own samplers.json")
    if a.samplers and a.label_set != "amos":
        p.error("--samplers compares samplers on AMOS-labelled models; drop --label-set")
    a.settings = [setting(x) for x in a.settings]
    a.reference = [] if a.reference == "none" else [setting(a.reference)]
    if a.budget <= 0 or a.seeds < 1:
        p.error("--budget and --seeds must be positive")
    a.num_eval = None if a.num_eval == 0 else a.num_eval
    a.accelerator = "gpu" if a.gpu else "cpu"
    a.device = "cuda" if a.gpu else "cpu"
    a.figure_slices = [0]  # set once the evaluation slices are known
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.num_eval or 128
    args.figure_slices = sorted({round(i * (n - 1) / 3) for i in range(4)})
    t0 = time.perf_counter()
    try:
        if args.samplers:
            run_samplers(args)
        else:
            run_quality(args)
    except ResumeError as e:
        print(f"quality.py: error: {e}", file=sys.stderr)
        return 2
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min; wrote {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
