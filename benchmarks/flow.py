"""Rectified flow against Improved DDPM, on the phantom or a real CT: quality at 1 to 32 network
evaluations.

Takes two checkpoints of one method (e.g. MaskGuidedDDPM) trained for the same budget: a rectified
flow (``process="rflow"``, experiments/<data>/<method>_rflow.yaml) and the DDPM
(experiments/<data>/<method>.yaml). It samples evaluation slices (one generator per slice,
``--seeds`` seeds) with the flow's Euler and Heun samplers at ``--nfe`` network evaluations (1, 2,
4, 8, 16, 32; Heun from 3: at 1 and 2 it is Euler, its last step always being one), and with the DDPM's ancestral sampler at
``--ddpm-settings`` (100 steps) and at the reference ``--reference`` (the paper's 1000-step chain,
over ``--reference-seeds`` seeds). Every setting is scored as the quality protocol scores a method:
PSNR and SSIM against the real slice, the per-organ mean-intensity error, the in-domain
segmenter's Dice and the Fréchet distance of its features (NOT FID: comparable only within one
table), mean ± SD over seeds.

``--data phantom`` (default): ``--num-eval`` slices of the phantom's test split, as
benchmarks/quality.py. ``--data realct``: the held-out slab of the real case of ``--dataset``, as
benchmarks/realct.py scores it (segmenter on AMOS labels, the models generating from their own
label set, the CT window theirs) with its HU errors per organ (``hu/<organ>``, ``hu/abs_max``).

"within 2 %" compares a setting with the reference chain: Dice and organ error as quality.py's
``within_2pct`` (|Dice - Dice_ref| <= 2 % of Dice_ref; error <= 1.02 err_ref + 0.002 window units),
and FD <= 1.02 FD_ref (lower FD is better). Writes ``flow.md`` and ``flow.json`` to ``--output``
(refused when they exist there; written atomically). Seconds per slice are the wall clock of
this run's device, comparable only within one table.

``--reflow`` adds a third model: the flow fine-tuned on its own (noise, sample) pairs
(``medsynth reflow``, experiments/<data>/mask_guided_ddpm_reflow.yaml), sampled with Euler at
``--reflow-nfe`` (1, 2, 4) and judged against the same reference. With ``--reuse-rows`` and
``--samplers`` left empty only the reflow rows are sampled.

``--reuse-rows`` takes rows of an earlier ``flow.json`` of the same comparison (same data, method,
checkpoints, segmenter, slices and seeds; its real-slice scores, recomputed here, must match): its
DDPM rows (the reference chain is the slow part) and its flow rows of samplers that ``--samplers``
does not name; the flow rows of ``--samplers`` are sampled anew. To rerun one sampler, e.g.
``--samplers heun --reuse-rows old/flow.json``. Reused rows keep their seconds per slice (that
run's device); ``flow.json`` names the file.

    python benchmarks/flow.py --flow runs/phantom/mask_guided_ddpm_rflow/checkpoints/last.ckpt \\
        --ddpm runs/phantom/mask_guided_ddpm/checkpoints/last.ckpt \\
        --segmenter outputs/quality/checkpoints/segmenter.pt --gpu --output outputs/flow/mask_guided
    python benchmarks/flow.py --data realct --dataset datasets/Dataset700_RealCT \\
        --flow runs/realct/mask_guided_ddpm_rflow/checkpoints/last.ckpt \\
        --ddpm outputs/realct_totalseg/checkpoints/mask_guided_ddpm_100.ckpt \\
        --segmenter outputs/realct_totalseg/checkpoints/segmenter.pt --output outputs/flow/realct
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.protocol, run from anywhere
from benchmarks.protocol import (  # noqa: E402  (the scoring protocol of the quality benchmark)
    TARGET_ORGANS,
    SegmenterFeatures,
    aggregate,
    eval_slices,
    fmt,
    load_segmenter,
    phantom,
    reference_rows,
    score,
    synthesize,
    within_2pct,
)
from benchmarks.protocol.scoring import Extra  # noqa: E402
from medsynth.diffusion import FLOW_SAMPLERS  # noqa: E402
from medsynth.synthesis import load_model  # noqa: E402

NFE: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


def within(metrics: Mapping[str, Any], ref: Mapping[str, Any]) -> bool:
    """Organ error and Dice within 2 % of the reference (quality.py's rule), and FD <= 1.02 FD_ref."""
    return within_2pct(metrics, ref) and metrics["frechet_seg"]["mean"] <= 1.02 * ref["frechet_seg"]["mean"]


def settings(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """``(model, sampler, nfe)`` in table order: the DDPM's reference and settings, then the flow's."""
    rows = []
    if args.ddpm:
        rows += [("ddpm", s, n) for s, n in (*args.reference, *args.ddpm_settings)]
    rows += [("flow", s, n) for s in args.samplers for n in args.nfe if not (s == "heun" and n < 3)]
    if args.reflow:
        rows += [("reflow", "euler", n) for n in args.reflow_nfe]
    return rows


#: Table order of the models.
MODELS: tuple[str, ...] = ("ddpm", "flow", "reflow")


def load_pair(args: argparse.Namespace) -> dict[str, Any]:
    """The flow (and DDPM) models, checked to be one method with the expected processes."""
    models = {"flow": load_model(args.flow, map_location=args.device).eval()}
    if args.reflow:
        models["reflow"] = load_model(args.reflow, map_location=args.device).eval()
    for name in ("flow", "reflow"):
        if name in models and models[name].hparams.get("process", "ddpm") != "rflow":
            raise ValueError(
                f"--{name} {getattr(args, name)}: a DDPM checkpoint (process 'ddpm'); give a process='rflow' model"
            )
    if args.reflow:
        for what, get in (
            ("method", lambda m: type(m).__name__),
            ("image_size", lambda m: m.image_size),
            ("label set", lambda m: m.label_set.name),
            ("CT window", lambda m: tuple(m.window)),
        ):
            if get(models["flow"]) != get(models["reflow"]):
                raise ValueError(f"--flow has {what} {get(models['flow'])}, --reflow {get(models['reflow'])}")
    if args.ddpm:
        models["ddpm"] = load_model(args.ddpm, map_location=args.device).eval()
        if models["ddpm"].hparams.get("process", "ddpm") != "ddpm":
            raise ValueError(f"--ddpm {args.ddpm}: a rectified-flow checkpoint; give a process='ddpm' model")
        a, b = type(models["flow"]).__name__, type(models["ddpm"]).__name__
        if a != b:
            raise ValueError(f"--flow is a {a}, --ddpm a {b}: compare one method's two processes")
        for what, get in (
            ("image_size", lambda m: m.image_size),
            ("label set", lambda m: m.label_set.name),
            ("CT window", lambda m: tuple(m.window)),
        ):
            if get(models["flow"]) != get(models["ddpm"]):
                raise ValueError(f"--flow has {what} {get(models['flow'])}, --ddpm {get(models['ddpm'])}")
    return models


def evaluation_data(
    args: argparse.Namespace, model: Any
) -> tuple[Any, dict[str, Any], Mapping[str, int], Extra | None]:
    """The data module the segmenter scores in, the evaluation slices, the organs scored and the
    extra scorer: the phantom's test slices, or the real case's held-out slab (with HU errors)."""
    if args.data == "phantom":
        dm = phantom(image_size=model.image_size)
        return dm, eval_slices(dm, args.num_eval), TARGET_ORGANS, None
    from benchmarks.realct import ORGANS, add_ts_masks, datamodule, ensure_dataset, hu_scorer

    root = ensure_dataset(args.dataset, None)
    window = tuple(float(v) for v in model.window)
    dms = {
        name: datamodule(root, name, window, args.cache, image_size=model.image_size)
        for name in dict.fromkeys(("amos", model.label_set.name, "totalseg"))
    }
    for dm in dms.values():
        dm.prepare_data()  # the slice cache (once per label set)
    batch = eval_slices(dms["amos"], None)  # the whole held-out slab
    gen = eval_slices(dms[model.label_set.name], None)
    if gen["keys"] != batch["keys"]:
        raise RuntimeError("the model's and the segmenter's label sets gave different test slices")
    batch["gen_mask"] = gen["mask"]
    add_ts_masks(batch, dms["totalseg"])
    return dms["amos"], batch, ORGANS, hu_scorer(window)


#: What must agree between an earlier flow.json and this run for its rows to be reused.
SAME_RUN: tuple[str, ...] = (
    "method",
    "data",
    "data_name",
    "image_size",
    "flow",
    "ddpm",
    "segmenter",
    "num_eval",
    "seeds",
    "reference_seeds",
    "reference",
)


def reusable_rows(path: Path, results: Mapping[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The rows of the earlier run ``path``, by ``(model, sampler, nfe)``, after checking it is this
    comparison: the fields of :data:`SAME_RUN` equal, and the real slices' scores (the slices and the
    segmenter: Dice, HU) equal to those just computed. Raises ValueError naming the first difference."""
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--reuse-rows {path}: not a readable flow.json ({e})") from e
    for key in SAME_RUN:
        if old.get(key) != results[key]:
            raise ValueError(
                f"--reuse-rows {path}: {key} is {old.get(key)!r} there, {results[key]!r} in this run"
            )
    mine, theirs = results["real"], old.get("real", {})
    for k, v in mine.items():
        if k == "frechet_seg":  # real training slices against the test slices: not what is checked here
            continue
        a, b = theirs.get(k, {}).get("mean"), v["mean"]
        if a is None or not (
            a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6 * max(1.0, abs(b))
        ):
            raise ValueError(
                f"--reuse-rows {path}: the real slices score {k} = {theirs.get(k, {}).get('mean')} there, "
                f"{v['mean']} here (other slices or another segmenter)"
            )
    results["reused_from"] = str(path)
    return {(r["model"], r["sampler"], r["nfe"]): r for r in old["rows"]}


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown(results: Mapping[str, Any]) -> str:
    cols = [
        ("PSNR", "psnr", 2),
        ("SSIM", "ssim", 3),
        ("organ err mean", "err/mean", 3),
        ("organ err max", "err/max", 3),
        ("Dice", "dice/mean", 3),
        ("FD (segmenter)", "frechet_seg", 4),
    ]
    if results["data"] == "realct":
        cols.append(("max abs HU err", "hu/abs_max", 1))
    rule = (
        f"'within 2%' of the DDPM's {results['reference']}: Dice within 2%, organ error <= 1.02 ref + 0.002, "
        "FD <= 1.02 ref"
        if results["reference"]
        else "no DDPM given, so no 'within 2%' verdicts"
    )
    lines = [
        f"{results['method']} on {results['data_name']} ({results['image_size']} px), {results['num_eval']} "
        f"test slices, seeds {results['seeds']} (reference: {results['reference_seeds']}); mean ± SD over seeds; "
        f"device {results['device']}. Flow: {results['flow']}; "
        f"DDPM: {results['ddpm'] or '—'}."
        + (f" Reflow: {results['reflow']}." if results.get("reflow") else "")
        + f" {rule}. FD (segmenter) is NOT FID: comparable only within this table."
        + (
            f" Rows of {results['reused_from']} reused (the DDPM's and other samplers'; their s/slice from that run)."
            if results.get("reused_from")
            else ""
        ),
        "",
        "| model | sampler | NFE | s/slice | " + " | ".join(c[0] for c in cols) + " | within 2% |",
        "|---|---|---|---|" + "---|" * len(cols) + "---|",
    ]
    for label, key in (("real slices", "real"), ("class-mean painting", "painting")):
        lines.append(
            f"| {label} | — | — | — | "
            + " | ".join(fmt(results[key].get(k), d) for _, k, d in cols)
            + " | — |"
        )
    for r in results["rows"]:
        m = r["metrics"]
        lines.append(
            f"| {r['model']} | {r['sampler']} | {r['nfe']} | {r['seconds_per_slice']:.4f} | "
            + " | ".join(fmt(m.get(k), d) for _, k, d in cols)
            + f" | {r['within_2pct']} |"
        )
    best = results.get("fewest_nfe_within_2pct")
    lines += [
        "",
        f"Fewest flow evaluations within 2% of the reference: {best or 'none of the settings run'}.",
    ]
    if results.get("reflow"):
        best = results.get("fewest_reflow_nfe_within_2pct")
        lines.append(
            f"Fewest reflow evaluations within 2% of the reference: {best or 'none of the settings run'}."
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.output)
    for name in ("flow.json", "flow.md"):
        if (out / name).exists():
            raise FileExistsError(f"--output {out} already holds {name}; choose another --output")
    models = load_pair(args)  # before any sampling: a wrong pair fails here
    seg = load_segmenter(args.segmenter).to(args.device)
    dm, batch, organs, extra = evaluation_data(args, models["flow"])
    features = SegmenterFeatures(seg)
    real_feats, real_row, painting_row = reference_rows(dm, batch, features, args.device, organs, extra)
    ref_label = f"{args.reference[0][0]}:{args.reference[0][1]}" if args.ddpm else None
    results: dict[str, Any] = {
        "method": type(models["flow"]).__name__,
        "data": args.data,
        "data_name": "the phantom"
        if args.data == "phantom"
        else f"real CT ({args.dataset.name}, held-out slab, labels {models['flow'].label_set.name})",
        "image_size": models["flow"].image_size,
        "flow": str(args.flow),
        "ddpm": str(args.ddpm) if args.ddpm else None,
        "reflow": str(args.reflow) if args.reflow else None,
        "segmenter": str(args.segmenter),
        "num_eval": len(batch["mask"]),
        "seeds": list(range(args.seeds)),
        "reference_seeds": list(range(args.reference_seeds or args.seeds)),
        "device": torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"cpu, {torch.get_num_threads()} threads",
        "reference": ref_label,
        "real": aggregate([real_row]),
        "painting": aggregate([painting_row]),
        "rows": [],
    }
    earlier = reusable_rows(args.reuse_rows, results) if args.reuse_rows else {}
    ref = None
    for i, (model_name, sampler, nfe) in enumerate(settings(args)):
        model = models[model_name]
        if model_name == "ddpm" and (model_name, sampler, nfe) in earlier:
            row = dict(earlier[(model_name, sampler, nfe)])
            if ref is None:
                ref, row["within_2pct"] = row["metrics"], "reference"
            else:
                row["within_2pct"] = "yes" if within(row["metrics"], ref) else "no"
            results["rows"].append(row)
            print(f"  {model_name} {sampler}:{nfe} reused from {args.reuse_rows}", flush=True)
            continue
        seeds = results["reference_seeds"] if i == 0 and args.ddpm else results["seeds"]
        t0 = time.perf_counter()
        per_seed = []
        for s in seeds:
            synth = synthesize(model, batch, s, {"sampler": sampler, "num_steps": nfe})
            per_seed.append(score(synth, batch, features, real_feats, organs, extra))
        metrics = aggregate(per_seed)
        row = {
            "model": model_name,
            "sampler": sampler,
            "nfe": nfe,
            "seconds_per_slice": (time.perf_counter() - t0) / (len(seeds) * len(batch["mask"])),
            "metrics": metrics,
            "per_seed": per_seed,
        }
        if ref is None and args.ddpm:
            ref, row["within_2pct"] = metrics, "reference"
        else:
            row["within_2pct"] = "n/a" if ref is None else ("yes" if within(metrics, ref) else "no")
        results["rows"].append(row)
        print(
            f"  {model_name} {sampler}:{nfe} "
            + json.dumps(
                {k: round(metrics[k]["mean"], 4) for k in ("psnr", "err/mean", "dice/mean", "frechet_seg")}
            )
            + f" within 2%: {row['within_2pct']}",
            flush=True,
        )
    kept = [r for k, r in earlier.items() if k[0] == "flow" and k[1] not in args.samplers]
    for r in kept:  # the other samplers' rows of the earlier run, judged against this reference
        r = dict(r, within_2pct="n/a" if ref is None else ("yes" if within(r["metrics"], ref) else "no"))
        results["rows"].append(r)
    results["rows"].sort(  # stable: the DDPM rows first, in their order; then per model and sampler by NFE
        key=lambda r: (
            (0, 0, 0)
            if r["model"] == "ddpm"
            else (MODELS.index(r["model"]), FLOW_SAMPLERS.index(r["sampler"]), r["nfe"])
        )
    )
    for model_name, key in (("flow", "fewest_nfe_within_2pct"), ("reflow", "fewest_reflow_nfe_within_2pct")):
        passing = [r for r in results["rows"] if r["model"] == model_name and r["within_2pct"] == "yes"]
        if passing:
            best = min(passing, key=lambda r: r["nfe"])
            results[key] = f"{best['sampler']} at {best['nfe']}"
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "flow.json", json.dumps(results, indent=2, default=float))
    write_atomic(out / "flow.md", markdown(results))
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--flow", required=True, type=Path, help="checkpoint of the rectified-flow model")
    p.add_argument("--ddpm", type=Path, default=None, help="checkpoint of the same method trained as a DDPM")
    p.add_argument(
        "--segmenter",
        required=True,
        type=Path,
        help="OrganSegmenter: quality.py's segmenter.pt or a checkpoint",
    )
    p.add_argument(
        "--nfe", type=int, nargs="+", default=list(NFE), help="flow network evaluations (1 2 4 8 16 32)"
    )
    p.add_argument(
        "--samplers",
        nargs="*",
        default=list(FLOW_SAMPLERS),
        choices=FLOW_SAMPLERS,
        help="the flow's samplers (none: only DDPM/reflow rows, the flow's reused with --reuse-rows)",
    )
    p.add_argument(
        "--reflow", type=Path, default=None, help="checkpoint of the flow fine-tuned on its reflow pairs"
    )
    p.add_argument(
        "--reflow-nfe", type=int, nargs="+", default=[1, 2, 4], help="the reflow model's Euler evaluations"
    )
    p.add_argument(
        "--ddpm-settings",
        nargs="*",
        default=["ddpm:100"],
        metavar="SAMPLER:STEPS",
        help="DDPM settings besides the reference (ddpm:100)",
    )
    p.add_argument(
        "--reference", default="ddpm:1000", metavar="SAMPLER:STEPS", help="the DDPM reference (ddpm:1000)"
    )
    p.add_argument("--seeds", type=int, default=4, help="noise seeds 0..n-1 (4)")
    p.add_argument(
        "--reference-seeds", type=int, default=None, help="seeds of the reference chain (default: --seeds)"
    )
    p.add_argument(
        "--data", default="phantom", choices=["phantom", "realct"], help="where to evaluate (phantom)"
    )
    p.add_argument(
        "--dataset",
        type=Path,
        default=Path("datasets/Dataset700_RealCT"),
        help="--data realct: the case's nnU-Net dataset (medsynth dataset; benchmarks/realct.py builds it)",
    )
    p.add_argument("--cache", type=Path, default=None, help="--data realct: slice cache folder")
    p.add_argument(
        "--num-eval",
        type=int,
        default=64,
        help="phantom test slices (64; 0: all 128); realct: the whole slab",
    )
    p.add_argument("--output", default="outputs/flow")
    p.add_argument(
        "--reuse-rows",
        type=Path,
        default=None,
        metavar="FLOW_JSON",
        help="an earlier flow.json of the same comparison: its DDPM rows and the rows of samplers "
        "--samplers does not name are taken from it, not sampled again",
    )
    p.add_argument("--gpu", action="store_true", help="sample on the GPU")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)

    def setting(text: str, flag: str) -> tuple[str, int]:
        sampler, _, steps = text.partition(":")
        if sampler not in ("ddpm", "ddim", "dpm++") or not steps.isdigit() or int(steps) < 1:
            p.error(f"{flag}: a DDPM setting looks like ddpm:100, got {text!r}")
        return sampler, int(steps)

    a.reference = [setting(a.reference, "--reference")]
    a.ddpm_settings = [setting(x, "--ddpm-settings") for x in a.ddpm_settings]
    if (
        a.seeds < 1
        or any(n < 1 for n in (*a.nfe, *a.reflow_nfe))
        or (a.reference_seeds is not None and a.reference_seeds < 1)
    ):
        p.error(
            f"--seeds, --reference-seeds, --nfe and --reflow-nfe must be positive, got --seeds {a.seeds} "
            f"--reference-seeds {a.reference_seeds} --nfe {a.nfe} --reflow-nfe {a.reflow_nfe}"
        )
    if a.data == "realct" and not (a.dataset / "dataset.json").is_file():
        p.error(f"--dataset {a.dataset}: no dataset.json there (build it with medsynth dataset)")
    for flag, path in (
        ("--flow", a.flow),
        ("--ddpm", a.ddpm),
        ("--reflow", a.reflow),
        ("--segmenter", a.segmenter),
        ("--reuse-rows", a.reuse_rows),
    ):
        if path is not None and not path.is_file():
            p.error(f"{flag}: {path} does not exist")
    a.num_eval = None if a.num_eval == 0 else a.num_eval
    a.device = "cuda" if a.gpu else "cpu"
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        run(args)
    except (ValueError, FileExistsError) as e:
        print(f"flow.py: error: {e}", file=sys.stderr)
        return 2
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min; wrote {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
