"""Quality protocol on the built-in phantom: every method under the same wall-clock budget.

Trains each of the seven methods of Zhuang et al. (the three DDPMs, SDM, Pix2Pix, SPADE, OASIS)
on the 64x64 phantom (12 training cases, the split of experiments/phantom/*.yaml) for
``--budget`` minutes each, saving checkpoints at 25 / 50 / 100 % of the budget. Each checkpoint
samples the test split (``--num-eval`` slices spread over its 4 cases) with ``--seeds`` noise
seeds (per-slice generators, :func:`medsynth.random.slice_generators`), and is scored with
(:mod:`benchmarks.protocol`, whose pieces this script puts together):

- PSNR and SSIM against the real slice (Zhuang et al., Sec. 3);
- background mean: mean intensity where the mask is 0 (air must be ~0);
- per-organ mean-intensity error |mean synthetic - mean real| inside liver, spleen, both
  kidneys, stomach and aorta, in window units (0.03 = 12 HU);
- organ Dice of an in-domain :class:`~medsynth.models.OrganSegmenter` (trained here on the real
  training slices, or ``--segmenter``) on the synthetic slices, next to its Dice on real slices;
- a Fréchet distance between Gaussian fits of the segmenter's pooled bottleneck features of the
  synthetic and the real test slices. It is NOT FID: a different, in-domain feature space
  (``8 * width`` dimensions), so its values are comparable only within this benchmark.

Every number is mean +- SD over the noise seeds. Reference rows: the class-mean painting (each
pixel painted with its class's mean training intensity) and the real slices. Writes
``quality.md``, ``quality.json`` and ``quality.png`` (mask | real | each method) to ``--output``.

The full protocol (7 x 30 min of training, about 4 hours on 2 cores) need not run in one go:
a run can be continued: ``--resume`` adds the methods still missing from the
``--output`` folder's ``quality.json`` to it, with the same segmenter and test slices, and refuses
when the settings (``--budget``, ``--num-eval``, ...) or a method's recipe differ from the earlier
part. Each method records where and when it ran (``runs``), so a table assembled over several
runs says which machine gave each row. Without ``--resume`` a folder that already holds
results is refused, never overwritten.

A wall-clock budget buys fewer steps whenever something else runs on the machine.
``--calibration FILE`` trains each method for a step budget instead: ``round(budget * 60 /
s_per_step)`` steps (checkpoints at 25 / 50 / 100 % of them), with the seconds per step read from
FILE, where each method missing from it is first timed (``--calibration-steps`` steps after a
warm-up) and recorded (method, settings, s/step, date, CPU, threads). Time it once on an idle
machine (``--calibrate-only`` times and records without training); every later run with that file
trains the same number of steps, however loaded the machine.

``--hu`` adds each organ's median HU error and IQR (the real and synthetic slices through the
data's window), ``--frd`` FRD v1 (radiomics; needs ``medsynth[frd]``) beside the segmenter's
Fréchet distance, ``--memorization`` the copy rate against the training slices (pixel space); all
three are off by default so that a run started without them can be resumed.

``--samplers`` instead compares DDIM, DPM-Solver++ and respaced ancestral sampling at 10 / 25 /
50 / 100 network evaluations against the 1000-step chain on the trained diffusion models (or
on ``--ckpt``), and writes ``samplers.md`` / ``samplers.json``.

    python benchmarks/quality.py                                  # all methods, 30 min each
    python benchmarks/quality.py --resume --methods sdm oasis     # continue that run
    python benchmarks/quality.py --budget 0.5 --seeds 2 --methods conditional_ddpm pix2pix
    python benchmarks/quality.py --samplers --ckpt outputs/quality/checkpoints/mask_guided_ddpm_100.ckpt
    python benchmarks/quality.py --gpu --budget 10                # on a GPU
    python benchmarks/quality.py --calibration outputs/calibration.json --calibrate-only   # idle machine
    python benchmarks/quality.py --calibration outputs/calibration.json   # step budgets from that file
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.protocol, run from anywhere
from benchmarks.protocol import (  # noqa: E402
    DIFFUSION,
    METHODS,
    CalibrationError,
    ResumeError,
    Settings,
    calibrate_methods,
    combine,
    frd_scorer,
    memorization_scorer,
    organ_hu_scorer,
    phantom,
    run_quality,
    run_samplers,
    training_images,
)

SAMPLER_SETTINGS: tuple[tuple[str, int], ...] = tuple(
    (s, n) for s in ("ddpm", "ddim", "dpm++") for n in (10, 25, 50, 100)
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``--help``); errors name the flag."""
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--budget", type=float, default=30.0, help="training minutes per method (30)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--gpu", action="store_true", help="train and sample on the GPU")
    p.add_argument("--seeds", type=int, default=4, help="noise seeds 0..n-1 (4)")
    p.add_argument("--output", default="outputs/quality")
    p.add_argument(
        "--resume",
        action="store_true",
        help="add the --methods missing from --output's quality.json to it (same settings and segmenter)",
    )
    p.add_argument("--segmenter", default=None, help="an OrganSegmenter checkpoint instead of training one")
    p.add_argument("--segmenter-steps", type=int, default=600)
    p.add_argument(
        "--segmenter-minutes", type=float, default=None, help="segmenter time limit (default: --budget)"
    )
    p.add_argument(
        "--num-eval",
        type=int,
        default=64,
        help="test slices to sample, spread over the 4 test cases (64; 0: all 128)",
    )
    p.add_argument(
        "--sampler",
        default="ddpm",
        help="diffusion sampler (ddpm: respaced ancestral, the documented default)",
    )
    p.add_argument("--num-steps", type=int, default=100, help="diffusion network evaluations (100)")
    p.add_argument(
        "--samplers", action="store_true", help="sampler comparison on trained diffusion models instead"
    )
    p.add_argument("--ckpt", default=None, help="--samplers: one diffusion checkpoint")
    p.add_argument(
        "--ckpt-method", default="mask_guided_ddpm", choices=[m for m in METHODS if "ddpm" in m or m == "sdm"]
    )
    p.add_argument(
        "--settings",
        nargs="+",
        default=[f"{s}:{n}" for s, n in SAMPLER_SETTINGS],
        metavar="SAMPLER:STEPS",
        help="--samplers: the settings to compare (default: ddpm, ddim, dpm++ at 10/25/50/100)",
    )
    p.add_argument(
        "--reference", default="ddpm:1000", help="--samplers: the reference setting, or 'none' (ddpm:1000)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--hu",
        action="store_true",
        help="also score each organ's median HU error and IQR (organ table in HU)",
    )
    p.add_argument("--frd", action="store_true", help="also score FRD v1 (needs medsynth[frd]; ~0.1 s/slice)")
    p.add_argument(
        "--memorization", action="store_true", help="also score the copy rate against the training slices"
    )
    p.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="FILE",
        help="step budgets: s/step per method from FILE (methods missing from it are timed first and "
        "recorded); default: the wall-clock budget",
    )
    p.add_argument(
        "--calibration-steps",
        type=int,
        default=30,
        help="--calibration: training steps timed per method (30)",
    )
    p.add_argument(
        "--calibrate-only",
        action="store_true",
        help="--calibration: time the --methods missing from FILE, record them and stop (no training)",
    )
    p.add_argument(
        "--label-set",
        default="amos",
        choices=["amos", "totalseg"],
        help="the phantom labels the methods train on and generate from (amos); scores stay on AMOS organs",
    )
    a = p.parse_args(argv)

    def setting(text: str) -> tuple[str, int]:
        sampler, _, steps = text.partition(":")
        if sampler not in ("ddpm", "ddim", "dpm++") or not steps.isdigit() or int(steps) < 1:
            p.error(f"a sampler setting looks like ddim:25, got {text!r}")
        return sampler, int(steps)

    if a.samplers and a.resume:
        p.error("--resume continues a quality run; --samplers writes its own samplers.json")
    if a.samplers and a.label_set != "amos":
        p.error("--samplers compares samplers on AMOS-labelled models; drop --label-set")
    if a.samplers and a.calibration:
        p.error("--calibration sets training budgets; --samplers trains nothing")
    if a.calibrate_only and not a.calibration:
        p.error("--calibrate-only needs --calibration FILE")
    if a.calibration_steps < 1:
        p.error(f"--calibration-steps must be at least 1, got {a.calibration_steps}")
    if a.calibration and a.calibration.is_dir():
        p.error(f"--calibration {a.calibration} is a folder; give a JSON file")
    a.settings = [setting(x) for x in a.settings]
    a.reference = [] if a.reference == "none" else [setting(a.reference)]
    if a.budget <= 0 or a.seeds < 1:
        p.error("--budget and --seeds must be positive")
    if a.num_eval < 0:
        p.error(f"--num-eval must be 0 (all) or positive, got {a.num_eval}")
    a.num_eval = None if a.num_eval == 0 else a.num_eval
    return a


