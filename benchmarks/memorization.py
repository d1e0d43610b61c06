"""Does the memorization check fire? A deliberately overfit diffusion model vs a normally trained one.

The check (:mod:`medsynth.metrics.memorization`, ``SynthesisMetrics(metrics=["memorization"])``):
each synthetic test slice's distance to its nearest training slice, against the same distance of
the real test slices; copy rate = share of synthetic slices nearer than the 5th percentile of the
real ones. Here, on the phantom, with the phantom recipe of the mask-guided DDPM
(experiments/phantom/_diffusion.yaml, as benchmarks/quality.py):

- **overfit**: trained on ``--overfit-slices`` slices only (one phantom case of that depth, from
  the pelvis to the lung bases) for ``--overfit-steps`` steps; tested on ``--test-cases`` other
  cases at the same levels, against its own training slices;
- **normal**: trained on the protocol's split (``--train-cases`` cases of ``--depth`` slices) for
  ``--normal-minutes`` (or ``--normal-steps``), or loaded with ``--normal-checkpoint``; tested on
  ``--test-cases`` cases of ``--depth`` slices against its training slices.

Both spaces are scored: pixels (RMS difference) and the pooled bottleneck features of an
in-domain :class:`~medsynth.models.OrganSegmenter` (``--segmenter``, or trained here on the
normal split's real slices). The overfit model should score a high copy rate, the normal one
about 5 %. Prints a Markdown table and writes ``memorization.md`` / ``.json`` and the trained
checkpoints to ``--output``.

    python benchmarks/memorization.py --accelerator gpu                   # both trainings, then the check
    python benchmarks/memorization.py --normal-checkpoint outputs/quality/checkpoints/mask_guided_ddpm_100.ckpt \\
        --segmenter benchmarks/results/quality_30/checkpoints/segmenter.pt  # only the overfit model is trained
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.protocol, run from anywhere
from benchmarks.protocol import DIFFUSION_RECIPE, load_segmenter  # noqa: E402
from benchmarks.protocol import quiet_trainer as trainer  # noqa: E402
from medsynth.callbacks import SynthesisMetrics  # noqa: E402
from medsynth.data import PhantomDataModule  # noqa: E402
from medsynth.models import MaskGuidedDDPM, OrganSegmenter  # noqa: E402

QUANTILES = ("q05", "q50", "q95")


def overfit_data(slices: int, test_cases: int, image_size: int) -> PhantomDataModule:
    """One training case of ``slices`` slices; ``test_cases`` other cases at the same levels."""
    return PhantomDataModule(
        num_train_cases=1,
        num_val_cases=0,
        num_test_cases=test_cases,
        depth=slices,
        image_size=image_size,
        batch_size=min(slices, 16),
        seed=0,
    )


def normal_data(train_cases: int, test_cases: int, depth: int, image_size: int) -> PhantomDataModule:
    """The protocol's split (benchmarks/quality.py: 12 training cases of 32 slices, seed 0)."""
    return PhantomDataModule(
        num_train_cases=train_cases,
        num_val_cases=0,
        num_test_cases=test_cases,
        depth=depth,
        image_size=image_size,
        batch_size=16,
        seed=0,
    )


def train_ddpm(
    dm: PhantomDataModule, steps: int, minutes: float | None, args: argparse.Namespace, path: Path
) -> tuple[MaskGuidedDDPM, dict[str, Any]]:
    """A mask-guided DDPM with the phantom recipe trained on ``dm``; saved to ``path``."""
    torch.manual_seed(0)
    recipe = {**DIFFUSION_RECIPE, **({"model_channels": args.model_channels} if args.model_channels else {})}
    model = MaskGuidedDDPM(image_size=args.image_size, **recipe)
    t = trainer(args.accelerator, max_steps=steps, max_time=minutes)
    start = time.time()
    t.fit(model, datamodule=dm)
    path.parent.mkdir(parents=True, exist_ok=True)
    t.save_checkpoint(path)
    return model, {"path": str(path), "steps": int(t.global_step), "seconds": round(time.time() - start, 1)}


def segmenter_for(dm: PhantomDataModule, args: argparse.Namespace) -> OrganSegmenter:
    """``--segmenter``, or one trained on ``dm``'s real training slices (width 16, as quality.py)."""
    if args.segmenter is not None:
        return load_segmenter(args.segmenter)
    torch.manual_seed(0)
    seg = OrganSegmenter(image_size=args.image_size, model_channels=16)
    trainer(args.accelerator, max_steps=args.segmenter_steps).fit(seg, datamodule=dm)
    return seg


