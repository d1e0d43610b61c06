"""``medsynth phantom``: write the built-in phantom as an AMOS22-layout dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsynth.commands.common import HelpFormatter
from medsynth.data.phantom import check_irregularity, write_phantom_dataset

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``medsynth phantom`` (arguments of :func:`medsynth.data.phantom.write_phantom_dataset`)."""
    p = argparse.ArgumentParser(
        prog="medsynth phantom",
        description="Write the phantom as an AMOS22-layout dataset.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--output", required=True, type=Path, help="folder to create (must be empty or absent)")
    p.add_argument("--cases", type=int, default=10, help="number of training cases")
    p.add_argument(
        "--val_cases", type=int, default=None, help="number of validation cases (default: cases // 4, >= 1)"
    )
    p.add_argument("--depth", type=int, default=64, help="axial slices per volume")
    p.add_argument("--size", type=int, default=256, help="in-plane matrix size")
    p.add_argument("--seed", type=int, default=0, help="seeds the phantom anatomy")
    p.add_argument(
        "--irregularity",
        type=float,
        default=0.0,
        help="lobulated organ outlines, 0-0.5 (0: the regular phantom)",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """``medsynth phantom``; bad flags end it with ``SystemExit`` naming the flag, before any file is written."""
    a = build_parser().parse_args(argv)
    if a.cases < 1:
        raise SystemExit(f"medsynth phantom: --cases must be >= 1, got {a.cases}")
    try:
        check_irregularity(a.irregularity, "--irregularity")
    except ValueError as err:
        raise SystemExit(f"medsynth phantom: {err}") from None
    if a.output.exists() and any(a.output.iterdir()):
        raise SystemExit(f"medsynth phantom: output folder {a.output} is not empty; refusing to overwrite")
    val = a.val_cases if a.val_cases is not None else max(1, a.cases // 4)
    root = write_phantom_dataset(
        a.output,
        a.cases,
        val,
        depth=a.depth,
        size=a.size,
        seed=a.seed,
        progress=not a.no_progress,
        irregularity=a.irregularity,
    )
    print(f"wrote {a.cases} training and {val} validation phantom cases to {root}")
    return 0
