"""Does a 2.5D model read the slice below? A toy where only that slice can tell.

Volumes of constant, random brightness (uniform in 0.2-0.8 of the window) under one and the same
mask: the mask says nothing about a volume's brightness, the previous slice says everything. A 2D
model and a 2.5D model (``context_previous=1``, no hiding of the previous slice) of one method are
trained for the same steps from the same seed on 32 such volumes; the x0 mean squared error on 8
held-out volumes (fixed timesteps and noise) is reported per seed. A model that uses its context
ends far below the 2D model, which can at best predict the mean brightness.

    python benchmarks/context_check.py --steps 300 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from medsynth.data import SliceDataset
from medsynth.data.context import ContextSpec

METHODS = ("ConditionalDDPM", "MaskGuidedDDPM", "EdgeGuidedDDPM", "SDM")


def volumes(rng: np.random.Generator, n: int, size: int, depth: int = 8) -> tuple[list, list, list]:
    """``n`` volumes: body with one organ, every slice the same, a random brightness per volume."""
    images, masks = [], []
    lo, hi = size // 8, size - size // 8
    for _ in range(n):
        m = np.zeros((depth, size, size), np.uint8)
        m[:, lo:hi, lo:hi] = 16
        m[:, size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = 6
        images.append(np.where(m > 0, rng.uniform(0.2, 0.8), 0.0).astype(np.float32))
        masks.append(m)
    return images, masks, [str(i) for i in range(n)]


def held_out_error(method: str, previous: int, steps: int, seed: int, size: int = 16) -> float:
    """x0 MSE on held-out toy volumes after ``steps`` steps (the trained network, not its EMA)."""
    import medsynth.models

    rng = np.random.default_rng(0)  # the same volumes for every seed and model
    spec = ContextSpec(0, previous)
    train = SliceDataset(*volumes(rng, 32, size), context=spec)
    val = SliceDataset(*volumes(rng, 8, size), context=spec)
    L.seed_everything(seed, verbose=False)
    extra = {"spade_hidden": 8} if method == "SDM" else {}
    model = getattr(medsynth.models, method)(
        size,
        model_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        noise_schedule="cosine",
        prediction_type="x0",
        lr=1e-3,
        context_previous=previous,
        context_drop=0.0,
        **extra,
    )
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(train, batch_size=16, shuffle=True))
    with torch.no_grad():
        losses = [
            float(model._losses(model.net, b, False, torch.Generator().manual_seed(i))["loss_simple"])
            for i, b in enumerate(DataLoader(val, batch_size=16))
        ]
    return float(np.mean(losses))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=METHODS, default="ConditionalDDPM")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for seed in a.seeds:
        flat, ctx = (held_out_error(a.method, prev, a.steps, seed) for prev in (0, 1))
        rows.append((seed, flat, ctx))
        print(f"seed {seed}: 2D {flat:.4f}, 2.5D {ctx:.4f}", flush=True)
    print(f"{a.method}, {a.steps} steps: held-out x0 MSE, 2D vs 2.5D (the slice below)")
    print("| seed | 2D | 2.5D | 2.5D / 2D |\n|---|---|---|---|")
    for seed, flat, ctx in rows:
        print(f"| {seed} | {flat:.4f} | {ctx:.4f} | {ctx / flat:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