def settings(args: argparse.Namespace) -> Settings:
    """The protocol's settings from the command line."""
    return Settings(
        budget_min=args.budget,
        seeds=args.seeds,
        num_eval=args.num_eval,
        sampler=args.sampler,
        num_steps=args.num_steps,
        gpu=args.gpu,
        label_set=args.label_set,
        segmenter=args.segmenter,
        segmenter_steps=args.segmenter_steps,
        segmenter_minutes=args.segmenter_minutes,
        resume=args.resume,
        calibration=args.calibration,
        calibration_steps=args.calibration_steps,
    )


def run(args: argparse.Namespace) -> None:
    """The run the flags ask for, on the phantom (scores on AMOS labels, training on --label-set)."""
    s = settings(args)
    dm = phantom()  # AMOS labels: the segmenter, the scores and the reference rows
    train_dm = dm if args.label_set == "amos" else phantom(label_set=args.label_set)
    if args.calibrate_only:
        calibrate_methods(args.methods, s, train_dm)
    elif args.samplers:
        out = Path(args.output)
        if args.ckpt:
            targets = {Path(args.ckpt).stem: (args.ckpt_method, args.ckpt)}
        else:
            targets = {n: (n, out / "checkpoints" / f"{n}_100.ckpt") for n in args.methods if n in DIFFUSION}
        run_samplers(s, out, targets, dm, args.settings, args.reference)
    else:
        extra = combine(
            organ_hu_scorer(dm.window) if args.hu else None,
            frd_scorer(dm.window) if args.frd else None,
            memorization_scorer(training_images(train_dm)) if args.memorization else None,
        )
        run_quality(s, args.methods, args.output, dm, train_dm, extra=extra)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        run(args)
    except (ResumeError, CalibrationError) as e:
        print(f"quality.py: error: {e}", file=sys.stderr)
        return 2
    what = args.calibration if args.calibrate_only else args.output
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min; wrote {what}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
