"""Seconds per sampling step of SDM and the mask-/edge-guided DDPMs over the conditional DDPM's.

One run, same widths for every method, with and without the condition cache (the encoder
branch's features and SPADE's modulation computed once per ``generate()`` call instead of at
every step). Runs are interleaved (every method once per repeat) and the fastest is reported; on
the CPU the time is the process's CPU time (one thread), which a busy machine inflates far less
than wall-clock time, so the ratios hold there even when absolute times do not. The last column is the
largest difference between the cached and uncached outputs on the same seeds (randomly
perturbed weights, so the outputs are not the zero-initialised network's constant).

    python benchmarks/sampling_speed.py                  # CPU, 64x64, width 32, batch 4, DDIM 20 steps, 1 thread
    python benchmarks/sampling_speed.py --mask phantom   # the same on phantom slices instead of random squares
    python benchmarks/sampling_speed.py --encode-only --repeats 5   # SDM's encoding: SPADE lookup vs convs
    python benchmarks/sampling_speed.py --lookup-check SDM.ckpt --mask phantom   # a trained SDM's samples
    python benchmarks/sampling_speed.py --device cuda --size 256 --width 128 --batch 16
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from medsynth.data.datamodule import PhantomDataModule
from medsynth.models import SDM, ConditionalDDPM, EdgeGuidedDDPM, MaskGuidedDDPM
from medsynth.models.ddpm import DiffusionModel


def build(
    cls: type[DiffusionModel], size: int, width: int, device: torch.device, guided: bool
) -> DiffusionModel:
    """A model at ``width`` with perturbed EMA weights (zero-initialised convs would give constants)."""
    torch.manual_seed(0)
    model = cls(size, model_channels=width).to(device).eval()
    with torch.no_grad():
        for p in model.ema.shadow.parameters():
            p.add_(0.02 * torch.randn_like(p))
    if guided:
        model.null_trained.fill_(True)  # guidance needs a trained null condition
    return model


def test_mask(batch: int, size: int, device: torch.device, kind: str = "blocks") -> torch.Tensor:
    """Label maps ``[B, H, W]``. ``"blocks"``: a random label on every 8x8 square, far more
    distinct edges than an abdomen (the hard case for SDM's SPADE lookup, whose cost grows with
    the distinct 3x3 label patches; the other methods' cost does not depend on the content).
    ``"phantom"``: the slice with the most labels of each of ``batch`` phantom test volumes."""
    if kind == "blocks":
        g = torch.Generator().manual_seed(0)
        coarse = torch.randint(0, 17, (batch, size // 8, size // 8), generator=g)
        return coarse.repeat_interleave(8, 1).repeat_interleave(8, 2).to(device)
    if kind != "phantom":
        raise ValueError(f"--mask must be 'blocks' or 'phantom', got {kind!r}")
    dm = PhantomDataModule(
        num_train_cases=1, num_val_cases=1, num_test_cases=batch, depth=16, image_size=size
    )
    dm.setup("test")
    best: dict[str, torch.Tensor] = {}
    for item in dm.test_dataloader().dataset:
        m = item["mask"].long().reshape(size, size)
        if item["case_id"] not in best or m.unique().numel() > best[item["case_id"]].unique().numel():
            best[item["case_id"]] = m
    return torch.stack([best[k] for k in sorted(best)]).to(device)


def run(model: DiffusionModel, mask: torch.Tensor, steps: int, cache: bool, guidance: float | None) -> tuple:
    """``(seconds per step, output)`` of one DDIM ``generate()`` call: CPU time on the CPU (one
    thread: descheduling on a busy machine does not count), wall-clock time on CUDA."""
    model.condition_cache = cache
    kwargs = {"guidance_scale": guidance} if guidance is not None else {}
    cuda = mask.device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    if cuda:
        torch.cuda.synchronize()
    t0 = clock()
    out = model.generate(
        mask, sampler="ddim", num_steps=steps, generator=torch.Generator(mask.device).manual_seed(0), **kwargs
    )
    if cuda:
        torch.cuda.synchronize()
    return (clock() - t0) / steps, out


def sdm_encoding(model: DiffusionModel, mask: torch.Tensor, repeats: int) -> None:
    """Print the seconds of SDM's once-per-call encoding of ``mask`` (every SPADE's modulation),
    by lookup over the distinct label patches and with the convs, and their largest difference."""
    net = model.ema.shadow
    seg = model.model_kwargs(mask)["seg"].to(net.conv_in.weight.dtype)  # [B, K, H, W] one-hot
    cuda = mask.device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    found: dict[str, tuple[float, list]] = {}
    for name in ("lookup", "convs"):
        net.spade_lookup = name == "lookup"
        best = float("inf")
        try:
            with torch.no_grad():
                for _ in range(repeats + 1):  # the first is a warm-up
                    if cuda:
                        torch.cuda.synchronize()
                    t0 = clock()
                    out = net.encode_seg(seg)
                    if cuda:
                        torch.cuda.synchronize()
                    best = min(best, clock() - t0)
        finally:
            net.spade_lookup = True
        found[name] = (best, out)
    pairs = [
        (a, b)
        for x, y in zip(found["lookup"][1], found["convs"][1])
        if x is not None  # blocks without SPADE (attention) encode nothing
        for mx, my in zip(x, y)
        for a, b in zip(mx, my)
    ]
    diff = max(float((a - b).abs().max()) for a, b in pairs)
    print(
        f"\nSDM encoding once per generate() call (fastest of {repeats}): lookup {found['lookup'][0]:.3f} s, "
        f"convs {found['convs'][0]:.3f} s; largest difference of the modulation maps {diff:.1e}"
    )


def lookup_check(ckpt: str, mask: torch.Tensor, seeds: int, threads: int, **generate_kwargs) -> None:
    """A trained SDM's samples with SPADE's lookup against the same samples with the convs (the
    checkpoint's sampler, steps and guidance unless ``generate_kwargs`` say otherwise; the same
    noise): largest difference and PSNR between the two, per seed."""
    from medsynth.metrics.image import psnr as image_psnr
    from medsynth.synthesis import load_model

    model = load_model(ckpt, map_location=mask.device).eval()
    if not isinstance(model, SDM):
        raise SystemExit(f"--lookup-check needs an SDM checkpoint, {ckpt} is a {type(model).__name__}")
    net = model.ema.shadow
    h = {**{k: model.hparams.get(k) for k in ("sampler", "num_steps", "guidance_scale")}, **generate_kwargs}
    print(f"{ckpt}: {mask.shape[0]} masks {tuple(mask.shape[1:])}, {h} (None: 1000), {threads} thread(s)")
    print(
        f"{'seed':>4s} {'max |lookup - convs|':>21s} {'PSNR lookup vs convs (dB)':>26s} {'s lookup':>9s} {'s convs':>8s}"
    )
    for seed in range(seeds):
        outs, secs = {}, {}
        for name in ("lookup", "convs"):
            net.spade_lookup = name == "lookup"
            try:
                t0 = time.process_time()
                gen = torch.Generator().manual_seed(seed)
                outs[name] = model.generate(mask, generator=gen, **generate_kwargs)  # [B, 1, H, W]
                secs[name] = time.process_time() - t0
            finally:
                net.spade_lookup = True
        diff = (outs["lookup"] - outs["convs"]).double()  # images in [0, 1]
        psnr = float(image_psnr(outs["lookup"].double(), outs["convs"].double()))  # mean over images
        print(
            f"{seed:4d} {float(diff.abs().max()):21.1e} {psnr:26.1f} {secs['lookup']:9.1f} {secs['convs']:8.1f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (network evaluations)")
    p.add_argument(
        "--short-steps",
        type=int,
        default=5,
        help="the shorter run that splits per-step from once-per-call cost",
    )
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the fastest is reported")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--guided", action="store_true", help="add SDM with guidance 1.5 (a 2B batch per step)")
    p.add_argument(
        "--lookup-check",
        metavar="CKPT",
        help="a trained SDM checkpoint: its samples with the SPADE lookup vs the convs (--seeds seeds)",
    )
    p.add_argument("--seeds", type=int, default=3, help="noise seeds for --lookup-check")
    p.add_argument(
        "--encode-only", action="store_true", help="only SDM's once-per-call encoding: lookup vs convs"
    )
    p.add_argument(
        "--mask",
        choices=("blocks", "phantom"),
        default="blocks",
        help="random labels on 8x8 squares (many edges: SDM's hard case) or phantom slices",
    )
    a = p.parse_args()
    if not 1 <= a.short_steps < a.steps:
        p.error(f"--short-steps must lie in 1..{a.steps - 1}, got {a.short_steps}")
    if a.seeds < 1 or a.repeats < 1:
        p.error(f"--seeds and --repeats must be at least 1, got {a.seeds} and {a.repeats}")
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    rows = [
        ("ConditionalDDPM", ConditionalDDPM, None),
        ("MaskGuidedDDPM", MaskGuidedDDPM, None),
        ("EdgeGuidedDDPM", EdgeGuidedDDPM, None),
        ("SDM", SDM, 1.0),
    ]
    if a.guided:
        rows.append(("SDM, guidance 1.5 (2B)", SDM, 1.5))
    if a.lookup_check:
        lookup_check(a.lookup_check, test_mask(a.batch, a.size, device, a.mask), a.seeds, a.threads)
        return
    mask = test_mask(a.batch, a.size, device, a.mask)
    if a.encode_only:
        print(f"{a.size}x{a.size}, width {a.width}, batch {a.batch}, {a.mask} masks, {a.threads} thread(s)")
        sdm_encoding(build(SDM, a.size, a.width, device, False), mask, a.repeats)
        return
    models = {name: build(cls, a.size, a.width, device, g not in (None, 1.0)) for name, cls, g in rows}
    print(
        f"sampling speed: {a.size}x{a.size}, width {a.width}, batch {a.batch}, {a.mask} masks, DDIM {a.steps} steps, "
        f"{a.threads} thread(s), device {device}, fastest of {a.repeats} interleaved repeats"
    )
    for name, _, g in rows:  # warm-up (allocator, kernels)
        run(models[name], mask, 2, True, g)
    times: dict[tuple[str, bool], list[float]] = {(name, c): [] for name, _, _ in rows for c in (False, True)}
    diffs: dict[str, float] = {}
    short: dict[str, list[float]] = {name: [] for name, _, _ in rows}  # cached, a.short_steps: seconds
    for rep in range(a.repeats):
        print(f"  repeat {rep + 1}/{a.repeats}", file=sys.stderr, flush=True)
        for name, _, g in rows:
            same_path = name == "ConditionalDDPM"  # nothing to cache: one run serves both columns
            outs = {}
            for cache in (True,) if same_path else (False, True):
                dt, outs[cache] = run(models[name], mask, a.steps, cache, g)
                times[name, cache].append(dt)
            if same_path:
                outs[False] = outs[True]
                times[name, False] = times[name, True]
            diffs[name] = max(diffs.get(name, 0.0), float((outs[True] - outs[False]).abs().max()))
            short[name].append(run(models[name], mask, a.short_steps, True, g)[0] * a.short_steps)
    med = {k: min(v) for k, v in times.items()}  # interference only adds time
    base = {c: med["ConditionalDDPM", c] for c in (False, True)}
    print(
        f"{'method':24s} {'s/step no cache':>16s} {'s/step cache':>13s} {'ratio no cache':>15s} "
        f"{'ratio cache':>12s} {'cache speed-up':>15s} {'max |diff|':>11s}"
    )
    for name, _, _ in rows:
        off, on = med[name, False], med[name, True]
        print(
            f"{name:24s} {off:16.4f} {on:13.4f} {off / base[False]:14.2f}x {on / base[True]:11.2f}x "
            f"{off / on:14.2f}x {diffs[name]:11.1e}"
        )
    what = "wall-clock" if device.type == "cuda" else "CPU time of the process"
    print(
        f"s/step: {what}; ratio = s/step over ConditionalDDPM's in the same column (target, cache: <= 1.2x)"
    )
    # With the cache, a generate() call costs once + per step: split them with a shorter run.
    # marginal = (T(n) - T(m)) / (n - m); once = T(m) - m * marginal (fastest runs of each length).
    n, m = a.steps, a.short_steps
    marginal = {name: (med[name, True] * n - min(short[name])) / (n - m) for name, _, _ in rows}
    print(f"\nwith the cache, split from DDIM {n} and {m} steps: cost per step and once per generate() call")
    print(f"{'method':24s} {'s/step marginal':>16s} {'ratio marginal':>15s} {'s once per call':>16s}")
    for name, _, _ in rows:
        once = min(short[name]) - m * marginal[name]
        print(
            f"{name:24s} {marginal[name]:16.4f} {marginal[name] / marginal['ConditionalDDPM']:14.2f}x {once:16.3f}"
        )
    sdm_encoding(models["SDM"], mask, a.repeats)


if __name__ == "__main__":
    main()