def check(model: Any, dm: PhantomDataModule, segmenter: OrganSegmenter, args: argparse.Namespace) -> dict:
    """The memorization metrics of ``model`` on ``dm``'s test split against its training split."""
    opts = model.generate_kwargs(sampler=args.sampler, num_steps=args.num_steps)
    cb = SynthesisMetrics(metrics=("memorization",), segmenter=segmenter, seed=0, **opts)
    trainer(args.accelerator, callbacks=[cb]).test(model, datamodule=dm, verbose=False)
    return cb.results["test"]


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| model | space | copy rate | threshold | "
        + " | ".join(f"synthetic {q}" for q in QUANTILES)
        + " | "
        + " | ".join(f"real {q}" for q in QUANTILES)
        + " |",
        "|:---|:---|" + "---:|" * (2 + 2 * len(QUANTILES)),
    ]
    for name, r in results.items():
        for space in ("pixel", "feature"):
            k = f"memorization/{space}/"
            if k + "copy_rate" not in r:
                continue
            cells = [f"{r[k + 'copy_rate']:.3f}", f"{r[k + 'threshold']:.4g}"]
            cells += [f"{r[f'{k}synthetic_{q}']:.4g}" for q in QUANTILES]
            cells += [f"{r[f'{k}real_{q}']:.4g}" for q in QUANTILES]
            lines.append(f"| {name} | {space} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--overfit-slices", type=int, default=4, help="training slices of the overfit model (4)")
    p.add_argument("--overfit-steps", type=int, default=6000, help="its training steps (6000)")
    p.add_argument("--overfit-checkpoint", type=Path, default=None, help="skip its training")
    p.add_argument("--normal-minutes", type=float, default=30.0, help="normal model's budget (30 min)")
    p.add_argument("--normal-steps", type=int, default=6000, help="... or steps, whichever ends first (6000)")
    p.add_argument(
        "--normal-checkpoint", type=Path, default=None, help="skip its training (a MaskGuidedDDPM)"
    )
    p.add_argument("--train-cases", type=int, default=12, help="normal split: training cases (12)")
    p.add_argument("--depth", type=int, default=32, help="normal split: slices per case (32)")
    p.add_argument("--test-cases", type=int, default=4, help="test cases of both models (4)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--model-channels", type=int, default=None, help="UNet width (default: the recipe's)")
    p.add_argument(
        "--segmenter", type=Path, default=None, help="OrganSegmenter checkpoint or quality.py's .pt"
    )
    p.add_argument("--segmenter-steps", type=int, default=600)
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--num-steps", type=int, default=100)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--output", type=Path, default=Path("outputs/memorization"))
    a = p.parse_args(argv)
    for name in ("overfit_slices", "overfit_steps", "normal_steps", "train_cases", "depth", "test_cases"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    for ckpt in (a.overfit_checkpoint, a.normal_checkpoint, a.segmenter):
        if ckpt is not None and not ckpt.is_file():
            p.error(f"{ckpt}: file not found")
    normal_dm = normal_data(a.train_cases, a.test_cases, a.depth, a.image_size)
    overfit_dm = overfit_data(a.overfit_slices, a.test_cases, a.image_size)
    segmenter = segmenter_for(normal_dm, a)
    runs: dict[str, Any] = {}
    models = {}
    for name, dm, ckpt, steps, minutes in (
        ("overfit", overfit_dm, a.overfit_checkpoint, a.overfit_steps, None),
        ("normal", normal_dm, a.normal_checkpoint, a.normal_steps, a.normal_minutes),
    ):
        if ckpt is not None:
            models[name] = MaskGuidedDDPM.load_from_checkpoint(ckpt, map_location="cpu")
            runs[name] = {"path": str(ckpt)}
        else:
            models[name], runs[name] = train_ddpm(
                dm, steps, minutes, a, a.output / "checkpoints" / f"{name}.ckpt"
            )
        print(f"{name}: {runs[name]}", flush=True)
    results = {
        f"overfit ({a.overfit_slices} training slices)": check(models["overfit"], overfit_dm, segmenter, a),
        f"normal ({a.train_cases * a.depth} training slices)": check(
            models["normal"], normal_dm, segmenter, a
        ),
    }
    text = table(results)
    print(text)
    a.output.mkdir(parents=True, exist_ok=True)
    (a.output / "memorization.md").write_text(text)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    out = {"settings": settings, "runs": runs, "results": results}
    (a.output / "memorization.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
