"""Training-step throughput of the GAN baselines (Pix2Pix, SPADE, OASIS) in images per second.

One training step = one discriminator and one generator update (GANModule.training_step), timed
inside a Lightning fit from batch start to batch end (data loading excluded), after warm-up
steps. Networks at the published widths unless --model-channels/--disc-channels say otherwise.
SPADE's VGG loss needs ImageNet weights that are never downloaded; its cost does not depend on
the weights, so unless --vgg-weights is given a randomly initialised VGG19 is saved to a
temporary file and used (the timing is that of the published setting, lambda_vgg=10).

    python benchmarks/train_throughput_gan.py                   # CPU, 64x64
    python benchmarks/train_throughput_gan.py --gpu             # CUDA, 256x256, bf16-mixed
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.protocol, run from anywhere
from benchmarks.protocol import quiet_trainer  # noqa: E402
from medsynth.models import OASIS, SPADE, Pix2Pix  # noqa: E402

METHODS = {"pix2pix": Pix2Pix, "spade": SPADE, "oasis": OASIS}


class _Slices(Dataset):
    """Fixed random masks with a matching image (throughput does not depend on the content)."""

    def __init__(self, n: int, size: int, num_classes: int = 17) -> None:
        g = torch.Generator().manual_seed(0)
        coarse = torch.randint(0, num_classes, (n, size // 8, size // 8), generator=g)
        self.masks = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)
        self.images = (self.masks.float() / (num_classes - 1)).unsqueeze(1)

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i], "case_id": f"bench{i}", "slice_index": i}


class _StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self._t0 = warmup, [], 0.0

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._t0)


def random_vgg_weights(folder: Path) -> Path:
    from torchvision.models import vgg19

    path = folder / "vgg19_random.pth"
    torch.save({f"features.{k}": v for k, v in vgg19(weights=None).features.state_dict().items()}, path)
    return path


def benchmark(
    name: str, args: argparse.Namespace, accelerator: str, vgg_weights: Path | None
) -> tuple[float, float, int]:
    """Images per second (median over timed steps), seconds per step and generator parameters."""
    cls = METHODS[name]
    kwargs = {"image_size": args.size}
    if args.model_channels:
        kwargs["model_channels"] = args.model_channels
    if args.disc_channels:
        kwargs["disc_channels"] = args.disc_channels
    if name == "spade":
        kwargs.update(lambda_vgg=10.0 if not args.no_vgg else 0.0, vgg_weights=vgg_weights)
    torch.manual_seed(0)
    model = cls(**kwargs)
    steps = args.warmup + args.steps
    loader = DataLoader(_Slices(args.batch_size * steps, args.size), batch_size=args.batch_size)
    timer = _StepTimer(args.warmup)
    quiet_trainer(accelerator, max_steps=steps, callbacks=[timer], precision=args.precision).fit(
        model, loader
    )
    step_s = statistics.median(timer.times)
    params = sum(p.numel() for p in model.generator.parameters())
    return args.batch_size / step_s, step_s, params


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="CUDA at 256x256 (default: CPU at 64x64)")
    p.add_argument("--size", type=int, default=None, help="image size (default 64 on CPU, 256 with --gpu)")
    p.add_argument("--batch-size", type=int, default=None, help="default 4 on CPU, 16 with --gpu")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument(
        "--precision", default=None, help="Lightning precision (default 32 on CPU, bf16-mixed on GPU)"
    )
    p.add_argument("--model-channels", type=int, default=None, help="generator width (default: published)")
    p.add_argument("--disc-channels", type=int, default=None, help="discriminator width (default: published)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--vgg-weights", type=Path, default=None, help="VGG19 weights for SPADE (default: random)")
    p.add_argument("--no-vgg", action="store_true", help="SPADE without its VGG loss")
    args = p.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu given but CUDA is not available")
    args.size = args.size or (256 if args.gpu else 64)
    args.batch_size = args.batch_size or (16 if args.gpu else 4)
    args.precision = args.precision or ("bf16-mixed" if args.gpu else "32-true")
    accelerator = "gpu" if args.gpu else "cpu"
    torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if args.gpu else f"CPU, {args.threads} thread(s)"
    print(
        f"# GAN training-step throughput: {device}, {args.size}x{args.size}, batch {args.batch_size}, "
        f"{args.precision}, median of {args.steps} steps after {args.warmup} warm-up"
    )
    print("| method | images/s | s/step | G params (M) |\n|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        vgg = args.vgg_weights
        if "spade" in args.methods and vgg is None and not args.no_vgg:
            vgg = random_vgg_weights(Path(tmp))
        for name in args.methods:
            ips, step_s, params = benchmark(name, args, accelerator, vgg)
            print(f"| {name} | {ips:.2f} | {step_s:.3f} | {params / 1e6:.1f} |", flush=True)


if __name__ == "__main__":
    main()
