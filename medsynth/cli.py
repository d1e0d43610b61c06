"""The ``medsynth`` command line.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands in subclass mode
(any method, any data module, configs from experiments/); ``synthesize``, ``evaluate``,
``phantom`` and ``demo`` are medsynth's own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medsynth import __version__

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
OWN_COMMANDS = ("synthesize", "evaluate", "phantom", "demo", "masks", "label", "dataset", "version")

USAGE = """usage: medsynth <command> [options]

Training and inference (LightningCLI; `medsynth <command> --help` for all options):
  fit         train a method:        medsynth fit --config experiments/phantom/mask_guided_ddpm.yaml
  validate    run the validation loop
  test        run the test loop (with SynthesisMetrics in the config: the paper's metrics)
  predict     generate slices for a data module's predict split

medsynth's own commands:
  synthesize  label volumes (NIfTI) -> synthetic CT volumes, optionally as an nnU-Net dataset
  evaluate    metric suite for one or more checkpoints -> paper-style report (Markdown, CSV, LaTeX, PNG)
  label       unlabelled CT -> TotalSegmentator masks -> an nnU-Net raw dataset
  dataset     CT + label volumes you have (and their id -> name table) -> an nnU-Net raw dataset
  masks       varied label volumes from existing ones (organ scaling, elastic deformation)
  phantom     write the built-in phantom as an AMOS22-layout dataset
  demo        the main job on the phantom: train, sample, evaluate, write a report
  version     print the version (also: medsynth --version)

Progress: when stdout is not a terminal (a log file, a batch job), every command prints plain
progress lines (step/total, loss, speed, ETA) at least every 30 s instead of a redrawn bar.
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` of medsynth's own commands: every option with its default (unless its help
    already says what the default is, or the option is required)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def lightning_cli_class():
    """medsynth's LightningCLI (:class:`medsynth.configs.MedsynthCLI`: ``defaults``, ``run_name``,
    the image_size link) that also adds :class:`~medsynth.callbacks.progress.LogProgressBar` when
    stdout is not a terminal (a :class:`~medsynth.callbacks.progress.StepProgressBar` when it is),
    unless the run disables the bar or brings its own."""
    from lightning.pytorch.callbacks import ProgressBar

    from medsynth.callbacks.progress import default_progress_bar
    from medsynth.configs import MedsynthCLI

    class CLI(MedsynthCLI):
        def instantiate_trainer(self, **kwargs):
            config = self.config_init[self.subcommand] if self.subcommand else self.config_init
            trainer = config.get("trainer", {}) or {}
            callbacks = trainer.get("callbacks") or []
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
            if trainer.get("enable_progress_bar") is not False and not has_bar:
                bar = default_progress_bar()
                defaults = self.trainer_defaults.get("callbacks") or []
                defaults = defaults if isinstance(defaults, list) else [defaults]
                self.trainer_defaults = {**self.trainer_defaults, "callbacks": [*defaults, bar]}
            return super().instantiate_trainer(**kwargs)

    return CLI


def lightning_cli(args: list[str] | None, run: bool = True):
    """Build the LightningCLI (subclass mode for models and data modules).

    Config files may build on others through a top-level ``defaults`` list and name the run with
    ``run_name``; ``image_size`` is given under ``data`` only (see :mod:`medsynth.configs`).

    Args:
        args: The command line after ``medsynth`` (subcommand first); None reads ``sys.argv``.
        run: Run the subcommand (False: only instantiate the classes).
    """
    import lightning as L

    import medsynth.data  # noqa: F401 - registers the data modules for short names
    import medsynth.models  # noqa: F401 - registers the methods for short names
    from medsynth.configs import expand_defaults

    # The expanded command line goes to LightningCLI as ``args`` (``defaults`` pieces become
    # repeated --config arguments); MedsynthCLI silences its warning about args next to sys.argv.
    return lightning_cli_class()(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=expand_defaults(sys.argv[1:] if args is None else args),
        run=run,
        parser_kwargs={"prog": "medsynth"},
    )


def _phantom_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medsynth phantom",
        description="Write the phantom as an AMOS22-layout dataset.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--output", required=True, type=Path, help="folder to create (must be empty or absent)")
    p.add_argument("--cases", type=int, default=10, help="number of training cases")
    p.add_argument(
        "--val_cases", type=int, default=None, help="number of validation cases (default: cases // 4, >= 1)"
    )
    p.add_argument("--depth", type=int, default=64, help="axial slices per volume")
    p.add_argument("--size", type=int, default=256, help="in-plane matrix size")
    p.add_argument("--seed", type=int, default=0, help="seeds the phantom anatomy")
    p.add_argument(
        "--irregularity",
        type=float,
        default=0.0,
        help="lobulated organ outlines, 0-0.5 (0: the regular phantom)",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def _phantom(argv: list[str]) -> int:
    from medsynth.data.phantom import check_irregularity, write_phantom_dataset

    a = _phantom_parser().parse_args(argv)
    if a.cases < 1:
        raise SystemExit(f"medsynth phantom: --cases must be >= 1, got {a.cases}")
    try:
        check_irregularity(a.irregularity, "--irregularity")
    except ValueError as err:
        raise SystemExit(f"medsynth phantom: {err}") from None
    if a.output.exists() and any(a.output.iterdir()):
        raise SystemExit(f"medsynth phantom: output folder {a.output} is not empty; refusing to overwrite")
    val = a.val_cases if a.val_cases is not None else max(1, a.cases // 4)
    root = write_phantom_dataset(
        a.output,
        a.cases,
        val,
        depth=a.depth,
        size=a.size,
        seed=a.seed,
        progress=not a.no_progress,
        irregularity=a.irregularity,
    )
    print(f"wrote {a.cases} training and {val} validation phantom cases to {root}")
    return 0


def _dataset_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medsynth dataset",
        description="CT volumes (HU) and their label volumes (e.g. TotalSegmentator masks) -> an nnU-Net v2 raw "
        "dataset whose dataset.json names every label id, ready for NNUNetDataModule (remap='by_name').",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--images", required=True, type=Path, help="a CT volume (.nii.gz, HU) or a folder of them")
    p.add_argument(
        "--labels", required=True, type=Path, help="its label volume, or a folder of them (same file names)"
    )
    p.add_argument(
        "--names",
        required=True,
        help="the id -> name table that came with the labels: a CSV with columns id and structure (or name), "
        "a dataset.json, or 'totalseg' for labels of the installed TotalSegmentator's total task",
    )
    p.add_argument(
        "--output", required=True, type=Path, help="dataset folder to create, e.g. Dataset700_MyCT"
    )
    p.add_argument("--case", default=None, help="case name of a single pair (default: the CT's file name)")
    return p


def _dataset(argv: list[str]) -> int:
    from medsynth.data.nnunet import dataset_pairs, write_nnunet_dataset

    a = _dataset_parser().parse_args(argv)
    try:
        pairs = dataset_pairs(a.images, a.labels, a.case)
        root = write_nnunet_dataset(pairs, a.output, a.names)
    except (ValueError, FileNotFoundError) as err:
        print(f"medsynth dataset: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(pairs)} case(s) to {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and ``python -m medsynth``."""
    from_sys_argv = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd in ("--version", "-V", "version"):
        print(f"medsynth {__version__}")
        return 0
    if cmd in LIGHTNING_COMMANDS:
        lightning_cli(None if from_sys_argv or argv == sys.argv[1:] else argv)
        return 0
    if cmd == "phantom":
        return _phantom(rest)
    if cmd == "dataset":
        return _dataset(rest)
    if cmd == "synthesize":
        from medsynth.synthesis import main as synthesize_main

        return synthesize_main(rest)
    if cmd == "evaluate":
        from medsynth.evaluate import main as evaluate_main

        return evaluate_main(rest)
    if cmd == "label":
        from medsynth.autolabel import main as label_main

        return label_main(rest)
    if cmd == "masks":
        from medsynth.masks import main as masks_main

        return masks_main(rest)
    if cmd == "demo":
        from medsynth.demo import main as demo_main

        return demo_main(rest)
    print(f"medsynth: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2
