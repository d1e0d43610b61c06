"""How many slices does FRD need? Its spread over random subsets of N slices of two fixed sets.

FRD (:mod:`medsynth.metrics.frd`) fits Gaussians to ~400 radiomics features, so with few slices
it is noisy and biased. This benchmark fixes a reference pool, the real test slices of the 64x64
phantom (``--cases`` cases of ``--depth`` slices), and three comparison pools:

- ``real, other cases``: the real slices of as many other (validation) cases: the floor;
- ``noise 8 HU``: the test slices plus Gaussian noise of SD 0.02 (8 HU), clipped to [0, 1];
- ``class-mean painting``: each test mask painted with its classes' mean training intensity.

Radiomics features are extracted once per slice; then, for each N of ``--sizes`` and each of
``--repeats`` draws, N slices are drawn without replacement from the reference pool and,
independently, N from the comparison pool, and FRD is computed. Prints, per comparison and N,
the mean, SD, min and max over the draws next to the FRD of the whole pools, and writes
``frd_stability.md`` / ``.json`` to ``--output``. N is stable enough where the SD is small next
to the gaps between the comparisons.

    python benchmarks/frd_stability.py                                      # 256 slices per pool, ~4 min of features
    python benchmarks/frd_stability.py --cases 1 --depth 12 --image-size 32 --sizes 4 8 --repeats 3   # seconds
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsynth.data import PhantomDataModule
from medsynth.metrics import class_mean_painting, frd_from_features, radiomics_features, region_sums

NOISE_SD = 0.02  # window units: 8 HU


def pools(cases: int, depth: int, image_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The reference pool ``real`` and the comparison pools, ``[N, 1, H, W]`` in [0, 1] each."""
    dm = PhantomDataModule(
        num_train_cases=max(cases, 2),
        num_val_cases=cases,
        num_test_cases=cases,
        depth=depth,
        image_size=image_size,
        seed=seed,
    )
    dm.setup("fit")
    dm.setup("test")

    def stack(split: str, key: str) -> torch.Tensor:
        ds = dm.datasets[split]
        return torch.stack([ds[i][key] for i in range(len(ds))])

    real, mask = stack("test", "image"), stack("test", "mask")
    sums = region_sums(stack("train", "image"), stack("train", "mask"))
    means = torch.where(sums[1] > 0, sums[0] / sums[1].clamp(min=1), torch.full_like(sums[0], float("nan")))
    g = torch.Generator().manual_seed(seed)
    return {
        "real": real,
        "real, other cases": stack("val", "image"),
        "noise 8 HU": (real + NOISE_SD * torch.randn(real.shape, generator=g)).clamp(0.0, 1.0),
        "class-mean painting": class_mean_painting(mask, means),
    }


def subset_frd(
    reference: np.ndarray, other: np.ndarray, sizes: Sequence[int], repeats: int, rng: np.random.Generator
) -> dict[int, list[float]]:
    """FRD of ``repeats`` random draws of N reference and N other feature rows, per N."""
    out: dict[int, list[float]] = {}
    for n in sizes:
        if not 2 <= n <= min(len(reference), len(other)):
            raise ValueError(f"--sizes: {n} outside 2..{min(len(reference), len(other))} (the pool sizes)")
        out[n] = [
            frd_from_features(
                reference[rng.choice(len(reference), n, replace=False)],
                other[rng.choice(len(other), n, replace=False)],
            )
            for _ in range(repeats)
        ]
    return out


def summarize(values: Mapping[int, Sequence[float]]) -> dict[int, dict[str, float]]:
    """``{N: {"mean", "sd", "min", "max"}}`` (sample SD; 0 for one draw)."""
    out = {}
    for n, v in values.items():
        a = np.asarray(v, np.float64)
        sd = float(a.std(ddof=1)) if len(a) > 1 else 0.0
        out[n] = {"mean": float(a.mean()), "sd": sd, "min": float(a.min()), "max": float(a.max())}
    return out


def markdown(result: Mapping[str, Any]) -> str:
    lines = [
        f"FRD v1 over random subsets ({result['repeats']} draws per N; reference pool: real test slices, "
        f"{result['pool_size']} per pool, {result['image_size']}x{result['image_size']})",
        "",
        "| Comparison | N | mean | SD | min | max | whole pools |",
        "|:---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, comp in result["comparisons"].items():
        for n, s in comp["subsets"].items():
            lines.append(
                f"| {name} | {n} | {s['mean']:.3f} | {s['sd']:.3f} | {s['min']:.3f} | {s['max']:.3f} | "
                f"{comp['whole']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=8, help="phantom cases per pool (8)")
    p.add_argument("--depth", type=int, default=32, help="slices per case (32)")
    p.add_argument("--image-size", type=int, default=64, help="slice size (64, the phantom protocol)")
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128], help="subset sizes N")
    p.add_argument("--repeats", type=int, default=20, help="random draws per N (20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=Path("outputs/frd_stability"))
    a = p.parse_args(argv)
    if a.repeats < 1 or a.cases < 1 or a.depth < 1:
        p.error("--repeats, --cases and --depth must be positive")
    pool_size = a.cases * a.depth
    if max(a.sizes) > pool_size or min(a.sizes) < 2:
        p.error(f"--sizes must lie in 2..{pool_size} (--cases x --depth slices per pool)")
    t0 = time.time()
    images = pools(a.cases, a.depth, a.image_size, a.seed)
    feats = {name: radiomics_features(x) for name, x in images.items()}  # [pool, D] each
    print(
        f"radiomics features of {len(images)} pools x {pool_size} slices: {time.time() - t0:.0f} s",
        flush=True,
    )
    rng = np.random.default_rng(a.seed)
    comparisons = {}
    for name in images:
        if name == "real":
            continue
        comparisons[name] = {
            "whole": frd_from_features(feats["real"], feats[name]),
            "subsets": summarize(subset_frd(feats["real"], feats[name], a.sizes, a.repeats, rng)),
        }
    result = {
        "pool_size": pool_size,
        "image_size": a.image_size,
        "repeats": a.repeats,
        "seed": a.seed,
        "comparisons": comparisons,
    }
    text = markdown(result)
    print(text)
    a.output.mkdir(parents=True, exist_ok=True)
    (a.output / "frd_stability.md").write_text(text)
    (a.output / "frd_stability.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
