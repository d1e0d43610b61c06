"""``medsynth label``: unlabelled CT -> TotalSegmentator masks -> an nnU-Net v2 raw dataset (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsynth.autolabel import label_folder
from medsynth.commands.common import HelpFormatter, report_error

__all__ = ["build_parser", "main"]

#: :func:`medsynth.autolabel.label_folder`'s argument names in its errors -> this command's flags.
FLAGS = {"weights_dir=<that folder>": "--weights <that folder>"}


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``medsynth label`` (arguments of :func:`medsynth.autolabel.label_folder`)."""
    p = argparse.ArgumentParser(
        prog="medsynth label",
        description="Unlabelled CT -> TotalSegmentator masks -> an nnU-Net v2 raw dataset (resumable).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--input", required=True, type=Path, help="folder of CT volumes (.nii.gz)")
    p.add_argument("--output", required=True, type=Path, help="dataset folder, e.g. Dataset600_MyCT")
    p.add_argument(
        "--roi", nargs="+", default=None, help="TotalSegmentator structures to segment (default: all)"
    )
    p.add_argument("--fast", action="store_true", help="TotalSegmentator's 3 mm model")
    p.add_argument("--device", default="cpu", help="cpu, gpu or gpu:N")
    p.add_argument(
        "--weights", type=Path, default=None, help="TotalSegmentator home folder (default: TOTALSEG_HOME_DIR)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="cases segmented at once, each in its own process (on one GPU each holds its own model)",
    )
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """``medsynth label``; ``argv`` without the command name (None: ``sys.argv``)."""
    a = build_parser().parse_args(argv)
    try:
        done = label_folder(
            a.input,
            a.output,
            roi_subset=a.roi,
            fast=a.fast,
            device=a.device,
            weights_dir=a.weights,
            progress=not a.no_progress,
            workers=a.workers,
        )
    except (ValueError, FileNotFoundError) as err:
        return report_error("label", err, FLAGS)
    print(f"labelled {len(done)} case(s) into {a.output}")
    return 0
