"""The main job on data shipped with medsynth: train, sample, evaluate, write a report.

``medsynth demo`` (the README's first command) trains the mask-guided DDPM of Zhuang et al.
(Fig. 2b) on 64x64 slices of the built-in phantom (``--data phantom``) or of the shipped real CT
(``--data realct``: one patient, held-out slices 20-33 as in experiments/realct), trains an :class:`~medsynth.models.OrganSegmenter` on the
real slices to score organ correspondence, samples the test split with a fast sampler, computes
PSNR, SSIM, organ Dice (and FID when the Inception file is present) and writes the paper-style
report and a figure under one output folder. Sized for about 15 minutes on a 2-core CPU.

Each stage's artefact is written as soon as it exists (the segmenter checkpoint, the DDPM
checkpoint, refreshed every ``checkpoint_every`` steps while it trains, then the report), so an
interrupted demo leaves what it had. The docs' description of the demo is generated from
:class:`DemoConfig` and the Makefile by :func:`settings_markdown` (tests/test_docs.py checks it).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "DemoConfig",
    "run_demo",
    "demo_datamodule",
    "settings_markdown",
    "SAMPLER_NAMES",
    "QUICK",
    "DEMO_DATA",
]

#: How the docs name the samplers (``generate(sampler=...)``).
SAMPLER_NAMES = {
    "ddpm": "ancestral sampling",
    "ddim": "DDIM",
    "dpm++": "DPM-Solver++",
}


@dataclass
class DemoConfig:
    """Settings of the demo; the defaults fit ~15 minutes on a 2-core CPU.

    Attributes:
        output: Folder for checkpoints, TensorBoard logs, the report and the figure.
        data: ``"phantom"`` (the built-in phantom) or ``"realct"`` (the shipped real-CT fixture,
            :func:`medsynth.data.nnunet.realct_files`, split along z as in experiments/realct).
        label_set: The masks' classes: ``"amos"`` (15 organs + body, the paper's) or ``"totalseg"``
            (every TotalSegmentator structure the data labels).
        image_size: Slice size.
        num_train_cases / num_test_cases / depth: Phantom volumes and slices per volume (phantom only).
        model_channels: Base width of the mask-guided DDPM.
        train_steps: Optimiser steps of the DDPM.
        lr: DDPM learning rate (the paper's 1e-4 needs 150k steps; the short demo uses more).
        ema_decay: EMA decay (0.9999 in the paper, too slow for a few thousand steps).
        noise_schedule / prediction_type: The phantom recipe (docs/benchmarks.md): the cosine
            schedule and v-prediction, which removes the grey air of eps-prediction in short runs.
        ema_warmup / lr_warmup_steps: EMA decay warm-up and linear lr warm-up (phantom recipe).
        segmenter_steps: Optimiser steps of the organ segmenter.
        sampler / num_steps: Sampler for evaluation: ancestral sampling respaced to 100 steps, which
            beats the deterministic samplers on briefly trained models (benchmarks/sampling.py).
        fid_weights: Inception file for FID (skipped when absent).
        seed: Seeds the phantom, training and sampling.
        accelerator: Lightning accelerator ("auto" uses a GPU when there is one).
        checkpoint_every: Steps between refreshes of the DDPM checkpoint while it trains.
        grid_images: Rows of the image grid (mask | real | synthetic) logged to TensorBoard.
    """

    output: str = "outputs/demo"
    data: str = "phantom"
    label_set: str = "amos"
    image_size: int = 64
    num_train_cases: int = 16
    num_test_cases: int = 3
    depth: int = 24
    batch_size: int = 16
    model_channels: int = 16
    train_steps: int = 1200
    lr: float = 5e-4
    ema_decay: float = 0.995
    noise_schedule: str = "cosine"
    prediction_type: str = "v"
    ema_warmup: bool = True
    lr_warmup_steps: int = 100
    segmenter_steps: int = 300
    sampler: str = "ddpm"
    num_steps: int = 100
    fid_weights: str | None = None
    seed: int = 0
    accelerator: str = "auto"
    checkpoint_every: int = 200
    grid_images: int = 4


#: ``--quick``: tiny settings that check the pipeline in about a minute, not the quality.
QUICK = {
    "image_size": 32, "num_train_cases": 2, "num_test_cases": 1, "depth": 8,
    "model_channels": 8, "train_steps": 4, "segmenter_steps": 4, "num_steps": 4,
}  # fmt: skip


def _make_demo_args(makefile: str | Path) -> str:
    """The ``medsynth demo`` arguments in the Makefile's ``demo`` recipe (without ``$(DEMO_ARGS)``)."""
    lines = Path(makefile).read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("demo:"):
            for recipe in lines[i + 1 :]:
                if "medsynth demo" in recipe:
                    args = recipe.split("medsynth demo", 1)[1].replace("$(DEMO_ARGS)", "")
                    return " ".join(args.split())
    raise ValueError(f"{makefile}: no demo recipe running `medsynth demo`")


def settings_markdown(cfg: DemoConfig | None = None, makefile: str | Path = "Makefile") -> str:
    """The docs' paragraph on what ``make demo`` does, from ``cfg`` (default: ``DemoConfig()``)
    and the Makefile's demo recipe; README.md and docs/getting_started.md hold it verbatim."""
    c = cfg or DemoConfig()
    sampler = SAMPLER_NAMES.get(c.sampler, c.sampler)
    fid = "FID too when clean-fid's Inception file is present" if c.fid_weights is None else "FID"
    return (
        f"`make demo` runs `medsynth demo {_make_demo_args(makefile)}`: it writes "
        f"{c.num_train_cases} training and {c.num_test_cases} test phantom volumes "
        f"({c.depth} slices, {c.image_size}x{c.image_size}), trains an organ segmenter on the real "
        f"slices ({c.segmenter_steps:,} steps, for organ Dice) and the mask-guided DDPM "
        f"(width {c.model_channels}, {c.train_steps:,} steps, batch {c.batch_size}, lr {c.lr:g}, "
        f"EMA {c.ema_decay:g}), samples the test split with {sampler} (`{c.sampler}`, "
        f"{c.num_steps:,} steps) and computes PSNR, SSIM and organ Dice ({fid}). "
        f'`--quick` (`make demo DEMO_ARGS="--quick"`) instead sets '
        + ", ".join(f"`{k}` {v}" for k, v in QUICK.items())
        + ": about a minute, a check of the pipeline, not of quality. Every field of "
        "`medsynth.demo.DemoConfig` is a flag (`medsynth demo --help`)."
    )


def _save_every_class():
    from lightning.pytorch.callbacks import Callback

    class SaveEvery(Callback):
        """Write the checkpoint to ``path`` every ``every`` optimiser steps while training."""

        def __init__(self, path: Path, every: int) -> None:
            if every < 1:
                raise ValueError(f"checkpoint_every must be >= 1, got {every}")
            self.path, self.every = path, every

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step % self.every == 0:
                trainer.save_checkpoint(self.path, weights_only=False)

    return SaveEvery


def _SaveEvery(path: Path, every: int):  # noqa: N802 - builds the callback without importing Lightning early
    return _save_every_class()(path, every)


#: The ``data`` choices of the demo.
DEMO_DATA = ("phantom", "realct")


def demo_datamodule(cfg: DemoConfig, out: Path):
    """The demo's data: the phantom, or the real-CT fixture written as an nnU-Net dataset under
    ``out/data`` (its slice cache under ``out/cache``), z split at the held-out slab."""
    if cfg.data == "phantom":
        from medsynth.data import PhantomDataModule

        return PhantomDataModule(
            num_train_cases=cfg.num_train_cases,
            num_val_cases=0,
            num_test_cases=cfg.num_test_cases,
            depth=cfg.depth,
            image_size=cfg.image_size,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            label_set=cfg.label_set,
        )
    if cfg.data != "realct":
        raise ValueError(f"data must be one of {', '.join(DEMO_DATA)}, got {cfg.data!r}")
    from medsynth.data import NNUNetDataModule
    from medsynth.data.nnunet import REALCT_TEST_SLAB, realct_files
    from medsynth.io import DatasetPair, write_nnunet_dataset

    root = out / "data" / "Dataset700_RealCT"
    if not (root / "dataset.json").is_file():
        ct, labels, names = realct_files()
        write_nnunet_dataset([DatasetPair(ct, labels, "realct")], root, names)
    return NNUNetDataModule(
        root,
        label_set=cfg.label_set,
        remap="by_name",
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        num_workers=0,
        cache_dir=out / "cache",
        test_slab=REALCT_TEST_SLAB,
        augment=True,
        progress=False,
    )


def _stage(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def run_demo(cfg: DemoConfig) -> dict[str, float]:
    """Run the demo end to end; returns the test metrics of the mask-guided DDPM."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from medsynth.callbacks import SynthesisImageGrid
    from medsynth.callbacks.progress import default_progress_bar
    from medsynth.evaluate import evaluate_models, figure_batch, write_evaluation
    from medsynth.metrics.image import find_inception_weights
    from medsynth.models import MaskGuidedDDPM, OrganSegmenter

    if cfg.data not in DEMO_DATA:
        raise ValueError(f"data must be one of {', '.join(DEMO_DATA)}, got {cfg.data!r}")
    if cfg.label_set not in ("amos", "totalseg"):
        raise ValueError(f"label_set must be 'amos' or 'totalseg', got {cfg.label_set!r}")
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
            callbacks=[*callbacks, default_progress_bar()],  # plain progress lines in a log
            enable_checkpointing=False,
            limit_val_batches=0,
            log_every_n_steps=10,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )

    what = (
        f"{cfg.num_train_cases} training and {cfg.num_test_cases} test phantom volumes"
        if cfg.data == "phantom"
        else "the real-CT fixture, held-out slices 20-33"
    )
    _stage(f"1/4 data: {what} ({cfg.label_set} labels, {cfg.image_size}px)")
    dm = demo_datamodule(cfg, out)

    _stage(f"2/4 organ segmenter on real slices ({cfg.segmenter_steps} steps), for organ Dice")
    segmenter = OrganSegmenter(image_size=cfg.image_size, model_channels=16, label_set=cfg.label_set)
    seg_trainer = trainer("organ_segmenter", cfg.segmenter_steps)
    seg_trainer.fit(segmenter, datamodule=dm)
    seg_trainer.save_checkpoint(ckpt_dir / "organ_segmenter.ckpt", weights_only=False)
    print(f"wrote {ckpt_dir / 'organ_segmenter.ckpt'}", flush=True)
    real = seg_trainer.test(segmenter, datamodule=dm, verbose=False)[0]

    _stage(f"3/4 mask-guided DDPM ({cfg.train_steps} steps, width {cfg.model_channels}, {cfg.image_size}px)")
    model = MaskGuidedDDPM(
        image_size=cfg.image_size,
        label_set=cfg.label_set,
        model_channels=cfg.model_channels,
        channel_mult=(1, 2, 2, 2),
        attention_resolutions=(8,),
        lr=cfg.lr,
        ema_decay=cfg.ema_decay,
        noise_schedule=cfg.noise_schedule,
        prediction_type=cfg.prediction_type,
        ema_warmup=cfg.ema_warmup,
        lr_warmup_steps=cfg.lr_warmup_steps,
    )
    # The checkpoint exists (and is refreshed) while the DDPM trains, not only at the end.
    partial = _SaveEvery(ckpt_dir / "mask_guided_ddpm.ckpt", cfg.checkpoint_every)
    ddpm_trainer = trainer("mask_guided_ddpm", cfg.train_steps, callbacks=[partial])
    ddpm_trainer.fit(model, datamodule=dm)
    ddpm_trainer.save_checkpoint(ckpt_dir / "mask_guided_ddpm.ckpt", weights_only=False)
    print(f"wrote {ckpt_dir / 'mask_guided_ddpm.ckpt'}", flush=True)

    _stage(
        f"4/4 evaluation on the test split: {cfg.sampler}, {cfg.num_steps} steps; metrics {', '.join(metrics)}"
    )
    name = f"Mask-guided DDPM ({cfg.data} demo)"
    opts = {"sampler": cfg.sampler, "num_steps": cfg.num_steps}
    grid = SynthesisImageGrid(num_images=cfg.grid_images, seed=cfg.seed, **opts)  # -> TensorBoard
    rows = evaluate_models(
        {name: model}, dm, metrics=metrics, segmenter=segmenter, fid_weights=cfg.fid_weights, seed=cfg.seed,
        accelerator=cfg.accelerator, log_dir=out / "tensorboard", callbacks=[grid], **opts,
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
