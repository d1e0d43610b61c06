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
import math
import sys
import time

import torch
from quality import phantom  # noqa: I001 - sibling benchmark module (run from benchmarks/ or the repo root)

from medsynth.data import PhantomDataModule
from medsynth.metrics import background_mean, class_mean_painting, organ_intensity_error, psnr, region_sums
from medsynth.models import MaskGuidedDDPM
from medsynth.random import slice_generators

#: The organs of the quality targets (issue 9): AMOS ids.
TARGET_ORGANS: dict[str, int] = {
    "spleen": 1,
    "right_kidney": 2,
    "left_kidney": 3,
    "liver": 6,
    "stomach": 7,
    "aorta": 8,
}


def eval_slices(dm: PhantomDataModule, num: int) -> dict:
    """``num`` test slices spread evenly over the split (all of it when ``num`` >= its length)."""
    dm.setup("test")
    ds = dm.test_dataloader().dataset
    n = len(ds)
    idx = list(range(n)) if num >= n else sorted({round(i * (n - 1) / (num - 1)) for i in range(num)})
    items = [ds[i] for i in idx]
    return {
        "image": torch.stack([it["image"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "keys": [(it["case_id"], int(it["slice_index"])) for it in items],
    }


def score(synth: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """PSNR, background mean and the target organs' intensity errors of one set of slices."""
    err = organ_intensity_error(synth, real, mask)
    out = {"psnr": float(psnr(synth, real)), "background": background_mean(synth, mask)}
    for name, c in TARGET_ORGANS.items():
        out[f"err/{name}"] = float(err[c])
    out["err/max"] = max(out[f"err/{n}"] for n in TARGET_ORGANS)
    return out


def painting_reference(dm: PhantomDataModule, batch: dict) -> dict[str, float]:
    """Scores of the class-mean painting (class means over the training slices)."""
    dm.setup("fit")
    total = None
    for b in dm.train_dataloader():
        s = region_sums(b["image"], b["mask"])
        total = s if total is None else total + s
    means = total[0] / total[1].clamp(min=1)
    return score(class_mean_painting(batch["mask"], means), batch["image"], batch["mask"])


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
    if a.painting:
        print(json.dumps({"row": "painting", **painting_reference(dm, batch)}), flush=True)
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
    conf = model.configure_optimizers()
    opt = conf["optimizer"] if isinstance(conf, dict) else conf
    sched = conf["lr_scheduler"]["scheduler"] if isinstance(conf, dict) else None
    dm.setup("fit")
    loader = dm.train_dataloader()
    step, t0, losses = 0, time.perf_counter(), []
    limit = math.inf if a.minutes is None else 60 * a.minutes
    while step < a.steps and time.perf_counter() - t0 < limit:
        for b in loader:
            loss = model._losses(model.net, b, training=True)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            model.ema.update(model.net)
            losses.append(float(loss.detach()))
            step += 1
            if step >= a.steps or time.perf_counter() - t0 >= limit:
                break
    train_s = time.perf_counter() - t0
    print(
        f"trained {step} steps in {train_s:.0f} s, last-50 loss {sum(losses[-50:]) / 50:.4f}", file=sys.stderr
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
