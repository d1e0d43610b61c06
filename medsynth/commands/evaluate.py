"""``medsynth evaluate``: the metric suite for one or more checkpoints -> the paper's tables and figure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException

from medsynth.commands.common import (
    HelpFormatter,
    add_distributed_arguments,
    add_sampling_arguments,
    in_cli_words,
    report_error,
)
from medsynth.evaluate import METRICS, evaluate_checkpoints, metric_problems

__all__ = ["build_parser", "choose_metrics", "main"]

#: :func:`medsynth.evaluate.evaluate_checkpoints`'s argument names in its errors -> this command's flags.
FLAGS = {
    "as fid_weights=...": "with --fid_weights PATH",
    "fid_weights=": "--fid_weights ",
    "segmenter=": "--segmenter ",
    "totalseg=True": "--totalseg [WEIGHTS_DIR]",
    "names=": "--name ",
    "metrics=": "--metrics ",
    "figure_zoom=": "--figure_zoom ",
}


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``medsynth evaluate`` (arguments of :func:`medsynth.evaluate.evaluate_checkpoints`)."""
    p = argparse.ArgumentParser(
        prog="medsynth evaluate",
        description="The metric suite for one or more checkpoints, written as the paper's tables and figure.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--checkpoint", nargs="+", required=True, type=Path, help="one or more medsynth checkpoints"
    )
    p.add_argument("--name", nargs="+", default=None, help="row names (default: the method class names)")
    p.add_argument(
        "--data_config",
        type=Path,
        default=None,
        help="experiment YAML whose data: section gives the test split",
    )
    p.add_argument("--output", type=Path, required=True, help="folder for the report and figure")
    p.add_argument(
        "--metrics",
        nargs="+",
        choices=METRICS,
        default=None,
        help="metrics to compute (default: psnr ssim hu, plus fid when the Inception weights are found, "
        "dice when --segmenter or --totalseg is given and frd when frd-score is installed; what is left "
        "out is said before any work; memorization only on request: it reads the training split)",
    )
    p.add_argument(
        "--segmenter",
        type=Path,
        default=None,
        help="OrganSegmenter checkpoint (needed for dice; adds the feature space to memorization)",
    )
    p.add_argument("--fid_weights", type=Path, default=None, help="clean-fid's inception-2015-12-05.pt")
    p.add_argument(
        "--totalseg",
        nargs="?",
        const="default",
        default=None,
        metavar="WEIGHTS_DIR",
        help="organ Dice as in the paper: TotalSegmentator on synthetic volumes of the test cases (needs an "
        "AMOS-layout data module and the TotalSegmentator weights; WEIGHTS_DIR defaults to $TOTALSEG_HOME_DIR)",
    )
    p.add_argument("--totalseg_fast", action="store_true", help="TotalSegmentator's 3 mm model")
    add_sampling_arguments(p)
    p.add_argument("--figure_slices", type=int, default=4, help="rows of report.png (0: no figure)")
    p.add_argument(
        "--figure_zoom",
        type=float,
        default=None,
        metavar="Z",
        help="under each slice of report.png, a crop of its organs, Z x the slice's side (0 < Z < 1; 0.4: x2.5)",
    )
    p.add_argument(
        "--reference", type=int, choices=(0, 1, 2), default=2, help="paper table for reference rows (0: none)"
    )
    add_distributed_arguments(p)
    return p


def choose_metrics(a: argparse.Namespace) -> list[str]:
    """The metrics to run, checked before any work: explicit ``--metrics`` must be runnable (errors
    name the flags to add); the default leaves out what cannot run here, with one warning."""
    problems = {
        k: in_cli_words(v, FLAGS)
        for k, v in metric_problems(
            fid_weights=a.fid_weights, segmenter=a.segmenter, totalseg=a.totalseg is not None
        ).items()
    }
    if a.metrics is not None:
        fix = "--metrics psnr ssim" + ("" if "dice" in problems else " dice")
        if "fid" in a.metrics and "fid" in problems:
            raise ValueError(f"--metrics {problems['fid']}; or leave fid out: {fix}")
        if "dice" in a.metrics and "dice" in problems:
            raise ValueError(f"--metrics {problems['dice']}; or leave dice out: --metrics psnr ssim")
        if "frd" in a.metrics and "frd" in problems:
            raise ValueError(f"--metrics {problems['frd']}; or leave frd out")
        return list(dict.fromkeys(a.metrics))
    optional = ("fid", "dice", "frd")
    metrics = ["psnr", "ssim", "hu", *(m for m in optional if m not in problems)]
    dropped = [problems[m] for m in optional if m in problems]
    if dropped:
        print(
            f"medsynth evaluate: warning: computing {' '.join(metrics)} only: {'; '.join(dropped)}.",
            file=sys.stderr,
        )
    return metrics


def main(argv: list[str] | None = None) -> int:
    """``medsynth evaluate``; ``argv`` without the command name (None: ``sys.argv``)."""
    a = build_parser().parse_args(argv)
    try:
        metrics = choose_metrics(a)  # before any work: errors and the warning name CLI flags
        paths = evaluate_checkpoints(
            a.checkpoint,
            a.output,
            names=a.name,
            data_config=a.data_config,
            metrics=metrics,
            segmenter=a.segmenter,
            fid_weights=a.fid_weights,
            totalseg=a.totalseg is not None,
            totalseg_weights=None if a.totalseg in (None, "default") else a.totalseg,
            totalseg_fast=a.totalseg_fast,
            sampler=a.sampler,
            num_steps=a.num_steps,
            guidance_scale=a.guidance_scale,
            seed=a.seed,
            figure_slices=a.figure_slices,
            figure_zoom=a.figure_zoom,
            reference=a.reference or None,
            accelerator=a.accelerator,
            devices=a.devices,
            num_nodes=a.num_nodes,
            strategy=a.strategy,
        )
    except (ValueError, FileNotFoundError, MisconfigurationException) as err:  # the last: Lightning's flags
        return report_error("evaluate", err, FLAGS)
    for p in paths:
        print(f"wrote {p}")
    return 0
