"""Synthesis throughput on 1, 2, ... processes: slices per second of ``synthesize_files``.

``medsynth.synthesis.synthesize_files`` runs as ``Trainer.predict`` over work items (whole
volumes), one process per device (docs/multi_gpu.md). This script times it on the same label
volumes for each number of processes: on the CPU with gloo (each process gets
``cores / processes`` threads: Lightning sets them), or on GPUs with ``--accelerator gpu``. Several
processes start with ``ddp_spawn`` (the model is pickled to each; ``ddp`` would start this script
again), which costs an interpreter and torch import per process: the table gives that start-up
separately (a rerun over the finished folder: every process starts and finds nothing to make) and
slices per second with and without it. The network is a mask-guided DDPM with random weights (the
cost of a step does not depend on them); ``--num_steps`` network evaluations per slice.

    python benchmarks/synthesis_scaling.py                          # CPU, 1 and 2 processes
    python benchmarks/synthesis_scaling.py --accelerator gpu --processes 1 2 4 8
    python benchmarks/synthesis_scaling.py --smoke                  # tiny, seconds (the tests run it)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # medsynth from this checkout, run from anywhere

from medsynth.labels import BODY  # noqa: E402
from medsynth.models import MaskGuidedDDPM  # noqa: E402
from medsynth.synthesis import synthesize_files  # noqa: E402


def label_volumes(folder: Path, volumes: int, depth: int, size: int) -> list[Path]:
    """``volumes`` label volumes of ``size x size x depth``: a body ellipse, a liver and a kidney
    that move along z (so no two slices share a mask)."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    paths = []
    for v in range(volumes):
        lab = np.zeros((size, size, depth), np.uint8)
        for z in range(depth):
            s = lab[:, :, z]
            s[((x - size / 2) / (0.42 * size)) ** 2 + ((y - size / 2) / (0.32 * size)) ** 2 < 1] = BODY
            shift = (z + v) % max(size // 8, 1)
            s[(x - 0.35 * size - shift) ** 2 + (y - 0.45 * size) ** 2 < (0.12 * size) ** 2] = 6
            s[(x - 0.65 * size) ** 2 + (y - 0.6 * size + shift) ** 2 < (0.06 * size) ** 2] = 2
        path = folder / f"case{v:03d}.nii.gz"
        nib.save(nib.Nifti1Image(lab, np.diag([1.0, 1.0, 3.0, 1.0])), str(path))
        paths.append(path)
    return paths


def random_ddpm(size: int, width: int, tiny: bool) -> MaskGuidedDDPM:
    """A mask-guided DDPM with random, perturbed weights (EMA included)."""
    torch.manual_seed(0)
    kw = {"channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (size // 2,)} if tiny else {}
    model = MaskGuidedDDPM(image_size=size, model_channels=width, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def time_synthesis(
    model: MaskGuidedDDPM,
    inputs: list[Path],
    output: Path,
    processes: int,
    *,
    accelerator: str,
    num_steps: int,
    batch_size: int,
    sampler: str = "ddim",
) -> dict[str, float]:
    """Seconds of one ``synthesize_files`` call on ``processes`` processes, and of a rerun over its
    finished folder (the start-up alone); slices per second with and without that start-up."""
    dist = {"devices": processes, "strategy": "ddp_spawn" if processes > 1 else "auto"}
    options = dict(num_steps=num_steps, sampler=sampler, batch_size=batch_size, progress=False)
    options.update(accelerator=accelerator, **dist)
    t0 = time.perf_counter()
    synthesize_files(model, inputs, output, **options)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    synthesize_files(model, inputs, output, **options)  # every volume exists: start-up only
    startup = time.perf_counter() - t0
    slices = sum(nib.load(p).shape[2] for p in inputs)
    return {
        "processes": processes,
        "slices": slices,
        "seconds": total,
        "startup_seconds": startup,
        "slices_per_s": slices / total,
        "slices_per_s_after_startup": slices / max(total - startup, 1e-9),
    }


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to time")
    p.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    p.add_argument("--volumes", type=int, default=8, help="label volumes (work items)")
    p.add_argument("--depth", type=int, default=8, help="slices per volume")
    p.add_argument("--size", type=int, default=64, help="slice size")
    p.add_argument("--width", type=int, default=32, help="the DDPM's model_channels")
    p.add_argument("--num_steps", type=int, default=10, help="network evaluations per slice (DDIM)")
    p.add_argument("--batch_size", type=int, default=8, help="slices per generate() call")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: the code path in seconds")
    a = p.parse_args(argv)
    if a.smoke:
        a.volumes, a.depth, a.size, a.width, a.num_steps, a.batch_size = 2, 2, 32, 8, 1, 2
    if a.accelerator == "gpu" and torch.cuda.device_count() < max(a.processes):
        raise SystemExit(
            f"--processes {max(a.processes)} needs as many GPUs; {torch.cuda.device_count()} visible"
        )
    model = random_ddpm(a.size, a.width, tiny=a.smoke)
    where = (
        torch.cuda.get_device_name() if a.accelerator == "gpu" else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"# synthesis scaling: {where}, torch {torch.__version__}")
    print(
        f"{a.volumes} volumes x {a.depth} slices of {a.size}x{a.size}, MaskGuidedDDPM width {a.width}, "
        f"DDIM {a.num_steps} steps, batch {a.batch_size}"
    )
    print(
        "| processes | s (all) | s start-up | slices/s | slices/s after start-up | speed-up |\n"
        "|---:|---:|---:|---:|---:|---:|"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = label_volumes(Path(tmp) / "labels", a.volumes, a.depth, a.size)
        for n in a.processes:
            row = time_synthesis(
                model, inputs, Path(tmp) / f"out{n}", n,
                accelerator=a.accelerator, num_steps=a.num_steps, batch_size=a.batch_size,
            )  # fmt: skip
            rows.append(row)
            gain = row["slices_per_s_after_startup"] / rows[0]["slices_per_s_after_startup"]
            print(
                f"| {n} | {row['seconds']:.1f} | {row['startup_seconds']:.1f} | {row['slices_per_s']:.2f} | "
                f"{row['slices_per_s_after_startup']:.2f} | {gain:.2f}x |",
                flush=True,
            )
    if a.json is not None:
        a.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
