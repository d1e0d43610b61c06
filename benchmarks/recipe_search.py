"""Short training runs of the mask-guided DDPM on the 64x64 phantom, to choose the phantom recipe.

Each run trains for ``--steps`` optimiser steps (or ``--minutes``), then samples a fixed set of
test slices with per-slice seeds and prints one JSON line: PSNR, background mean, per-organ
mean-intensity errors (liver, spleen, kidneys, stomach, aorta), for every sampling seed.

    OMP_NUM_THREADS=1 python benchmarks/recipe_search.py --steps 600 --schedule cosine \\
        --ema 0.995 --ema-warmup --lr 5e-4 --lr-warmup 100 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.protocol, run from anywhere
from benchmarks.protocol import (  # noqa: E402
    TARGET_ORGANS,
    diffusion_steps,
    eval_slices,
    organ_scores,
    phantom,
    training_class_means,
)
from medsynth.metrics import background_mean, class_mean_painting, organ_intensity_error, psnr  # noqa: E402
from medsynth.models import MaskGuidedDDPM  # noqa: E402
from medsynth.random import slice_generators  # noqa: E402


def score(synth: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """PSNR, background mean and the target organs' intensity errors (their max and mean) of one
    set of slices ``[N, 1, H, W]``."""
    err = organ_intensity_error(synth, real, mask)
    return {
        "psnr": float(psnr(synth, real)),
        "background": background_mean(synth, mask),
        **organ_scores(err, None, TARGET_ORGANS),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--minutes", type=float, default=None, help="stop training after this wall time")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--channel-mult", type=int, nargs="+", default=[1, 2, 2, 2])
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lr-warmup", type=int, default=0)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--ema-warmup", action="store_true")
    p.add_argument("--schedule", default="linear", choices=["linear", "cosine"])
    p.add_argument("--prediction", default="eps", choices=["eps", "x0", "v"], help="prediction_type")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--sample-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--num-eval", type=int, default=24, help="test slices to sample")
    p.add_argument("--sampler", nargs="+", default=["ddpm:50"], help="sampler:steps, e.g. ddpm:100 ddim:50")
    p.add_argument("--painting", action="store_true", help="also print the class-mean painting row")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    dm = phantom(64, a.batch)
    batch = eval_slices(dm, a.num_eval)
    if a.painting:  # each pixel painted with its class's mean over the training slices
        painted = class_mean_painting(batch["mask"], training_class_means(dm))
        print(json.dumps({"row": "painting", **score(painted, batch["image"], batch["mask"])}), flush=True)
    torch.manual_seed(a.seed)
    model = MaskGuidedDDPM(
        64,
        model_channels=a.width,
        channel_mult=tuple(a.channel_mult),
        attention_resolutions=(8,),
        lr=a.lr,
        ema_decay=a.ema,
        ema_warmup=a.ema_warmup,
        noise_schedule=a.schedule,
        prediction_type=a.prediction,
        lr_warmup_steps=a.lr_warmup,
    )
    dm.setup("fit")
    t0 = time.perf_counter()
    losses = diffusion_steps(
        model, dm.train_dataloader(), a.steps, None if a.minutes is None else 60 * a.minutes
    )
    step = len(losses)
    train_s = time.perf_counter() - t0
    print(
        f"trained {step} steps in {train_s:.0f} s, last-50 loss {sum(losses[-50:]) / len(losses[-50:]):.4f}",
        file=sys.stderr,
    )
    for spec in a.sampler:
        name, steps = spec.split(":")
        for s in a.sample_seeds:
            t1 = time.perf_counter()
            out = model.generate(
                batch["mask"],
                sampler=name,
                num_steps=int(steps),
                generator=slice_generators(batch["keys"], s, "cpu"),
            )
            row = {
                "config": vars(a),
                "trained_steps": step,
                "train_s": round(train_s),
                "sampler": spec,
                "sample_seed": s,
                "sample_s": round(time.perf_counter() - t1),
                **score(out, batch["image"], batch["mask"]),
            }
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
