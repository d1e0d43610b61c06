"""Downstream study: do synthetic volumes from varied masks help a segmenter trained on few real ones?

The paper's stated purpose for its models is data augmentation (Zhuang et al., Sec. 4, future
work); MAISI (Guo et al., 2024) reports segmentation gains from synthetic image/mask pairs with
controlled organ sizes. Here, on the built-in phantom at 64x64:

1. For each seed, N real training volumes (phantom cases drawn with that seed) and 4 held-out
   real test volumes (the same for every seed).
2. M = ``--ratio`` x N synthetic volumes: each real training mask varied with
   :func:`medsynth.masks.deform` and :func:`medsynth.masks.scale_organ` (liver, spleen, kidneys,
   stomach by log-uniform factors), then generated slice by slice by a trained synthesis model
   (``--checkpoint``; coherent volumes unless ``--independent``). A 2.5D checkpoint makes its
   volumes in order with their context (pass ``--independent`` for its own mode: each slice its
   own noise; without it the slices also share one noise).
3. A segmenter is trained for the same number of steps on the real volumes alone and on real +
   synthetic ones, and scored on the test volumes (Dice per organ over all test voxels): the
   in-domain 2-D segmenter (:class:`medsynth.models.OrganSegmenter`) on slices, or with
   ``--segmenter 3d`` a 3-D MONAI BasicUNet on stacks of ``--seg-crop-depth`` adjacent slices,
   which sees how the slices of a volume fit together (:func:`train_3d_and_score`).

Prints a Markdown table (mean +- SD over seeds), writes it with a JSON file and a bar plot.

    python benchmarks/augmentation.py --checkpoint runs/phantom/mask_guided_ddpm/checkpoints/last.ckpt
    python benchmarks/augmentation.py --checkpoint M.ckpt --num-real 2 --seeds 0 1 --seg-steps 100  # quick
    python benchmarks/augmentation.py --checkpoint M.ckpt --segmenter 3d --seg-width 8 --seg-steps 2000

The same study through nnU-Net v2 (not needed here, not run by CI): write the real cases with
``medsynth phantom``, the varied masks with ``medsynth masks``, their CT with ``medsynth
synthesize --coherent --nnunet Dataset501_Synth``, merge imagesTr/labelsTr with the real cases
and run ``nnUNetv2_plan_and_preprocess`` / ``nnUNetv2_train`` as usual (docs/synthesis.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.protocol, run from anywhere
from benchmarks import protocol  # noqa: E402
from medsynth.data import PhantomDataModule  # noqa: E402
from medsynth.data.datamodule import SliceDataset  # noqa: E402
from medsynth.data.phantom import EXTENT_MM, FOV_MM  # noqa: E402
from medsynth.data.transforms import SliceVolume  # noqa: E402
from medsynth.labels import CLASSES, ORGAN_IDS  # noqa: E402
from medsynth.masks import deform, scale_organ  # noqa: E402
from medsynth.metrics import dice_counts, dice_from_counts  # noqa: E402
from medsynth.models import OrganSegmenter  # noqa: E402
from medsynth.synthesis import generate_volumes, load_model, volume_group_size  # noqa: E402

VARIED_ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "stomach")
REPORT_ORGANS = (6, 1, 2, 3, 7, 8, 14)  # liver, spleen, kidneys, stomach, aorta, bladder
ARMS = ("real", "synthetic")  # the arms' rows: "N=n real", "N=n real+synthetic"
MIN_3D_DEPTH = 16  # the 3-D U-Net's four 2x poolings need 16 slices


def phantom_volumes(split: str, count: int, seed: int, depth: int, size: int) -> list[SliceVolume]:
    dm = PhantomDataModule(num_train_cases=0, depth=depth, image_size=size, seed=seed)
    return [dm.make_volume(split, i) for i in range(count)]


def varied_mask(volume: SliceVolume, rng: np.random.Generator, deform_mm: float) -> np.ndarray:
    """``[D, S, S]`` -> a varied ``[D, S, S]`` label map of the same case (mm from the phantom's FOV)."""
    d, s, _ = volume.mask.shape
    affine = np.diag([FOV_MM / s, FOV_MM / s, EXTENT_MM / d, 1.0])
    lab = np.moveaxis(volume.mask, 0, 2)  # [S, S, D]
    for organ in VARIED_ORGANS:
        idx = next(c.index for c in CLASSES if c.name == organ)
        if (lab == idx).sum() >= 20:
            factor = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
            try:
                lab = scale_organ(lab, affine, organ, factor)
            except ValueError:
                pass  # no room to grow there: keep the organ as it is
    lab = deform(lab, affine, deform_mm, smoothness_mm=60.0, seed=int(rng.integers(2**31)))
    return np.ascontiguousarray(np.moveaxis(lab, 2, 0))


def synthesize(
    model, mask: np.ndarray, name: str, seed: int, coherent: bool, batch: int, opts: dict
) -> np.ndarray:
    """Generate every slice of ``mask [D, S, S]`` -> float32 ``[D, S, S]`` in [0, 1].

    Per-slice noise from ``(seed, name, slice)`` (``(seed, name)`` when coherent); a 2.5D model
    makes the volume in order with its context (:func:`medsynth.synthesis.generate_volumes`).
    """
    return synthesize_many(model, [mask], [name], seed, coherent, batch, opts)[0]


@torch.no_grad()
def synthesize_many(
    model, masks: list[np.ndarray], names: list[str], seed: int, coherent: bool, batch: int, opts: dict
) -> list[np.ndarray]:
    """:func:`synthesize` for several volumes, made together where the model makes them in order
    (``volume_group_size``: a 2.5D model with previous-slice context), else one after the other."""
    group = volume_group_size(model, batch)
    out = []
    for i in range(0, len(masks), group):
        part = [torch.from_numpy(m.astype(np.int64)) for m in masks[i : i + group]]
        made = generate_volumes(
            model, part, names[i : i + group], batch_size=batch, seed=seed, coherent=coherent, **opts
        )
        out += [x.numpy().astype(np.float32) for x in made]
    return out


def train_and_score(
    train: list[SliceVolume], test: SliceDataset, seed: int, steps: int, width: int, size: int
) -> dict[int, float]:
    L.seed_everything(seed, verbose=False)
    seg = OrganSegmenter(size, model_channels=width)
    data = SliceDataset.from_volumes(train)
    loader = DataLoader(data, batch_size=min(16, len(data)), shuffle=True, drop_last=True)
    protocol.quiet_trainer("cpu", max_steps=steps).fit(seg, loader)
    counts = None
    for b in DataLoader(test, batch_size=32):
        c = dice_counts(seg.segment(b["image"]), b["mask"], seg.num_classes)
        counts = c if counts is None else counts + c
    return organ_dice(counts)


def organ_dice(counts: torch.Tensor) -> dict[int, float]:
    """Summed :func:`medsynth.metrics.dice_counts` ``[3, C]`` -> Dice per organ id; organs neither
    predicted nor present (NaN) are left out."""
    dice = dice_from_counts(counts)
    return {i: float(dice[i]) for i in ORGAN_IDS if not torch.isnan(dice[i])}


def train_3d_and_score(
    train: list[SliceVolume], test: list[SliceVolume], seed: int, steps: int, width: int, crop_depth: int
) -> dict[int, float]:
    """The 3-D arm: a MONAI BasicUNet (``spatial_dims=3``, features ``(c, c, 2c, 4c, 8c, c)``, Dice +
    cross-entropy as :class:`medsynth.models.OrganSegmenter`, Adam 1e-3) trained on batches of two
    stacks of ``crop_depth`` adjacent slices ``[2, 1, crop_depth, S, S]`` drawn from random volumes
    at random depths (seeded), then run on each whole test volume; Dice per organ over all test
    voxels (:func:`score_volumes`)."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    depth = min(v.mask.shape[0] for v in train + test)
    if not MIN_3D_DEPTH <= crop_depth <= depth:
        raise ValueError(
            f"--seg-crop-depth must lie in {MIN_3D_DEPTH}..{depth} (the volumes' depth), got {crop_depth}"
        )
    torch.manual_seed(seed)
    c = width
    net = BasicUNet(
        spatial_dims=3, in_channels=1, out_channels=len(CLASSES), features=(c, c, 2 * c, 4 * c, 8 * c, c)
    )
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    images = [torch.from_numpy(v.image) for v in train]  # each [D, S, S] float32
    masks = [torch.from_numpy(v.mask.astype(np.int64)) for v in train]  # each [D, S, S]
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        xs, ys = [], []
        for i in torch.randint(len(train), (2,), generator=gen).tolist():
            z = int(torch.randint(images[i].shape[0] - crop_depth + 1, (1,), generator=gen))
            xs.append(images[i][z : z + crop_depth])
            ys.append(masks[i][z : z + crop_depth])
        x, y = torch.stack(xs)[:, None], torch.stack(ys)[:, None]  # [2, 1, d, S, S]
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return score_volumes(lambda image: net(image[None, None]).argmax(dim=1)[0], test)


def score_volumes(
    segment: Callable[[torch.Tensor], torch.Tensor], test: list[SliceVolume]
) -> dict[int, float]:
    """Dice per organ over all voxels of ``test``: ``segment`` maps a volume's image ``[D, S, S]``
    to its label map ``[D, S, S]`` (:func:`organ_dice`)."""
    counts = None
    for vol in test:
        pred = segment(torch.from_numpy(vol.image))  # [D, S, S]
        c = dice_counts(pred, torch.from_numpy(vol.mask.astype(np.int64)), len(CLASSES))
        counts = c if counts is None else counts + c
    return organ_dice(counts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="trained synthesis model (64x64 phantom)")
    p.add_argument("--num-real", type=int, nargs="+", default=[2, 8], help="N real training volumes")
    p.add_argument("--ratio", type=int, default=4, help="synthetic volumes per real one (M = ratio x N)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--seg-steps", type=int, default=600, help="segmenter optimiser steps (both arms)")
    p.add_argument("--seg-width", type=int, default=16, help="segmenter base width (8 for --segmenter 3d)")
    p.add_argument("--segmenter", choices=("2d", "3d"), default="2d", help="the segmenter the arms train")
    p.add_argument("--seg-crop-depth", type=int, default=16, help="3d: adjacent slices per training stack")
    p.add_argument(
        "--arms",
        nargs="+",
        choices=ARMS,
        default=list(ARMS),
        help="arms to train: 'real' (real volumes alone) is the same for every synthesis model, so a "
        "second model's run can leave it out",
    )
    p.add_argument("--deform-mm", type=float, default=8.0)
    p.add_argument("--independent", action="store_true", help="slices drawn independently (not coherent)")
    p.add_argument("--sampler", default=None, help="generate() sampler (default: the model's)")
    p.add_argument("--num-steps", type=int, default=None, help="generate() steps (default: the model's)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=Path("outputs/augmentation"))
    a = p.parse_args()
    if a.segmenter == "3d" and not MIN_3D_DEPTH <= a.seg_crop_depth <= a.depth:
        p.error(f"--seg-crop-depth must lie in {MIN_3D_DEPTH}..--depth ({a.depth}), got {a.seg_crop_depth}")
    torch.set_num_threads(a.threads)
    model = load_model(a.checkpoint)
    size = model.image_size
    opts = model.generate_kwargs(num_steps=a.num_steps, sampler=a.sampler)
    test_vols = phantom_volumes("test", 4, 10_000, a.depth, size)
    test = SliceDataset.from_volumes(test_vols)
    rows: dict[str, list[dict[int, float]]] = {}
    t0 = time.perf_counter()
    for n in a.num_real:
        for seed in a.seeds:
            real = phantom_volumes("train", n, seed, a.depth, size)
            rng = np.random.default_rng([seed, n])
            masks, names = [], []
            for k in range(a.ratio * n):
                src = real[k % n]
                masks.append(varied_mask(src, rng, a.deform_mm))
                names.append(f"{src.case_id}_var{k:03d}")
            images = (
                synthesize_many(model, masks, names, seed, not a.independent, a.batch, opts)
                if "synthetic" in a.arms
                else []
            )
            synth = [SliceVolume(nm, im, m.astype(np.uint8)) for nm, im, m in zip(names, images, masks)]
            print(f"N={n} seed={seed}: {len(synth)} synthetic volumes ({time.perf_counter() - t0:.0f} s)")
            arms = {"real": ("real", real), "synthetic": ("real+synthetic", real + synth)}
            for arm, vols in (arms[k] for k in ARMS if k in a.arms):
                if a.segmenter == "3d":
                    dice = train_3d_and_score(
                        vols, test_vols, seed, a.seg_steps, a.seg_width, a.seg_crop_depth
                    )
                else:
                    dice = train_and_score(vols, test, seed, a.seg_steps, a.seg_width, size)
                rows.setdefault(f"N={n} {arm}", []).append(dice)
                mean = np.nanmean([dice.get(i, np.nan) for i in REPORT_ORGANS])
                print(f"  {arm:15s} mean Dice {mean:.3f} ({time.perf_counter() - t0:.0f} s)")
    write_report(rows, a)


def write_report(rows: dict[str, list[dict[int, float]]], a: argparse.Namespace) -> None:
    a.output.mkdir(parents=True, exist_ok=True)
    names = [CLASSES[i].name for i in REPORT_ORGANS]
    head = "| setting | mean Dice | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    summary = {}
    for key, runs in rows.items():
        per = np.array([[r.get(i, np.nan) for i in REPORT_ORGANS] for r in runs])  # [seeds, organs]
        means = np.nanmean(per, axis=1)  # per seed
        summary[key] = {
            "mean_dice": [float(m) for m in means],
            "per_organ": {n: [float(v) for v in per[:, j]] for j, n in enumerate(names)},
        }
        cells = [f"{np.nanmean(per[:, j]):.3f} ± {np.nanstd(per[:, j]):.3f}" for j in range(len(names))]
        lines.append(f"| {key} | {means.mean():.3f} ± {means.std():.3f} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    (a.output / "augmentation.md").write_text(table + "\n")
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    (a.output / "augmentation.json").write_text(json.dumps({"args": meta, "results": summary}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    keys = list(summary)
    means = [np.mean(summary[k]["mean_dice"]) for k in keys]
    sds = [np.std(summary[k]["mean_dice"]) for k in keys]
    ax.bar(
        range(len(keys)),
        means,
        yerr=sds,
        capsize=4,
        color=["#38c" if "synthetic" in k else "#999" for k in keys],
    )
    ax.set_xticks(range(len(keys)), keys, rotation=20, ha="right")
    ax.set_ylabel("mean organ Dice (test)")
    fig.tight_layout()
    fig.savefig(a.output / "augmentation.png", dpi=120)
    print(f"wrote {a.output}/augmentation.md, .json, .png")


if __name__ == "__main__":
    main()
