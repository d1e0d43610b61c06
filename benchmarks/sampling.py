"""Sampling cost and quality vs steps for the ddpm / ddim / dpm++ samplers.

Trains a small conditional DDPM briefly on the phantom (or loads --ckpt), then for each sampler
and step count generates the validation slices from their masks and reports the time per image,
the network evaluations (NFE), and PSNR / SSIM against the real slices. The last column says
whether a setting matches the paper's 1000-step ancestral chain within 2% on both metrics.

    python benchmarks/sampling.py                       # CPU, 32x32 phantom, ~5 minutes
    python benchmarks/sampling.py --ckpt model.ckpt --image-size 256 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.protocol, run from anywhere
from benchmarks.protocol import diffusion_steps  # noqa: E402
from medsynth.data import PhantomDataModule  # noqa: E402
from medsynth.models import ConditionalDDPM  # noqa: E402

SETTINGS = [
    ("ddpm", 1000),
    ("ddpm", 250),
    ("ddpm", 100),
    ("ddpm", 50),
    ("ddim", 100),
    ("ddim", 50),
    ("ddim", 25),
    ("ddim", 10),
    ("dpm++", 50),
    ("dpm++", 20),
    ("dpm++", 10),
]


def train(args, dm: PhantomDataModule) -> ConditionalDDPM:
    torch.manual_seed(0)
    model = ConditionalDDPM(
        args.image_size,
        model_channels=args.width,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        lr=args.lr,
        ema_decay=0.995,
    )
    t0 = time.perf_counter()

    def log(step: int, loss: float) -> None:
        if step % 500 == 0:
            print(f"  step {step} loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)")

    diffusion_steps(model, dm.train_dataloader(), args.train_steps, on_step=log)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="a ConditionalDDPM checkpoint instead of training one")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dm = PhantomDataModule(
        num_train_cases=4, num_val_cases=1, num_test_cases=1, depth=16, image_size=a.image_size, batch_size=8
    )
    dm.setup("fit")
    if a.ckpt:
        model = ConditionalDDPM.load_from_checkpoint(a.ckpt, map_location="cpu")
    else:
        print(f"training {a.train_steps} steps on {len(dm.train_dataloader().dataset)} phantom slices ...")
        model = train(a, dm)
    model = model.to(a.device)
    val = dm.val_dataloader().dataset
    idx = torch.linspace(2, len(val) - 3, a.num_images).round().long().tolist()  # slices with organs
    real = torch.stack([val[i]["image"] for i in idx]).to(a.device)  # [N, 1, H, W]
    mask = torch.stack([val[i]["mask"] for i in idx]).to(a.device)  # [N, H, W]

    rows = []
    for sampler, steps in SETTINGS:
        calls = []
        net = model.ema.shadow
        hook = net.register_forward_hook(lambda *_, c=calls: c.append(1))
        t0 = time.perf_counter()
        out = model.generate(
            mask, sampler=sampler, num_steps=steps, generator=torch.Generator().manual_seed(0)
        )
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / len(idx)
        hook.remove()
        psnr = (
            peak_signal_noise_ratio(out, real, data_range=1.0, reduction="none", dim=(1, 2, 3)).mean().item()
        )
        ssim = structural_similarity_index_measure(out, real, data_range=1.0).item()
        rows.append((sampler, steps, len(calls), dt, psnr, ssim))
    ref = rows[0]
    print(
        f"{'sampler':8s} {'steps':>5s} {'NFE':>5s} {'s/image':>8s} {'PSNR':>7s} {'SSIM':>6s} {'within 2% of ddpm-1000':>24s}"
    )
    for s, n, nfe, dt, psnr, ssim in rows:
        ok = abs(psnr - ref[4]) <= 0.02 * ref[4] and abs(ssim - ref[5]) <= 0.02 * ref[5]
        print(f"{s:8s} {n:5d} {nfe:5d} {dt:8.3f} {psnr:7.2f} {ssim:6.3f} {'yes' if ok else 'no':>24s}")


if __name__ == "__main__":
    main()
