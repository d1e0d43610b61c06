"""GPU figures for the speed issue, in one run of at most ~8 minutes on one GPU (benchmarks/gpu.sh).

Prints four tables:

1. training throughput (img/s) of all seven methods at 256x256, batch 16, bf16-mixed, timed
   inside a Lightning fit (data loading from memory, EMA update and optimiser step included);
2. model FLOP utilisation of the conditional DDPM next to diffusers' UNet2DModel of the same
   widths (FLOPs per step from torch.utils.flop_counter.FlopCounterMode, forward + backward; peak
   = --peak-tflops, 989 for an H200's dense bf16), plus the conditional DDPM with channels_last;
3. sampling: seconds per slice for each sampler at 25 / 100 / 1000 network evaluations, with and
   without the condition cache (1000 only for the ancestral "ddpm" sampler, the paper's chain, and
   only while the time budget lasts; a skipped row says so);
4. bf16 vs fp32 sampling: PSNR between the two outputs on the same seeds (random weights unless
   --ckpt gives a trained diffusion checkpoint);
5. synthesis on 1..N GPUs (``--sections synth``, N = the visible GPUs): slices per second of
   ``synthesize_files`` on 1, 2, 4, ... processes (benchmarks/synthesis_scaling.py's measurement).

``--cpu-smoke`` runs the same code paths on the CPU at tiny sizes in seconds (what the test suite
runs). Networks are randomly initialised and their EMA weights perturbed (zero-initialised output
convs would make sampling trivial); the cost of a step does not depend on the weights.

    bash benchmarks/gpu.sh                      # the GPU run
    python benchmarks/gpu.py --cpu-smoke        # the same code on CPU, tiny
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.protocol, run from anywhere
import sampling_speed as speed_bench  # noqa: E402
import synthesis_scaling  # noqa: E402
from train_throughput_gan import _Slices, random_vgg_weights  # noqa: E402

from benchmarks.protocol import StepTimer, quiet_trainer  # noqa: E402
from medsynth.diffusion import SAMPLERS  # noqa: E402
from medsynth.models import OASIS, SDM, SPADE, ConditionalDDPM, EdgeGuidedDDPM, MaskGuidedDDPM, Pix2Pix  # noqa: E402
from medsynth.models.ddpm import DiffusionModel  # noqa: E402
from medsynth.nn.unet import default_channel_mult  # noqa: E402

DIFFUSION = (ConditionalDDPM, MaskGuidedDDPM, EdgeGuidedDDPM, SDM)
GANS = (Pix2Pix, SPADE, OASIS)


class Clock:
    """Wall-clock budget of the whole run."""

    def __init__(self, budget_s: float) -> None:
        self.t0, self.budget = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_kwargs(cls: type, a: argparse.Namespace, vgg: Path | None) -> dict:
    """Constructor arguments: published widths on the GPU, tiny ones for the smoke run."""
    kw: dict = {"image_size": a.size}
    if cls in DIFFUSION:
        kw["model_channels"] = a.width
        if a.cpu_smoke:
            kw.update(channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(a.size // 2,))
            if cls is SDM:
                kw["spade_hidden"] = 8
    elif a.cpu_smoke:
        kw.update(model_channels=4, disc_channels=8)
        if cls is not Pix2Pix:
            kw["spade_hidden"] = 8
    if cls is SPADE:
        kw.update(lambda_vgg=10.0, vgg_weights=vgg)
    return kw


def train_throughput(a: argparse.Namespace, vgg: Path | None) -> None:
    print(f"\n## training throughput ({a.size}x{a.size}, batch {a.batch}, {a.precision})")
    print("| method | img/s | s/step |\n|---|---:|---:|")
    for cls in (*DIFFUSION, *GANS):
        torch.manual_seed(0)
        model = cls(**model_kwargs(cls, a, vgg))
        steps = a.warmup + a.train_steps
        loader = DataLoader(_Slices(a.batch * steps, a.size), batch_size=a.batch)
        timer = StepTimer(a.warmup)  # whole steps: batch start to the next batch start
        # one epoch of `steps` batches
        quiet_trainer(a.accelerator, callbacks=[timer], precision=a.precision, max_epochs=1).fit(
            model, loader
        )
        s = timer.step_seconds()
        print(f"| {cls.__name__} | {a.batch / s:.1f} | {s:.3f} |", flush=True)


def _batch(a: argparse.Namespace, device: torch.device) -> dict:
    data = _Slices(a.batch, a.size)
    return {"image": data.images.to(device), "mask": data.masks.to(device)}


def ddpm_step(
    a: argparse.Namespace, device: torch.device, channels_last: bool = False, compile: bool = False
) -> Callable[[], None]:
    """One training step of the conditional DDPM (hybrid loss, backward, AdamW, EMA update)."""
    torch.manual_seed(0)
    model = ConditionalDDPM(
        **model_kwargs(ConditionalDDPM, a, None), channels_last=channels_last, compile=compile
    ).to(device)
    opt = model.configure_optimizers()
    batch = _batch(a, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=a.dtype, enabled=a.dtype != torch.float32):
            loss = model._losses(model.net, batch, training=True)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.ema.update(model.net)

    return step


def diffusers_step(a: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """One eps-MSE training step of diffusers' UNet2DModel with the conditional DDPM's widths."""
    from diffusers import UNet2DModel

    mult = (1, 2) if a.cpu_smoke else default_channel_mult(a.size)
    attn_res = (a.size // 2,) if a.cpu_smoke else (16, 8)
    attn = [a.size // 2**i in attn_res for i in range(len(mult))]
    net = UNet2DModel(
        sample_size=a.size,
        in_channels=18,
        out_channels=2,
        block_out_channels=tuple(a.width * m for m in mult),
        layers_per_block=1 if a.cpu_smoke else 2,
        down_block_types=tuple("AttnDownBlock2D" if x else "DownBlock2D" for x in attn),
        up_block_types=tuple("AttnUpBlock2D" if x else "UpBlock2D" for x in reversed(attn)),
        attention_head_dim=a.width // 4 * min(mult),
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=32 if a.width % 32 == 0 else 8,
        add_attention=True,
    ).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0, fused=device.type == "cuda" or None)
    x = torch.cat(
        [_batch(a, device)["image"] * 2 - 1, torch.zeros(a.batch, 17, a.size, a.size, device=device)], 1
    )

    def step() -> None:
        t = torch.randint(0, 1000, (a.batch,), device=device)
        noise = torch.randn_like(x[:, :1])
        with torch.autocast(device.type, dtype=a.dtype, enabled=a.dtype != torch.float32):
            out = net(torch.cat([x[:, :1] + noise, x[:, 1:]], 1), t).sample
        loss = ((out.float()[:, :1] - noise) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def step_flops(step: Callable[[], None]) -> int:
    """FLOPs of one step (matmuls and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def time_step(step: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return (time.perf_counter() - t0) / iters


def flop_utilisation(a: argparse.Namespace, device: torch.device) -> None:
    print(f"\n## model FLOP utilisation ({a.size}x{a.size}, width {a.width}, batch {a.batch}, {a.dtype})")
    print(f"peak {a.peak_tflops:g} TFLOP/s; FLOPs per step from FlopCounterMode (forward + backward)")
    print("| network | GFLOP/step | s/step | img/s | TFLOP/s | MFU | img/s vs UNet2DModel |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = [
        ("diffusers UNet2DModel (eps-MSE)", lambda: diffusers_step(a, device)),
        ("ConditionalDDPM", lambda: ddpm_step(a, device)),
        ("ConditionalDDPM, channels_last", lambda: ddpm_step(a, device, channels_last=True)),
    ]
    if a.compile:  # compiling takes minutes at the GPU size: opt-in
        rows.append(("ConditionalDDPM, torch.compile", lambda: ddpm_step(a, device, compile=True)))
    base, eager_flops = None, 0
    for name, make in rows:
        step = make()
        if "compile" in name:  # the same network: its FLOPs are the eager row's (compiled
            step()  # kernels are invisible to FlopCounterMode); this call compiles
            flops = eager_flops
        else:
            flops = step_flops(step)
            eager_flops = flops if name == "ConditionalDDPM" else eager_flops
        s = time_step(step, device, a.warmup, a.train_steps)
        base = base or a.batch / s
        tflops = flops / s / 1e12
        print(
            f"| {name} | {flops / 1e9:.4g} | {s:.4f} | {a.batch / s:.1f} | {tflops:.1f} | "
            f"{100 * tflops / a.peak_tflops:.1f}% | {a.batch / s / base:.2f} |",
            flush=True,
        )
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()


def diffusion_model(
    cls: type, a: argparse.Namespace, device: torch.device, ckpt: Path | None
) -> DiffusionModel:
    if ckpt is not None:
        model = cls.load_from_checkpoint(ckpt, map_location=device)
    else:
        torch.manual_seed(0)
        model = cls(**model_kwargs(cls, a, None)).to(device)
        with torch.no_grad():
            for p in model.ema.shadow.parameters():
                p.add_(0.02 * torch.randn_like(p))
    if isinstance(model, SDM):
        model.null_trained.fill_(True)  # time guidance (a 2B batch), SDM's setting
    return model.eval()


def generate_seconds(
    model: DiffusionModel, mask: torch.Tensor, sampler: str, nfe: int, precision: str
) -> tuple:
    """``(seconds, output)`` of one ``generate()`` call with per-slice device generators."""
    gens = [torch.Generator(mask.device).manual_seed(i) for i in range(mask.shape[0])]
    sync(mask.device)
    t0 = time.perf_counter()
    with model.autocast(precision):
        out = model.generate(mask, sampler=sampler, num_steps=nfe, generator=gens)
    sync(mask.device)
    return time.perf_counter() - t0, out


def sampling_speed(a: argparse.Namespace, device: torch.device, clock: Clock) -> None:
    mask = _batch(a, device)["mask"]
    print(f"\n## sampling: seconds per slice ({a.size}x{a.size}, batch {a.batch}, {a.sample_precision})")
    print("SDM with guidance 1.5 (condition and null condition: a 2B batch per evaluation)")
    print(
        "| method | sampler | NFE | s/slice, no cache | s/slice, cache | speed-up |\n|---|---|---:|---:|---:|---:|"
    )
    models = {cls: diffusion_model(cls, a, device, None) for cls in DIFFUSION}
    for model in models.values():  # warm-up
        generate_seconds(model, mask, "ddim", 2, a.sample_precision)
    settings = [(s, n) for n in a.nfe if n < a.full_nfe for s in SAMPLERS]
    settings += [("ddpm", n) for n in a.nfe if n >= a.full_nfe]  # the full chain: ancestral only
    per_nfe: dict[tuple[type, bool], float] = {}  # seconds per evaluation (whole batch), measured
    for sampler, nfe in settings:
        for cls, model in models.items():
            cached = [True] if cls is ConditionalDDPM else [False, True]
            estimate = sum(nfe * per_nfe.get((cls, c), 0.0) for c in cached)
            if clock.left() < estimate:
                print(f"| {cls.__name__} | {sampler} | {nfe} | skipped (time budget) | | |", flush=True)
                continue
            sec = {}
            for cache in cached:
                model.condition_cache = cache
                sec[cache] = generate_seconds(model, mask, sampler, nfe, a.sample_precision)[0]
                per_nfe[cls, cache] = sec[cache] / nfe
            model.condition_cache = True
            off = f"{sec[False] / a.batch:.4f}" if False in sec else "(same path)"
            gain = f"{sec[False] / sec[True]:.2f}x" if False in sec else "-"
            print(
                f"| {cls.__name__} | {sampler} | {nfe} | {off} | {sec[True] / a.batch:.4f} | {gain} |",
                flush=True,
            )
    speed_bench.sdm_encoding(models[SDM], mask, repeats=3)  # SPADE lookup vs convs, once per call


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    mse = float(((x.float() - y.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def bf16_quality(a: argparse.Namespace, device: torch.device) -> None:
    # The reference is true fp32: no TF32 in the convolutions and matmuls (cuDNN's default is TF32).
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _bf16_quality(a, device)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def _bf16_quality(a: argparse.Namespace, device: torch.device) -> None:
    mask = _batch(a, device)["mask"]
    source = f"checkpoint {a.ckpt}" if a.ckpt else "random perturbed weights"
    print(f"\n## bf16 vs fp32 sampling: PSNR (dB) between the outputs on the same seeds ({source})")
    print("| method | sampler | NFE | PSNR bf16 vs fp32 | max abs diff |\n|---|---|---:|---:|---:|")
    classes = DIFFUSION
    if a.ckpt:
        from medsynth.synthesis import load_model

        classes = (type(load_model(a.ckpt, map_location="cpu")),)
    for cls in classes:
        model = diffusion_model(cls, a, device, a.ckpt)
        for sampler, nfe in a.quality_settings:
            ref = generate_seconds(model, mask, sampler, nfe, "32")[1]
            out = generate_seconds(model, mask, sampler, nfe, "bf16")[1]
            diff = float((out - ref).abs().max())
            print(f"| {cls.__name__} | {sampler} | {nfe} | {psnr(out, ref):.1f} | {diff:.3g} |", flush=True)


def synthesis_gpus(a: argparse.Namespace, clock: Clock) -> None:
    """Slices per second of ``synthesize_files`` on 1, 2, 4, ... GPUs (all visible ones last)."""
    gpus = torch.cuda.device_count() if a.accelerator == "gpu" else 1
    counts = sorted({*(2**k for k in range(gpus.bit_length()) if 2**k <= gpus), gpus})
    depth, steps = (2, 1) if a.cpu_smoke else (32, 25)
    print(
        f"\n## synthesis on 1..{gpus} devices ({a.size}x{a.size}, {2 * gpus} volumes x {depth} slices, DDIM {steps})"
    )
    print(
        "| devices | s (all) | s start-up | slices/s after start-up | speed-up |\n|---:|---:|---:|---:|---:|"
    )
    torch.manual_seed(0)
    model = diffusion_model(MaskGuidedDDPM, a, torch.device("cpu"), None)  # each process moves its copy
    with tempfile.TemporaryDirectory() as tmp:
        inputs = synthesis_scaling.label_volumes(Path(tmp) / "labels", 2 * gpus, depth, a.size)
        first = None
        for n in counts:
            if clock.left() < 60 and not a.cpu_smoke:
                print(f"| {n} | skipped (time budget) | | | |", flush=True)
                continue
            row = synthesis_scaling.time_synthesis(
                model, inputs, Path(tmp) / f"out{n}", n,
                accelerator=a.accelerator, num_steps=steps, batch_size=a.batch,
            )  # fmt: skip
            first = first or row["slices_per_s_after_startup"]
            print(
                f"| {n} | {row['seconds']:.1f} | {row['startup_seconds']:.1f} | "
                f"{row['slices_per_s_after_startup']:.2f} | {row['slices_per_s_after_startup'] / first:.2f}x |",
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="same code paths on CPU, tiny sizes, seconds")
    p.add_argument(
        "--budget", type=float, default=450.0, help="seconds for the whole run (rows beyond: skipped)"
    )
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H200: ~989)")
    p.add_argument(
        "--ckpt", type=Path, default=None, help="a trained diffusion checkpoint for the bf16 check"
    )
    p.add_argument(
        "--sections",
        nargs="+",
        default=["train", "mfu", "sample", "bf16", "synth"],
        choices=["train", "mfu", "sample", "bf16", "synth"],
    )
    p.add_argument("--compile", action="store_true", help="add a torch.compile row to the MFU table (slow)")
    a = p.parse_args(argv)
    if a.cpu_smoke:
        torch.set_num_threads(1)
        device, a.accelerator = torch.device("cpu"), "cpu"
        a.size, a.width, a.batch, a.precision, a.dtype = 32, 8, 2, "32-true", torch.float32
        a.warmup, a.train_steps, a.nfe, a.full_nfe, a.sample_precision = 1, 1, (2, 3, 4), 4, "32"
        a.quality_settings = [("ddim", 2)]
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: use --cpu-smoke for the CPU check")
        device, a.accelerator = torch.device("cuda"), "gpu"
        a.size, a.width, a.batch, a.precision, a.dtype = 256, 128, 16, "bf16-mixed", torch.bfloat16
        a.warmup, a.train_steps, a.nfe, a.full_nfe, a.sample_precision = 3, 10, (25, 100, 1000), 1000, "bf16"
        a.quality_settings = [("ddim", 25), ("ddpm", 100)]
        torch.backends.cudnn.benchmark = True
    clock = Clock(a.budget)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke run, tiny sizes)"
    print(f"# medsynth speed figures: {name}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        vgg = random_vgg_weights(Path(tmp)) if "train" in a.sections else None
        if "train" in a.sections:
            train_throughput(a, vgg)
    if "mfu" in a.sections:
        flop_utilisation(a, device)
    if "bf16" in a.sections:
        bf16_quality(a, device)
    if "sample" in a.sections:
        sampling_speed(a, device, clock)
    if "synth" in a.sections:
        synthesis_gpus(a, clock)
    print(f"\ntotal {time.perf_counter() - clock.t0:.0f} s")


if __name__ == "__main__":
    main()
