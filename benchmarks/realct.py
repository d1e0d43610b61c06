"""Quality protocol on a real CT: the three DDPMs, SDM and SPADE trained on one patient, scored on
its held-out slab in Hounsfield units.

The patient of ``--source`` (a CT in HU, its TotalSegmentator label volume and that volume's id ->
name table; ``../shared/data/realct`` on the development machines) becomes the nnU-Net dataset
``--dataset`` (built with :func:`medsynth.io.write_nnunet_dataset` when it is missing), split
along z as experiments/realct does: the held-out slab ``REALCT_TEST_SLAB`` (slices 20-33: liver,
spleen, both kidneys, stomach, pancreas and aorta), 4 slices left out on each side, augmented
training slices. Every method trains on ``--label-set`` labels (``totalseg``: every structure the
case labels; ``amos``: the paper's 15 organs + body) at 128x128, under one budget
(:mod:`benchmarks.protocol`: wall clock, or steps from an idle-machine ``--calibration``), and is
scored over ``--seeds`` noise seeds against the real slab (the protocol's PSNR, SSIM, segmenter
Dice and Fréchet distance; the segmenter is trained on the real training slices with AMOS labels)
and, from the images mapped back to HU through the window, with:

- ``hu/<organ>``: median HU of the synthetic pixels of the organ minus that of the real ones
  (liver, spleen, kidneys, stomach, pancreas, aorta), pooled over the slab;
- ``hu/air``: median HU outside the body (the mask's background), synthetic;
- ``hu/bone`` / ``hu/bone_real``: median HU where the TotalSegmentator labels say bone;
- ``hu/fat_body``: median HU of the body class (fat and unlabelled tissue).

Both values are clipped to the window (the paper's [-160, 240] HU clips this case's ~400 HU aorta
for real and synthetic alike). Reference rows: the real slices and class-mean painting.

``--unseen CKPT`` instead judges a trained model on anatomy it has not seen: the held-out slab's
masks varied with :mod:`medsynth.masks` (organ scaling and elastic deformation) and resampled to
another slice thickness and field of view, synthesized as volumes
(:func:`medsynth.synthesis.synthesize_volume`) with several seeds; each organ's median HU is
compared with the training case's (target: within 20 HU), and bone where the mask says bone.

    python benchmarks/realct.py --calibration outputs/realct/calibration.json --calibrate-only
    python benchmarks/realct.py --calibration outputs/realct/calibration.json --budget 40 \\
        --label-set totalseg --output outputs/realct_totalseg
    python benchmarks/realct.py --unseen outputs/realct_totalseg/checkpoints/mask_guided_ddpm_100.ckpt \\
        --output outputs/realct_unseen
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.protocol, run from anywhere
from benchmarks.protocol import (  # noqa: E402
    FRACTIONS,
    CalibrationError,
    ResumeError,
    Settings,
    aggregate,
    calibrate_methods,
    check_score_fractions,
    combine,
    fmt,
    frd_scorer,
    memorization_scorer,
    recipe_from_config,
    run_quality,
    training_images,
)
from medsynth.data import NNUNetDataModule  # noqa: E402
from medsynth.data.nnunet import REALCT_TEST_SLAB  # noqa: E402
from medsynth.labels import get_label_set  # noqa: E402

#: The organs scored in HU and Dice, by AMOS name (the segmenter's label set) -> AMOS id.
ORGANS: dict[str, int] = {
    "liver": 6,
    "spleen": 1,
    "right_kidney": 2,
    "left_kidney": 3,
    "stomach": 7,
    "pancreas": 10,
    "aorta": 8,
}
#: The organs the targets name: median HU error <= 20 and Dice >= 0.9 x the real slices'.
TARGET_HU = ("liver", "spleen", "right_kidney", "left_kidney", "aorta")
HU_TARGET = 20.0
DICE_RATIO = 0.9
#: The Dice target applies to organs the segmenter finds on the real slices (Dice >= this there):
#: an organ it misses on real CT scores near 0 for synthetic CT too, which says nothing.
SCORABLE_DICE = 0.5
#: TotalSegmentator structures counted as bone (name prefixes).
BONE_PREFIXES = (
    "vertebrae_",
    "rib_",
    "sternum",
    "sacrum",
    "hip_",
    "femur_",
    "humerus_",
    "scapula_",
    "clavicula_",
)

EXPERIMENTS = ROOT / "experiments" / "realct"


def realct_methods() -> dict[str, tuple[str, dict[str, Any]]]:
    """The methods and recipes of experiments/realct (the one place that states them)."""
    diffusion = recipe_from_config(EXPERIMENTS / "_diffusion.yaml")
    gan = recipe_from_config(EXPERIMENTS / "_gan.yaml")
    return {
        "conditional_ddpm": ("ConditionalDDPM", diffusion),
        "mask_guided_ddpm": ("MaskGuidedDDPM", diffusion),
        "edge_guided_ddpm": ("EdgeGuidedDDPM", diffusion),
        "sdm": ("SDM", {**diffusion, **recipe_from_config(EXPERIMENTS / "sdm.yaml")}),
        "spade": ("SPADE", {**gan, **recipe_from_config(EXPERIMENTS / "spade.yaml")}),
    }


def ensure_dataset(dataset: Path, source: Path | None) -> Path:
    """The nnU-Net dataset of the case, built from ``source`` (ct.nii.gz, labels.nii.gz,
    structures.csv) when it does not exist yet."""
    if (dataset / "dataset.json").is_file():
        return dataset
    if source is None:
        raise SystemExit(
            f"realct.py: {dataset} does not exist; pass --source with the case's files to build it"
        )
    from medsynth.io import DatasetPair, write_nnunet_dataset

    pair = DatasetPair(source / "ct.nii.gz", source / "labels.nii.gz", "realct")
    return write_nnunet_dataset([pair], dataset, source / "structures.csv")


def datamodule(
    root: Path,
    label_set: str,
    window: tuple[float, float],
    cache: Path | None,
    image_size: int = 128,
    batch_size: int = 8,
    augment: bool = True,
) -> NNUNetDataModule:
    """The case in ``label_set``, split and augmented as experiments/realct/_base.yaml (128x128);
    ``augment=False`` trains on the stored slices only."""
    return NNUNetDataModule(
        root,
        label_set=label_set,
        remap="by_name",
        image_size=image_size,
        batch_size=batch_size,
        num_workers=0,
        cache_dir=cache,
        test_slab=REALCT_TEST_SLAB,
        augment=augment,
        progress=False,
        window_level=window[0],
        window_width=window[1],
    )


def bone_ids(label_set_name: str = "totalseg") -> list[int]:
    """Ids of the bones in a label set (TotalSegmentator names)."""
    labels = get_label_set(label_set_name)
    return [c.index for c in labels.classes if c.name.startswith(BONE_PREFIXES)]


def _median(values: torch.Tensor) -> float:
    return float(values.double().median()) if values.numel() else float("nan")


def hu_scorer(window: tuple[float, float], organs: Mapping[str, int] = ORGANS):
    """The HU metrics of the module doc as a protocol ``extra`` scorer; ``batch["ts_mask"]``
    (TotalSegmentator labels of the same slices) gives the bone pixels."""
    level, width = window
    bones = bone_ids()

    def to_hu(x: torch.Tensor) -> torch.Tensor:
        return x.double() * width + (level - width / 2.0)

    def scores(synth: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, float]:
        fake, real = to_hu(synth[:, 0]), to_hu(batch["image"][:, 0])  # [N, H, W]
        mask = batch["mask"]
        out: dict[str, float] = {}
        for name, c in organs.items():
            region = mask == c
            out[f"hu/{name}"] = _median(fake[region]) - _median(real[region])
        out["hu/abs_max"] = float(np.nanmax([abs(out[f"hu/{n}"]) for n in TARGET_HU]))
        out["hu/air"] = _median(fake[mask == 0])
        out["hu/fat_body"] = _median(fake[mask == 16]) - _median(real[mask == 16])
        bone = torch.isin(batch["ts_mask"], torch.tensor(bones))
        out["hu/bone"] = _median(fake[bone])
        out["hu/bone_real"] = _median(real[bone])
        return out

    return scores


def add_ts_masks(batch: dict[str, Any], ts_dm: NNUNetDataModule) -> None:
    """``batch["ts_mask"]``: the TotalSegmentator labels of the evaluation slices (same keys)."""
    from benchmarks.protocol import eval_slices

    other = eval_slices(ts_dm, len(batch["keys"]))
    if other["keys"] != batch["keys"]:
        raise RuntimeError("the TotalSegmentator data module gave other evaluation slices")
    batch["ts_mask"] = other["mask"]


def targets(results: Mapping[str, Any]) -> list[str]:
    """The real-CT targets, checked for each method at 100 % of the budget (means over seeds)."""
    real, paint = results["real"], results["painting"]
    lines = []
    for name, per in results["methods"].items():
        m = per.get("1.0", {}).get("metrics")
        if m is None:
            continue
        hu = {o: m[f"hu/{o}"]["mean"] for o in TARGET_HU}
        hu_ok = [o for o, v in hu.items() if abs(v) <= HU_TARGET]
        scorable = [o for o in TARGET_HU if real[f"dice/{o}"]["mean"] >= SCORABLE_DICE]
        dice_ok = [o for o in scorable if m[f"dice/{o}"]["mean"] >= DICE_RATIO * real[f"dice/{o}"]["mean"]]
        psnr_ok = m["psnr"]["mean"] > paint["psnr"]["mean"]
        unscored = [o for o in TARGET_HU if o not in scorable]
        lines.append(
            f"{name}: median HU error <= {HU_TARGET:g} for {len(hu_ok)}/{len(TARGET_HU)} "
            f"({', '.join(f'{o} {v:+.1f}' for o, v in hu.items())}); Dice >= {DICE_RATIO:g} x real for "
            f"{len(dice_ok)}/{len(scorable)} organs the segmenter finds on real slices ({', '.join(dice_ok) or 'none'}"
            + (f"; not scorable: {', '.join(unscored)}" if unscored else "")
            + f"); PSNR {m['psnr']['mean']:.2f} {'>' if psnr_ok else '<='} painting {paint['psnr']['mean']:.2f}"
        )
    return lines


def hu_markdown(results: Mapping[str, Any]) -> str:
    """``realct.md``: the HU table (median error per organ, air, body, bone) and the targets."""
    organs = list(ORGANS)
    head = ["hu/" + o for o in organs] + ["hu/fat_body", "hu/air", "hu/bone", "hu/bone_real"]
    rows = {"real slices": results["real"], "class-mean painting": results["painting"]}
    if "painting_rich" in results:
        rows[f"class-mean painting ({results['label_set']} labels)"] = results["painting_rich"]
    rows.update({n: per["1.0"]["metrics"] for n, per in results["methods"].items() if "1.0" in per})
    level, width = results["window"]
    lines = [
        f"{results['dataset']}, held-out slices {results['test_slab'][0]}-{results['test_slab'][1] - 1}, "
        f"trained on {results['label_set']} labels, window level {level:g} / width {width:g} HU "
        f"(values clipped to [{level - width / 2:g}, {level + width / 2:g}] HU). Median HU of the synthetic minus "
        "the real pixels of each organ, pooled over the slab (mean ± SD over seeds, at 100 % of the budget); "
        "air: synthetic median outside the body; bone: median where the TotalSegmentator labels say bone.",
        "",
        "| method | " + " | ".join(h[3:] for h in head) + " |",
        "|---|" + "---|" * len(head),
    ]
    for label, m in rows.items():
        lines.append(f"| {label} | " + " | ".join(fmt(m.get(h), 1) for h in head) + " |")
    lines += ["", "Targets (median HU error, Dice against the real slices', PSNR against painting):", ""]
    lines += [f"- {t}" for t in targets(results)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- unseen anatomy
def unseen(args: argparse.Namespace) -> dict[str, Any]:
    """Synthesize varied, resampled held-out masks with a trained model; organ medians in HU."""
    import nibabel as nib

    from medsynth.data.transforms import AIR_HU, add_body_class, body_mask
    from medsynth.io import read_label_case
    from medsynth.masks import resample_labels, vary_volume
    from medsynth.synthesis import load_model as load_synthesis_model
    from medsynth.synthesis import synthesize_volume

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    root = ensure_dataset(Path(args.dataset), args.source)
    model = load_synthesis_model(args.unseen).eval()
    labels = model.label_set
    lut = get_label_set(root / "dataset.json").lookup_to(labels)  # the file's ids -> the model's, by name
    ct_img = nib.load(str(root / "imagesTr" / "realct_0000.nii.gz"))
    hu_all = np.maximum(np.asanyarray(ct_img.dataobj).astype(np.float32), AIR_HU)  # [X, Y, Z]
    stored = np.asanyarray(nib.load(str(root / "labelsTr" / "realct.nii.gz")).dataobj).astype(np.int64)
    # The model's labels with the body class derived from the CT as in training (axial slices are the
    # last array axis of this case), so that structures the model's set lacks are body, like fat.
    raw = add_body_class(lut[stored].astype(np.uint8), body_mask(hu_all), labels.body)
    # The held-out slab as a volume of its own.
    lo, hi = REALCT_TEST_SLAB
    shift = np.eye(4)
    shift[2, 3] = lo
    affine = ct_img.affine @ shift
    (out / "slab").mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(raw[:, :, lo:hi], affine), str(out / "slab" / "slab.nii.gz"))
    base = read_label_case(out / "slab" / "slab.nii.gz", label_set=labels).labels  # validated, [X, Y, Z]
    # The training case's organ medians: real HU over the training slices of the whole volume.
    # Beside them, the held-out slab's own real medians: the varied masks come from the slab, whose
    # organs are cut where they end (the kidneys' poles) and can differ from the whole organ's.
    train_z = np.r_[0 : max(0, lo - 4), hi + 4 : hu_all.shape[2]]
    bone_set = [c.index for c in labels.classes if c.name.startswith(BONE_PREFIXES)]
    names = ("liver", "spleen", "kidney_right", "kidney_left", "aorta", "stomach", "pancreas")
    structures = {n: [labels.by_name(n).index] for n in names} | ({"bone": bone_set} if bone_set else {})
    reference, slab_reference = {}, {}
    for name, ids in structures.items():
        for ref, z in ((reference, train_z), (slab_reference, np.arange(lo, hi))):
            region = np.isin(raw[:, :, z], ids)
            ref[name] = float(np.median(hu_all[:, :, z][region])) if region.any() else float("nan")
    level, width = model.window

    def in_window(v: float) -> float:  # what a real median looks like through the model's window
        return min(max(v, level - width / 2), level + width / 2)

    opts = model.generate_kwargs(sampler=args.sampler, num_steps=args.num_steps)  # a GAN takes none
    rows = []
    t0 = time.perf_counter()
    for k in range(args.variants):
        rng = np.random.default_rng([args.seed, k])
        scales = [
            ("liver", 0.8, 1.25),
            ("spleen", 0.8, 1.25),
            ("kidney_left", 0.8, 1.25),
            ("kidney_right", 0.8, 1.25),
        ]
        varied = vary_volume(
            base, affine, rng, scales=scales, deform_mm=8.0, smoothness_mm=40.0, label_set=labels
        )
        thickness = float(args.thickness[k % len(args.thickness)])
        fov = float(args.fov[k % len(args.fov)])
        spacing = (fov / ct_img.shape[0], fov / ct_img.shape[1], thickness)
        varied, new_affine = resample_labels(varied, affine, spacing, fov)
        path = out / f"varied_{k:02d}.nii.gz"
        nib.save(nib.Nifti1Image(varied, new_affine), str(path))
        vcase = read_label_case(path, label_set=labels)
        for seed in range(args.seeds):
            hu = synthesize_volume(model, vcase, seed=seed, progress=False, batch_size=16, **opts)
            row = {"variant": k, "seed": seed, "thickness_mm": thickness, "fov_mm": fov}
            for name, ref in reference.items():
                region = np.isin(varied, structures[name])
                if region.sum() == 0:
                    continue
                synth = float(np.median(hu[region]))
                row[name] = synth
                row[f"{name}_error"] = synth - in_window(ref)
            rows.append(row)
            print(f"  variant {k} ({thickness:g} mm, FOV {fov:g} mm) seed {seed}: " + ", ".join(
                f"{n} {row[n]:.0f}" for n in reference if n in row), flush=True)  # fmt: skip
    organs = [n for n in reference if any(n in r for r in rows)]
    summary = {
        n: {
            "reference_hu": reference[n],
            "reference_in_window": in_window(reference[n]),
            **aggregate([{"error": r[f"{n}_error"]} for r in rows if n in r])["error"],
            "slab_reference_hu": slab_reference[n],
            "slab_error": aggregate([{"e": r[n] - in_window(slab_reference[n])} for r in rows if n in r])[
                "e"
            ],
        }
        for n in organs
    }
    result = {
        "checkpoint": str(args.unseen),
        "label_set": labels.name,
        "window": [level, width],
        "variants": args.variants,
        "seeds": args.seeds,
        "thickness_mm": args.thickness,
        "fov_mm": args.fov,
        "sampler": args.sampler,
        "num_steps": args.num_steps,
        "seconds": time.perf_counter() - t0,
        "summary": summary,
        "rows": rows,
    }
    (out / "unseen.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Unseen anatomy: {args.variants} variants of the held-out masks (liver, spleen and kidneys scaled "
        f"0.8-1.25x in volume, elastic deformation up to 8 mm), resampled to {args.thickness} mm slices and "
        f"{args.fov} mm fields of view, {args.seeds} seeds each; {labels.name} model, window {level:g}/{width:g}.",
        "",
        "| structure | training case median HU (in window) | synthetic - reference, mean ± SD over variants x seeds | within 20 HU | held-out slab's real median HU | synthetic - slab's |",
        "|---|---|---|---|---|---|",
    ]
    for n, v in summary.items():
        ok = abs(v["mean"]) <= HU_TARGET
        slab = v["slab_error"]
        lines.append(
            f"| {n} | {v['reference_hu']:.0f} ({v['reference_in_window']:.0f}) | {v['mean']:+.1f} ± {v['sd']:.1f} | "
            f"{'yes' if ok else 'no'} | {v['slab_reference_hu']:.0f} | {slab['mean']:+.1f} ± {slab['sd']:.1f} |"
        )
    (out / "unseen.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


# ---------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "realct")
    p.add_argument("--dataset", type=Path, default=Path("datasets/Dataset700_RealCT"))
    p.add_argument("--cache", type=Path, default=None, help="slice cache folder (default: medsynth's)")
    p.add_argument("--label-set", default="totalseg", choices=["totalseg", "amos"])
    p.add_argument("--window", type=float, nargs=2, default=(40.0, 400.0), metavar=("LEVEL", "WIDTH"))
    p.add_argument("--image-size", type=int, default=128, help="slice size (128, experiments/realct's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--no-augment",
        action="store_true",
        help="train without the recipe's flips and affines (to measure them)",
    )
    p.add_argument("--methods", nargs="+", default=list(realct_methods()), choices=list(realct_methods()))
    p.add_argument("--budget", type=float, default=40.0, help="training minutes per method (40)")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--num-steps", type=int, default=100)
    p.add_argument(
        "--segmenter", default=None, help="an OrganSegmenter (AMOS labels) instead of training one"
    )
    p.add_argument("--segmenter-steps", type=int, default=1500)
    p.add_argument("--calibration", type=Path, default=None)
    p.add_argument("--calibration-steps", type=int, default=20)
    p.add_argument("--calibrate-only", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--score-fractions",
        type=float,
        nargs="+",
        default=list(FRACTIONS),
        help="the checkpoints scored, as fractions of the budget (default 0.25 0.5 1.0; 1.0 is needed)",
    )
    p.add_argument("--no-frd", action="store_true", help="leave FRD out (it needs medsynth[frd])")
    p.add_argument(
        "--reuse-checkpoints",
        action="store_true",
        help="score checkpoints a stopped run left in OUTPUT/checkpoints at this budget's steps",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default="outputs/realct")
    p.add_argument(
        "--unseen", type=Path, default=None, metavar="CKPT", help="judge CKPT on varied held-out masks"
    )
    p.add_argument("--variants", type=int, default=4)
    p.add_argument("--thickness", type=float, nargs="+", default=[3.0, 5.0])
    p.add_argument("--fov", type=float, nargs="+", default=[330.0, 400.0])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.calibrate_only and a.calibration is None:
        p.error("--calibrate-only needs --calibration FILE")
    try:
        check_score_fractions(a.score_fractions)
    except ValueError as e:
        p.error(f"--score-fractions: {e}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.unseen is not None:
        unseen(args)
        return 0
    root = ensure_dataset(args.dataset, args.source)
    window = tuple(args.window)
    sizes = {"image_size": args.image_size, "batch_size": args.batch_size}
    train_dm = datamodule(root, args.label_set, window, args.cache, **sizes, augment=not args.no_augment)
    score_dm = train_dm if args.label_set == "amos" else datamodule(root, "amos", window, args.cache, **sizes)
    ts_dm = (
        train_dm
        if args.label_set == "totalseg"
        else datamodule(root, "totalseg", window, args.cache, **sizes)
    )
    s = Settings(
        budget_min=args.budget,
        seeds=args.seeds,
        num_eval=None,
        sampler=args.sampler,
        num_steps=args.num_steps,
        label_set=args.label_set,
        segmenter=args.segmenter,
        segmenter_steps=args.segmenter_steps,
        resume=args.resume,
        reuse_checkpoints=args.reuse_checkpoints,
        calibration=args.calibration,
        calibration_steps=args.calibration_steps,
        score_fractions=tuple(args.score_fractions),
    )
    table = realct_methods()
    try:
        if args.calibrate_only:
            train_dm.prepare_data()
            calibrate_methods(args.methods, s, train_dm, table)
            return 0
        ts_dm.prepare_data()
        results = run_quality(
            s,
            args.methods,
            args.output,
            score_dm,
            train_dm,
            table=table,
            organs=ORGANS,
            header={
                "dataset": f"Real CT {args.image_size}x{args.image_size} ({root.name})",
                "window": list(window),
                "test_slab": list(REALCT_TEST_SLAB),
                "augment": not args.no_augment,
            },
            extra=combine(
                hu_scorer(window),
                None if args.no_frd else frd_scorer(window),
                memorization_scorer(training_images(train_dm)),
            ),
            batch_hook=lambda batch: add_ts_masks(batch, ts_dm),
        )
    except (ResumeError, CalibrationError) as e:
        print(f"realct.py: error: {e}", file=sys.stderr)
        return 2
    (Path(args.output) / "realct.md").write_text(hu_markdown(results))
    print(hu_markdown(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
