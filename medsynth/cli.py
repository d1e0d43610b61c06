"""The ``medsynth`` command line.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands in subclass mode
(any method, any data module, configs from experiments/); ``synthesize``, ``evaluate``,
``masks``, ``label``, ``dataset``, ``phantom``, ``reflow`` and ``demo`` are medsynth's own, one module each under
:mod:`medsynth.commands` (``HelpFormatter`` is re-exported from there).
"""

from __future__ import annotations

import importlib
import sys

from medsynth import __version__
from medsynth.commands import COMMAND_MODULES
from medsynth.commands.common import HelpFormatter

__all__ = [
    "main",
    "lightning_cli",
    "lightning_cli_class",
    "HelpFormatter",
    "LIGHTNING_COMMANDS",
    "OWN_COMMANDS",
    "USAGE",
]

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
OWN_COMMANDS = (*COMMAND_MODULES, "version")

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
  reflow      a rectified flow's (noise, sample) pairs, to fine-tune it for 1-2 step sampling
  demo        the main job on the phantom: train, sample, evaluate, write a report
  version     print the version (also: medsynth --version)

Progress: when stdout is not a terminal (a log file, a batch job), every command prints plain
progress lines (step/total, loss, speed, ETA) at least every 30 s instead of a redrawn bar.
"""


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
    if cmd in COMMAND_MODULES:
        return importlib.import_module(COMMAND_MODULES[cmd]).main(rest)
    print(f"medsynth: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2
