"""One-slice overfit of a tiny conditional DDPM per prediction type: does the chain land on the slice?

The setup of ``tests/test_ddpm.py::test_overfits_one_phantom_slice`` (16x16, width 8, cosine, EMA
0.99 with warm-up, lr 2e-3, 300 steps of batch 4), trained per training seed and prediction type;
8 noise samples each with the ancestral chain respaced to 100 steps (``--num-steps 0``: the full
1000-step chain). Prints one JSON line per (type, seed) with the
8 PSNRs (dB) and their median, and the mean-intensity baseline.

    OMP_NUM_THREADS=1 python benchmarks/overfit_prediction.py --types eps x0 v --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.protocol, run from anywhere
from benchmarks.protocol import diffusion_steps  # noqa: E402
from medsynth.data import PhantomDataModule  # noqa: E402
from medsynth.models import ConditionalDDPM  # noqa: E402


def run(prediction_type: str, seed: int, steps: int, sampler: str, num_steps: int | None) -> dict:
    torch.manual_seed(seed)
    dm = PhantomDataModule(num_train_cases=1, num_val_cases=1, num_test_cases=1, depth=8, image_size=16)
    dm.setup("fit")
    item = dm.train_dataloader().dataset[5]
    image, mask = item["image"][None], item["mask"][None]  # [1, 1, 16, 16], [1, 16, 16]
    model = ConditionalDDPM(
        16,
        model_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        noise_schedule="cosine",
        prediction_type=prediction_type,
        ema_decay=0.99,
        ema_warmup=True,
        lr=2e-3,
    )
    batch = {"image": image.expand(4, -1, -1, -1), "mask": mask.expand(4, -1, -1)}
    t0 = time.perf_counter()
    diffusion_steps(model, [batch], steps)
    baseline = 10 * math.log10(1.0 / float(((image - image.mean()) ** 2).mean()))
    gens = [torch.Generator().manual_seed(100 * seed + k) for k in range(8)]
    out = model.generate(mask.expand(8, -1, -1), generator=gens, sampler=sampler, num_steps=num_steps)
    psnrs = [10 * math.log10(1.0 / float(((o - image[0]) ** 2).mean())) for o in out]
    return {
        "prediction_type": prediction_type,
        "seed": seed,
        "sampler": f"{sampler}:{num_steps or 1000}",
        "psnr": [round(p, 1) for p in psnrs],
        "median": round(statistics.median(psnrs), 1),
        "min": round(min(psnrs), 1),
        "baseline": round(baseline, 1),
        "background": round(float(out[:, 0][mask.expand(8, -1, -1) == 0].mean()), 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--types", nargs="+", default=["eps", "x0", "v"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--num-steps", type=int, default=100, help="0: the full 1000-step chain")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    for kind in a.types:
        for seed in a.seeds:
            print(json.dumps(run(kind, seed, a.steps, a.sampler, a.num_steps or None)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
