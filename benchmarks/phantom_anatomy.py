"""How CT-like the built-in phantom's anatomy is: field of view, organ texture, organ shape.

Per axial slice of phantom training cases, as the models see them (after the data pipeline):

- body width / height fraction: the body's extent along x / y over the slice size (abdominal CT:
  the body typically spans 70-90 % of the width at a 512-px reconstruction);
- within-organ texture SD: intensity SD inside each organ, in window units (x 400 = HU at the
  40/400 window), organs with >= 20 pixels on the slice;
- ellipse IoU: IoU of each organ's region with its moment ellipse (the ellipse with the region's
  centroid and second moments, Mahalanobis radius 2), 1.0 for an exact ellipse; lower values
  mean less regular shapes. Organs with >= 30 pixels.

Prints one JSON object (mean, min, max over slices; per organ means).

    python benchmarks/phantom_anatomy.py --cases 4 --size 64
    python benchmarks/phantom_anatomy.py --cases 4 --size 64 --irregularity 0.25
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from medsynth.data import PhantomDataModule
from medsynth.labels import BODY, CLASSES


def ellipse_iou(region: np.ndarray) -> float:
    """IoU of a boolean ``[H, W]`` region with its moment ellipse (1.0 for an exact ellipse)."""
    ys, xs = np.nonzero(region)
    pts = np.stack([ys, xs], 1).astype(np.float64)  # [N, 2]
    mu = pts.mean(0)
    cov = np.cov(pts.T, bias=True) + np.eye(2) / 12.0  # + pixel-size variance (a pixel is a unit square)
    yy, xx = np.mgrid[: region.shape[0], : region.shape[1]]
    d = np.stack([yy - mu[0], xx - mu[1]], -1)  # [H, W, 2]
    maha = np.einsum("hwi,ij,hwj->hw", d, np.linalg.inv(cov), d)
    ellipse = maha <= 4.0  # a uniform ellipse has variance (semi-axis)^2 / 4 along each axis
    return float((ellipse & region).sum() / (ellipse | region).sum())


def measure(cases: int, size: int, depth: int, irregularity: float = 0.0) -> dict:
    dm = PhantomDataModule(
        num_train_cases=cases,
        num_val_cases=0,
        num_test_cases=0,
        depth=depth,
        image_size=size,
        irregularity=irregularity,
    )
    dm.setup("fit")
    ds = dm.train_dataloader().dataset
    width, height, sds, ious = [], [], {}, {}
    for i in range(len(ds)):
        item = ds[i]
        mask, image = item["mask"].numpy(), item["image"][0].numpy()  # [S, S], [S, S]
        body = mask > 0
        if not body.any():
            continue
        cols, rows = np.nonzero(body.any(0))[0], np.nonzero(body.any(1))[0]
        width.append((cols.max() - cols.min() + 1) / size)
        height.append((rows.max() - rows.min() + 1) / size)
        for c in np.unique(mask):
            if c in (0, BODY):
                continue
            region = mask == c
            name = CLASSES[int(c)].name
            if region.sum() >= 20:
                sds.setdefault(name, []).append(float(image[region].std()))
            if region.sum() >= 30:
                ious.setdefault(name, []).append(ellipse_iou(region))

    def stats(v: list[float]) -> dict:
        return {
            "mean": round(float(np.mean(v)), 3),
            "min": round(float(np.min(v)), 3),
            "max": round(float(np.max(v)), 3),
        }

    return {
        "cases": cases,
        "irregularity": irregularity,
        "size": size,
        "slices": len(width),
        "body_width_fraction": stats(width),
        "body_height_fraction": stats(height),
        "texture_sd_window": {k: round(float(np.mean(v)), 4) for k, v in sorted(sds.items())},
        "ellipse_iou": {k: round(float(np.mean(v)), 3) for k, v in sorted(ious.items())},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--depth", type=int, default=24)
    p.add_argument("--irregularity", type=float, default=0.0, help="the phantom's lobulated outlines (0)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(measure(a.cases, a.size, a.depth, a.irregularity), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
