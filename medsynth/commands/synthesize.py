"""``medsynth synthesize``: label volumes (NIfTI) -> synthetic CT volumes, optionally an nnU-Net dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_only

from medsynth.commands.common import (
    HelpFormatter,
    add_distributed_arguments,
    add_sampling_arguments,
    report_error,
)
from medsynth.io import nifti_inputs
from medsynth.precision import PRECISIONS
from medsynth.synthesis import load_model, set_context_sample_noise, synthesize_files

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``medsynth synthesize`` (each one an argument of :func:`medsynth.synthesis.synthesize_files`)."""
    p = argparse.ArgumentParser(
        prog="medsynth synthesize",
        description="Label volumes (NIfTI, AMOS ids) -> synthetic CT volumes (NIfTI, HU).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="a medsynth model checkpoint (.ckpt)")
    p.add_argument("--input", required=True, type=Path, help="a label volume .nii.gz or a folder of them")
    p.add_argument("--output", required=True, type=Path, help="output folder")
    p.add_argument(
        "--images", type=Path, default=None, help="folder of the matching CT volumes (for the body class)"
    )
    add_sampling_arguments(p)
    p.add_argument(
        "--batch_size",
        type=int,
        default=16,
        help="slices per generate() call; a 2.5D checkpoint also makes this many volumes together, slice "
        "index by slice index (see docs/synthesis.md)",
    )
    p.add_argument(
        "--coherent",
        action="store_true",
        help="the same noise for every slice of a volume: consistent texture along z (see docs/synthesis.md)",
    )
    p.add_argument(
        "--context_sample_noise",
        type=float,
        default=None,
        metavar="LEVEL",
        help="a 2.5D checkpoint with previous slices: the noise level, as a fraction of the chain's T steps, "
        "of the slice below when generating (default: the checkpoint's, 0.1 unless trained otherwise; see "
        "docs/synthesis.md)",
    )
    p.add_argument(
        "--nnunet", default=None, metavar="DatasetNNN_Name", help="also write an nnU-Net v2 raw dataset"
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device of a one-process run (several processes: --accelerator, --devices)",
    )
    add_distributed_arguments(p, accelerator=None)
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="32",
        help="sampling precision: 32 (fp32) or bf16 (autocast; fast on CUDA, also allowed on CPU)",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar / progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    """``medsynth synthesize``; ``argv`` without the command name (None: ``sys.argv``)."""
    a = build_parser().parse_args(argv)
    try:
        inputs = nifti_inputs(a.input, "--input")
        # Every process loads the same checkpoint file; several processes load it on the CPU and
        # Lightning moves each copy to its own device.
        single = a.devices == 1 and a.num_nodes == 1 and a.accelerator is None
        model = load_model(a.checkpoint, map_location=a.device if single else "cpu")
        if a.context_sample_noise is not None:
            set_context_sample_noise(
                model, a.context_sample_noise, f"--context_sample_noise ({a.checkpoint})"
            )
        if model.context_spec is not None and rank_zero_only.rank == 0:
            print(
                f"{a.checkpoint} is a 2.5D model ({model.context_spec.describe()}): each volume is made "
                "in order, inferior to superior, every slice given its context"
            )
        written = synthesize_files(
            model,
            inputs,
            a.output,
            images=a.images,
            nnunet=a.nnunet,
            batch_size=a.batch_size,
            num_steps=a.num_steps,
            sampler=a.sampler,
            guidance_scale=a.guidance_scale,
            seed=a.seed,
            progress=not a.no_progress,
            precision=a.precision,
            coherent=a.coherent,
            accelerator=a.accelerator,
            devices=a.devices,
            num_nodes=a.num_nodes,
            strategy=a.strategy,
        )
    except (ValueError, FileNotFoundError, MisconfigurationException) as err:  # the last: Lightning's flags
        return report_error("synthesize", err)
    if rank_zero_only.rank == 0:
        print(f"{len(written)} synthetic CT volume(s) in {a.output}")
        if a.nnunet:
            print(f"nnU-Net dataset: {a.output / a.nnunet}")
    return 0
