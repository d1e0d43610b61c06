"""Partial masks: does mask-ablated training (``organ_dropout``) keep generation faithful to the organs given?

A user's mask often has only the organs they annotated. SegGuidedDiff (Konz et al., MICCAI 2024)
trains with each structure dropped at random (its pixels become body) so that the model does not
rely on every organ being labelled. Here, on the 64x64 phantom (the split of quality.py):

1. Two mask-guided DDPMs with the phantom recipe (experiments/phantom/_diffusion.yaml), trained
   for ``--budget`` minutes each from the same seed: ``organ_dropout`` 0 and ``--dropout``.
2. Test slices (``--num-eval`` spread over the 4 test cases), sampled with ``--seeds`` noise
   seeds from (a) the full masks and (b) partial masks: on each slice, half of the organs present
   (rounded down; a fixed random choice per slice) relabelled body.
3. Scored on the organs the mask keeps: per-organ mean-intensity error against the real slice
   (liver, spleen, kidneys, stomach, aorta; window units) and in-domain segmenter Dice (the
   segmenter of quality.py, trained on the real slices). For a removed organ, its slices are left
   out of its Dice (the model may rightly paint it inside the body), so Dice asks "is every
   given organ where the mask says", next to the same Dice of the real slices.

Prints a Markdown table (mean +- SD over seeds) and writes it with a JSON file to ``--output``.

    python benchmarks/partial_masks.py                         # 2 x 15 min training, ~12 min more
    python benchmarks/partial_masks.py --budget 0.2 --num-eval 8 --seeds 2   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.protocol, run from anywhere
from benchmarks.protocol import (  # noqa: E402  the protocol's split, recipe, segmenter, sampling, scores
    DIFFUSION_RECIPE,
    TARGET_ORGANS,
    SegmenterFeatures,
    aggregate,
    atomic_write,
    eval_slices,
    fmt,
    organ_scores,
    phantom,
    synthesize,
    train_method,
    train_segmenter,
)
from medsynth.labels import BODY, NUM_CLASSES, ORGAN_IDS  # noqa: E402
from medsynth.metrics import background_mean, dice_counts, dice_from_counts, organ_intensity_error  # noqa: E402
from medsynth.models import MaskGuidedDDPM  # noqa: E402


def partial_masks(mask: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Half of each slice's organs relabelled body -> (partial ``[N, H, W]``, removed ``[N, C]`` bool)."""
    out = mask.clone()
    removed = torch.zeros(len(mask), NUM_CLASSES, dtype=torch.bool)
    for n in range(len(mask)):
        present = [c for c in ORGAN_IDS if bool((mask[n] == c).any())]
        rng = np.random.default_rng([seed, n])
        for c in rng.choice(present, size=len(present) // 2, replace=False) if len(present) >= 2 else []:
            out[n][mask[n] == int(c)] = BODY
            removed[n, int(c)] = True
    return out, removed


def kept_dice(labels: torch.Tensor, mask: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Dice per class over the slices where that class was not removed, float64 ``[C]``."""
    counts = torch.stack(
        [dice_counts(labels[n], mask[n], NUM_CLASSES) for n in range(len(mask))]
    )  # [N, 3, C]
    keep = (~removed).to(counts.dtype)[:, None, :]  # [N, 1, C]
    return dice_from_counts((counts * keep).sum(0))


def score(
    images: torch.Tensor, batch: dict, mask: torch.Tensor, removed: torch.Tensor, features: SegmenterFeatures
) -> dict[str, float]:
    """Background mean and the target organs' intensity errors and kept Dice of ``images`` ``[N, 1, H, W]``."""
    err = organ_intensity_error(images, batch["image"], mask)
    labels, _ = features(images)
    return {
        "background": background_mean(images, mask),
        **organ_scores(err, kept_dice(labels, mask, removed), TARGET_ORGANS),
    }


def train(dropout: float, dm, budget: float, out: Path) -> dict[str, Any]:
    """A mask-guided DDPM with ``organ_dropout=dropout`` trained ``budget`` minutes; its checkpoint
    is ``<out>/mask_guided_dropout<dropout>_100.ckpt``."""
    torch.manual_seed(0)
    model = MaskGuidedDDPM(image_size=64, organ_dropout=dropout, **DIFFUSION_RECIPE)
    info = train_method(model, f"mask_guided_dropout{dropout:g}", dm, out, minutes=budget, fractions=(1.0,))
    return {"model": model.eval(), "steps": info[1.0]["step"], "seconds": round(info[1.0]["seconds"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=15.0, help="training minutes per model (15)")
    p.add_argument("--dropout", type=float, default=0.5, help="organ_dropout of the ablated model (0.5)")
    p.add_argument("--seeds", type=int, default=3, help="noise seeds 0..n-1 (3)")
    p.add_argument("--num-eval", type=int, default=32, help="test slices (32)")
    p.add_argument("--num-steps", type=int, default=100, help="ancestral steps (100, the default sampler)")
    p.add_argument("--segmenter-steps", type=int, default=600)
    p.add_argument("--output", type=Path, default=Path("outputs/partial_masks"))
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.budget <= 0 or a.seeds < 1 or not 0.0 < a.dropout < 1.0:
        p.error("--budget and --seeds must be positive and --dropout in (0, 1)")
    if a.threads:
        torch.set_num_threads(a.threads)
    a.output.mkdir(parents=True, exist_ok=True)
    dm = phantom()
    batch = eval_slices(dm, a.num_eval)
    full = batch["mask"]
    part, removed = partial_masks(full)
    none_removed = torch.zeros_like(removed)
    seg = SegmenterFeatures(train_segmenter(dm, a.segmenter_steps, a.budget, "cpu"))
    rows: dict[str, dict] = {}
    for cond, mask, rem in (("full", full, none_removed), ("partial", part, removed)):
        rows[f"real slices ({cond} masks)"] = aggregate([score(batch["image"], batch, mask, rem, seg)])
    info = {}
    for dropout in (0.0, a.dropout):
        trained = train(dropout, dm, a.budget, a.output)
        model = trained.pop("model")
        info[f"organ_dropout={dropout:g}"] = trained
        print(f"organ_dropout={dropout:g}: {trained}", flush=True)
        opts = {"sampler": "ddpm", "num_steps": a.num_steps}
        for cond, mask, rem in (("full", full, none_removed), ("partial", part, removed)):
            runs = []
            for seed in range(a.seeds):
                images = synthesize(model, {"mask": mask, "keys": batch["keys"]}, seed, opts)
                runs.append(score(images, batch, mask, rem, seg))
            rows[f"organ_dropout={dropout:g} ({cond} masks)"] = aggregate(runs)
            print(
                f"  {cond}: dice/mean {fmt(rows[f'organ_dropout={dropout:g} ({cond} masks)']['dice/mean'], 3)}",
                flush=True,
            )
    lines = [
        "| model (masks) | background | organ err mean | organ err max | Dice mean (kept organs) | "
        + " | ".join(f"Dice {n}" for n in TARGET_ORGANS)
        + " |",
        "|" + "---|" * (5 + len(TARGET_ORGANS)),
    ]
    for key, agg in rows.items():
        lines.append(
            f"| {key} | {fmt(agg['background'], 3)} | {fmt(agg['err/mean'], 3)} | {fmt(agg['err/max'], 3)} | "
            f"{fmt(agg['dice/mean'], 3)} | "
            + " | ".join(fmt(agg[f"dice/{n}"], 3) for n in TARGET_ORGANS)
            + " |"
        )
    table = "\n".join(lines)
    print(table)
    present = sum(int((full[n] == c).any()) for n in range(len(full)) for c in ORGAN_IDS)
    atomic_write(a.output / "partial_masks.md", table + "\n")
    meta = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    atomic_write(
        a.output / "partial_masks.json",
        json.dumps(
            {"args": meta, "training": info, "removed_organ_slices": int(removed.sum()), "results": rows},
            indent=1,
        ),
    )
    print(f"partial masks: {int(removed.sum())} of {present} organ instances (slice, organ) removed")
    print(f"wrote {a.output}/partial_masks.md, .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
