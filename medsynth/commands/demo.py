"""``medsynth demo``: the main job on the phantom (train, sample, evaluate, report); every field of
:class:`medsynth.demo.DemoConfig` is a flag."""

from __future__ import annotations

import argparse
import dataclasses

from medsynth import demo
from medsynth.commands.common import HelpFormatter
from medsynth.demo import QUICK, DemoConfig, run_demo
from medsynth.diffusion import NOISE_SCHEDULES, PREDICTION_TYPES, SAMPLERS

__all__ = ["build_parser", "main", "parse_bool"]

#: ``--help`` of each DemoConfig field.
HELP = {
    "output": "folder for checkpoints, TensorBoard logs, the report and the figure",
    "data": "phantom (the built-in phantom) or realct (the shipped real CT, one patient)",
    "label_set": "the masks' classes: amos (15 organs + body) or totalseg (every TotalSegmentator structure)",
    "image_size": "slice size (pixels)",
    "num_train_cases": "phantom training volumes (--data phantom)",
    "num_test_cases": "phantom test volumes (--data phantom)",
    "depth": "slices per phantom volume (--data phantom)",
    "batch_size": "training batch size",
    "model_channels": "base width of the mask-guided DDPM",
    "train_steps": "optimiser steps of the DDPM",
    "lr": "DDPM learning rate",
    "ema_decay": "DDPM EMA decay",
    "noise_schedule": "DDPM noise schedule: linear (the paper's) or cosine",
    "prediction_type": "what the DDPM predicts: eps (the paper's), x0 or v",
    "ema_warmup": "warm the EMA decay up as min(decay, (1+n)/(10+n))",
    "lr_warmup_steps": "linear learning-rate warm-up steps",
    "segmenter_steps": "optimiser steps of the organ segmenter",
    "sampler": "sampler for the evaluation: ddpm (ancestral), ddim or dpm++",
    "num_steps": "sampling steps for the evaluation (network evaluations per slice)",
    "fid_weights": "clean-fid's inception-2015-12-05.pt (FID is skipped when absent)",
    "seed": "seeds the phantom, training and sampling",
    "accelerator": "Lightning accelerator (auto: a GPU when there is one)",
    "checkpoint_every": "steps between refreshes of the DDPM checkpoint while it trains",
    "grid_images": "rows of the image grid logged to TensorBoard",
}


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no) for a boolean flag; anything else is an error."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``medsynth demo``: one per :class:`~medsynth.demo.DemoConfig` field, and ``--quick``."""
    p = argparse.ArgumentParser(
        prog="medsynth demo",
        description=demo.__doc__.splitlines()[0],
        epilog="Sampling cost: every sampling step is one network evaluation per slice, so --num_steps "
        "scales the evaluation time linearly (the methods' own default, the 1000-step chain, is 10x "
        "the demo's 100).",
        formatter_class=HelpFormatter,
    )
    # Checked by the parser, before any training starts.
    choices = {
        "noise_schedule": NOISE_SCHEDULES,
        "prediction_type": PREDICTION_TYPES,
        "sampler": SAMPLERS,
        "data": demo.DEMO_DATA,
        "label_set": ("amos", "totalseg"),
    }
    for f in dataclasses.fields(DemoConfig):
        value = f.default
        kind = type(value) if value is not None else str
        kind = parse_bool if kind is bool else kind
        p.add_argument(
            f"--{f.name}",
            type=kind,
            default=value,
            choices=choices.get(f.name),
            help=HELP.get(f.name, f.name),
        )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny settings (about a minute): checks the pipeline, not quality; sets "
        + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``medsynth demo``; ``argv`` without the command name (None: ``sys.argv``)."""
    args = vars(build_parser().parse_args(argv))
    quick = args.pop("quick")
    cfg = DemoConfig(**args)
    run_demo(dataclasses.replace(cfg, **QUICK) if quick else cfg)
    return 0
