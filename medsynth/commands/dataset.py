"""``medsynth dataset``: CT volumes and the label volumes a user has -> an nnU-Net v2 raw dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medsynth.commands.common import HelpFormatter
from medsynth.io import dataset_pairs, write_nnunet_dataset

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``medsynth dataset`` (arguments of :func:`medsynth.io.write_nnunet_dataset`)."""
    p = argparse.ArgumentParser(
        prog="medsynth dataset",
        description="CT volumes (HU) and their label volumes (e.g. TotalSegmentator masks) -> an nnU-Net v2 raw "
        "dataset whose dataset.json names every label id, ready for NNUNetDataModule (remap='by_name').",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--images", required=True, type=Path, help="a CT volume (.nii.gz, HU) or a folder of them")
    p.add_argument(
        "--labels", required=True, type=Path, help="its label volume, or a folder of them (same file names)"
    )
    p.add_argument(
        "--names",
        required=True,
        help="the id -> name table that came with the labels: a CSV with columns id and structure (or name), "
        "a dataset.json, or 'totalseg' for labels of the installed TotalSegmentator's total task",
    )
    p.add_argument(
        "--output", required=True, type=Path, help="dataset folder to create, e.g. Dataset700_MyCT"
    )
    p.add_argument("--case", default=None, help="case name of a single pair (default: the CT's file name)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``medsynth dataset``: every pair is checked before anything is written; 2 with the error on stderr."""
    a = build_parser().parse_args(argv)
    try:
        pairs = dataset_pairs(a.images, a.labels, a.case)
        root = write_nnunet_dataset(pairs, a.output, a.names)
    except (ValueError, FileNotFoundError) as err:
        print(f"medsynth dataset: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(pairs)} case(s) to {root}")
    return 0
