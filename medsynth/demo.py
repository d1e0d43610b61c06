"""The main job on the built-in phantom: train, sample, evaluate, write a report.

``medsynth demo`` (the README's first command) trains the mask-guided DDPM of Zhuang et al.
(Fig. 2b) on 64x64 phantom slices, trains an :class:`~medsynth.models.OrganSegmenter` on the
real slices to score organ correspondence, samples the test split with a fast sampler, computes
PSNR, SSIM, organ Dice (and FID when the Inception file is present) and writes the paper-style
report and a figure under one output folder. Sized for about 15 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["DemoConfig", "run_demo", "main"]


@dataclass
class DemoConfig:
    """Settings of the demo; the defaults fit ~15 minutes on a 2-core CPU.

    Attributes:
        output: Folder for checkpoints, TensorBoard logs, the report and the figure.
        image_size: Slice size.
        num_train_cases / num_test_cases / depth: Phantom volumes and slices per volume.
        model_channels: Base width of the mask-guided DDPM.
        train_steps: Optimiser steps of the DDPM.
        lr: DDPM learning rate (the paper's 1e-4 needs 150k steps; the short demo uses more).
        ema_decay: EMA decay (0.9999 in the paper, too slow for a few thousand steps).
        segmenter_steps: Optimiser steps of the organ segmenter.
        sampler / num_steps: Sampler for evaluation: ancestral sampling respaced to 100 steps, which
            beats the deterministic samplers on briefly trained models (benchmarks/sampling.py).
        fid_weights: Inception file for FID (skipped when absent).
        seed: Seeds the phantom, training and sampling.
        accelerator: Lightning accelerator ("auto" uses a GPU when there is one).
    """

    output: str = "outputs/demo"
    image_size: int = 64
    num_train_cases: int = 16
    num_test_cases: int = 3
    depth: int = 24
    batch_size: int = 16
    model_channels: int = 16
    train_steps: int = 1200
    lr: float = 5e-4
    ema_decay: float = 0.995
    segmenter_steps: int = 300
    sampler: str = "ddpm"
    num_steps: int = 100
    fid_weights: str | None = None
    seed: int = 0
    accelerator: str = "auto"


def _stage(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def run_demo(cfg: DemoConfig) -> dict[str, float]:
    """Run the demo end to end; returns the test metrics of the mask-guided DDPM."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from medsynth.data import PhantomDataModule
    from medsynth.evaluate import evaluate_models, figure_batch, write_evaluation
    from medsynth.metrics.image import find_inception_weights
    from medsynth.models import MaskGuidedDDPM, OrganSegmenter

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    t0 = time.time()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    metrics = ["psnr", "ssim", "dice"]
    try:
        find_inception_weights(cfg.fid_weights)
        metrics.append("fid")
    except FileNotFoundError as err:
        print(f"FID skipped: {str(err).splitlines()[0]}")

    def trainer(name: str, steps: int | None = None, callbacks=()) -> L.Trainer:
        return L.Trainer(
            accelerator=cfg.accelerator,
            devices=1,
            max_steps=steps if steps is not None else -1,
            logger=TensorBoardLogger(out / "tensorboard", name=name, version=""),
            callbacks=list(callbacks),
            enable_checkpointing=False,
            limit_val_batches=0,
            log_every_n_steps=10,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )

    _stage(f"1/4 phantom data: {cfg.num_train_cases} training and {cfg.num_test_cases} test volumes")
    dm = PhantomDataModule(
        num_train_cases=cfg.num_train_cases,
        num_val_cases=0,
        num_test_cases=cfg.num_test_cases,
        depth=cfg.depth,
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )

    _stage(f"2/4 organ segmenter on real slices ({cfg.segmenter_steps} steps), for organ Dice")
    segmenter = OrganSegmenter(image_size=cfg.image_size, model_channels=16)
    seg_trainer = trainer("organ_segmenter", cfg.segmenter_steps)
    seg_trainer.fit(segmenter, datamodule=dm)
    seg_trainer.save_checkpoint(ckpt_dir / "organ_segmenter.ckpt")
    real = seg_trainer.test(segmenter, datamodule=dm, verbose=False)[0]

    _stage(f"3/4 mask-guided DDPM ({cfg.train_steps} steps, width {cfg.model_channels}, {cfg.image_size}px)")
    model = MaskGuidedDDPM(
        image_size=cfg.image_size,
        model_channels=cfg.model_channels,
        channel_mult=(1, 2, 2, 2),
        attention_resolutions=(8,),
        lr=cfg.lr,
        ema_decay=cfg.ema_decay,
    )
    ddpm_trainer = trainer("mask_guided_ddpm", cfg.train_steps)
    ddpm_trainer.fit(model, datamodule=dm)
    ddpm_trainer.save_checkpoint(ckpt_dir / "mask_guided_ddpm.ckpt")

    _stage(
        f"4/4 evaluation on the test split: {cfg.sampler}, {cfg.num_steps} steps; metrics {', '.join(metrics)}"
    )
    name = "Mask-guided DDPM (phantom demo)"
    opts = {"sampler": cfg.sampler, "num_steps": cfg.num_steps}
    rows = evaluate_models(
        {name: model}, dm, metrics=metrics, segmenter=segmenter, fid_weights=cfg.fid_weights, seed=cfg.seed,
        accelerator=cfg.accelerator, log_dir=out / "tensorboard", **opts,
    )  # fmt: skip
    results = rows[name]
    # Upper bound of the Dice columns: the same segmenter on the real test slices.
    rows["Real slices (segmenter upper bound)"] = {
        k: v for k, v in real.items() if k.startswith("test/dice/")
    }
    files = write_evaluation(
        rows, out, models={name: model}, batch=figure_batch(dm, 4), seed=cfg.seed, **opts
    )
    elapsed = time.time() - t0
    summary = {"config": asdict(cfg), "test": results, "real_slices_segmenter": real, "seconds": elapsed}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    _stage(f"done in {elapsed / 60:.1f} min")
    for key in ("test/psnr", "test/ssim", "test/fid", "test/dice/mean"):
        if key in results:
            print(f"  {key:18s} {results[key]:.4f}")
    for f in files:
        print(f"  wrote {f}")
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medsynth demo", description=__doc__.splitlines()[0])
    d = DemoConfig()
    for name, value in asdict(d).items():
        kind = type(value) if value is not None else str
        p.add_argument(f"--{name}", type=kind, default=value)
    p.add_argument(
        "--quick", action="store_true", help="tiny settings (a minute): checks the pipeline, not quality"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    quick = args.pop("quick")
    cfg = DemoConfig(**args)
    if quick:
        cfg.image_size, cfg.num_train_cases, cfg.num_test_cases, cfg.depth = 32, 2, 1, 8
        cfg.model_channels, cfg.train_steps, cfg.segmenter_steps, cfg.num_steps = 8, 4, 4, 4
    run_demo(cfg)
    return 0
