"""Training throughput (images/s) of the DDPM variants and SDM next to diffusers' UNet2DModel.

Each row times full optimisation steps (hybrid loss, backward, AdamW step) of one method; the
baseline is diffusers' UNet2DModel with the same widths, depth, attention resolutions and scale-
shift time conditioning, trained with plain eps-MSE on 18 input channels (the conditional DDPM's
input), i.e. the cost of the network alone.

    python benchmarks/train_throughput_ddpm.py                  # CPU, 64x64, width 32, batch 4
    python benchmarks/train_throughput_ddpm.py --gpu            # CUDA, 256x256, width 128, batch 16, bf16
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import UNet2DModel

from medsynth.models import SDM, ConditionalDDPM, EdgeGuidedDDPM, MaskGuidedDDPM
from medsynth.nn.unet import default_channel_mult


def _batch(b: int, size: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 17, (b, size // 8, size // 8), generator=g)
    mask = mask.repeat_interleave(8, 1).repeat_interleave(8, 2)
    return {"image": torch.rand(b, 1, size, size, generator=g).to(device), "mask": mask.to(device)}


def _time(step, warmup: int, iters: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def bench_method(cls, size, width, batch, device, dtype, warmup, iters) -> float:
    model = cls(size, model_channels=width).to(device)
    opt = model.configure_optimizers()
    data = _batch(batch, size, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model._losses(model.net, data, training=True)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.ema.update(model.net)

    return batch / _time(step, warmup, iters, device), _params(model.net)


def _params(net: torch.nn.Module) -> float:
    return sum(p.numel() for p in net.parameters()) / 1e6


def bench_diffusers(size, width, batch, device, dtype, warmup, iters) -> float:
    mult = default_channel_mult(size)
    attn = [size // 2**i in (16, 8) for i in range(len(mult))]
    net = UNet2DModel(
        sample_size=size,
        in_channels=18,
        out_channels=2,
        block_out_channels=tuple(width * m for m in mult),
        layers_per_block=2,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=width // 4 * min(mult),
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=32 if width % 32 == 0 else 8,
        add_attention=True,
    ).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0)
    data = _batch(batch, size, device)
    x = torch.cat([data["image"] * 2 - 1, torch.zeros(batch, 17, size, size, device=device)], 1)

    def step() -> None:
        t = torch.randint(0, 1000, (batch,), device=device)
        noise = torch.randn_like(x[:, :1])
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = net(torch.cat([x[:, :1] + noise, x[:, 1:]], 1), t).sample
        loss = ((out.float()[:, :1] - noise) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / _time(step, warmup, iters, device), _params(net)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="CUDA, 256x256, width 128, batch 16, bf16")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    if a.gpu:
        device, dtype = torch.device("cuda"), torch.bfloat16
        size, width, batch, iters = a.size or 256, a.width or 128, a.batch or 16, a.iters or 20
    else:
        torch.set_num_threads(a.threads)
        device, dtype = torch.device("cpu"), torch.float32
        size, width, batch, iters = a.size or 64, a.width or 32, a.batch or 4, a.iters or 5
    warmup = 2 if device.type == "cpu" else 5
    print(f"device={device} size={size} width={width} batch={batch} dtype={dtype} iters={iters}")
    base = bench_diffusers(size, width, batch, device, dtype, warmup, iters)
    rows = [("diffusers UNet2DModel (eps-MSE)", *base)]
    for cls in (ConditionalDDPM, MaskGuidedDDPM, EdgeGuidedDDPM, SDM):
        rows.append((cls.__name__, *bench_method(cls, size, width, batch, device, dtype, warmup, iters)))
    print(f"{'method':34s} {'params (M)':>10s} {'images/s':>10s} {'vs UNet2DModel':>15s}")
    for name, ips, params in rows:
        print(f"{name:34s} {params:10.2f} {ips:10.2f} {ips / base[0]:15.2f}")


if __name__ == "__main__":
    main()
