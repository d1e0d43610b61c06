"""Consistency along z of synthetic volumes, next to real CT of the same masks.

For held-out phantom volumes, the mean absolute difference between adjacent axial slices inside
each organ (:func:`medsynth.metrics.adjacent_slice_difference`, window units) is measured on the
real volume and on volumes synthesized from its mask, with every slice drawn independently and
in the coherent mode (``medsynth synthesize --coherent``: the same noise for every slice). The
ratio synthetic / real is reported as mean +- SD over seeds; target <= 1.5 in the coherent mode.

    python benchmarks/coherence.py --checkpoint runs/phantom/mask_guided_ddpm/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from augmentation import phantom_volumes, synthesize  # noqa: I001 - sibling benchmark module

from medsynth.labels import CLASSES
from medsynth.metrics import adjacent_slice_difference

ORGANS = (6, 1, 2, 3, 7, 8)  # liver, spleen, kidneys, stomach, aorta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--cases", type=int, default=2, help="held-out phantom volumes")
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--sampler", default=None)
    p.add_argument("--num-steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=Path("outputs/coherence"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from medsynth.synthesis import load_model

    model = load_model(a.checkpoint)
    opts = model.generate_kwargs(num_steps=a.num_steps, sampler=a.sampler)
    vols = phantom_volumes("test", a.cases, 20_000, a.depth, model.image_size)
    real = [adjacent_slice_difference(v.image, v.mask, ORGANS) for v in vols]
    ratios: dict[str, list[dict[int, float]]] = {"independent": [], "coherent": []}
    for seed in a.seeds:
        for mode in ratios:
            per_case = []
            for v, r in zip(vols, real):
                x = synthesize(model, v.mask, v.case_id, seed, mode == "coherent", a.batch, opts)
                s = adjacent_slice_difference(x, v.mask, ORGANS)
                per_case.append({c: s[c] / r[c] for c in ORGANS if r[c] > 0})
            ratios[mode].append(
                {c: float(np.nanmean([pc.get(c, np.nan) for pc in per_case])) for c in ORGANS}
            )
            mean = np.nanmean(list(ratios[mode][-1].values()))
            print(f"seed {seed} {mode:11s} synthetic/real adjacent-slice difference: {mean:.2f}")
    names = [CLASSES[c].name for c in ORGANS]
    lines = ["| slices | mean ratio | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    for mode, runs in ratios.items():
        per = np.array([[r[c] for c in ORGANS] for r in runs])  # [seeds, organs]
        m = np.nanmean(per, axis=1)
        cells = [f"{np.nanmean(per[:, j]):.2f} ± {np.nanstd(per[:, j]):.2f}" for j in range(len(ORGANS))]
        lines.append(f"| {mode} | {m.mean():.2f} ± {m.std():.2f} | " + " | ".join(cells) + " |")
    real_mean = {CLASSES[c].name: float(np.mean([r[c] for r in real])) for c in ORGANS}
    table = "\n".join(lines)
    print(table)
    print("real adjacent-slice difference (window units):", {k: round(v, 4) for k, v in real_mean.items()})
    a.output.mkdir(parents=True, exist_ok=True)
    (a.output / "coherence.md").write_text(table + "\n")
    (a.output / "coherence.json").write_text(json.dumps({"real": real_mean, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
