"""``medsynth reflow``: a rectified flow's (noise, sample) pairs of its training slices, for reflow."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from medsynth.commands.common import HelpFormatter, report_error

__all__ = ["build_parser", "main"]

#: :func:`medsynth.reflow.make_pairs`'s argument names in its errors -> this command's flags.
FLAGS = {f"{name} must": f"--{name} must" for name in ("copies", "batch_size", "num_steps")}


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``medsynth reflow`` (arguments of :func:`medsynth.reflow.make_pairs`)."""
    p = argparse.ArgumentParser(
        prog="medsynth reflow",
        description=(
            "Generate reflow pairs: every training slice of --data_config (as stored, not augmented) "
            "--copies times from its own noise with the rectified flow of --checkpoint. Then fine-tune "
            "the flow on them (experiments/<data>/mask_guided_ddpm_reflow.yaml; "
            "docs/methods/rectified_flow.md, 'Reflow')."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--checkpoint", required=True, type=Path, help="a rectified-flow checkpoint (process rflow)"
    )
    p.add_argument(
        "--data_config",
        required=True,
        type=Path,
        help="the config the flow was trained with (its data: section)",
    )
    p.add_argument("--output", required=True, type=Path, help="the pairs file to write (must not exist)")
    p.add_argument("--copies", type=int, default=4, help="pairs per training slice, each from other noise")
    p.add_argument("--sampler", default="euler", help="the flow's sampler making the samples: euler or heun")
    p.add_argument("--num_steps", type=int, default=8, help="network evaluations per sample")
    p.add_argument("--seed", type=int, default=0, help="seeds each pair's noise")
    p.add_argument("--batch_size", type=int, default=32, help="slices per generate() call")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``medsynth reflow``: every input checked before sampling; the file written atomically."""
    from medsynth.data.config import build_datamodule, data_sections
    from medsynth.data.reflow import save_pairs
    from medsynth.reflow import check_reflow_teacher, make_pairs
    from medsynth.synthesis import load_model

    a = build_parser().parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    last = [t0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= 30 or done == total:
            last[0] = now
            eta = (now - t0) / done * (total - done)
            print(f"pairs {done}/{total}, {now - t0:.0f} s, ETA {eta:.0f} s", flush=True)

    try:
        if a.output.exists():
            raise ValueError(f"--output {a.output} exists; choose another file (nothing was overwritten)")
        model = load_model(a.checkpoint, map_location=device)
        check_reflow_teacher(model)
        sections = data_sections(a.data_config)
        datamodule = build_datamodule(sections)
        pairs = make_pairs(
            model,
            datamodule,
            copies=a.copies,
            sampler=a.sampler,
            num_steps=a.num_steps,
            seed=a.seed,
            batch_size=a.batch_size,
            progress=progress,
        )
    except (ValueError, FileNotFoundError) as err:
        return report_error("reflow", err, FLAGS)
    pairs.meta.update(checkpoint=str(a.checkpoint), data_config=str(a.data_config), data=sections)
    save_pairs(pairs, a.output)
    print(f"wrote {len(pairs)} pairs to {a.output} in {time.perf_counter() - t0:.0f} s")
    return 0
