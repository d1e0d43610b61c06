"""Composable experiment configs for the LightningCLI subcommands (``medsynth fit`` ...).

Three small additions to LightningCLI keep every file in experiments/ short:

- ``defaults: [a.yaml, b.yaml]`` at the top of a config names the shared pieces it builds on
  (paths relative to that file, applied in order, each of which may have ``defaults`` of its
  own). ``--config method.yaml`` becomes ``--config a.yaml --config b.yaml --config method.yaml``
  before jsonargparse sees it, so later files override earlier ones exactly as repeated
  ``--config`` arguments do (jsonargparse has no include directive of its own).
- ``run_name: sdm`` names the run: the logger's ``name`` and, for a ``ModelCheckpoint`` without
  a ``dirpath``, ``<logger save_dir>/<run_name>/checkpoints``, so checkpoints land at a fixed
  path (``runs/phantom/sdm/checkpoints/last.ckpt``) that later configs and commands can name.
- ``data.init_args.image_size`` is linked to ``model.init_args.image_size``: it is written once,
  under ``data``, and the model follows it. So is the CT window (``window_level``/``window_width``):
  the model takes the instantiated data module's.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

__all__ = ["expand_defaults", "config_chain", "load_config_file", "load_piece", "MedsynthCLI", "DEFAULTS_KEY"]

#: Top-level key of a config file that lists the configs it builds on.
DEFAULTS_KEY = "defaults"
_CONFIG_FLAGS = ("--config", "-c")


def load_config_file(path: str | os.PathLike) -> tuple[list[Path], str]:
    """Read one config: the files named under ``defaults`` (resolved) and the rest as YAML text.

    Raises:
        ValueError: naming the file when ``defaults`` is not a list of strings or names a
            missing file.
    """
    path = Path(path)
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or DEFAULTS_KEY not in data:
        return [], path.read_text()
    names = data.pop(DEFAULTS_KEY)
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: '{DEFAULTS_KEY}' must be a list of config paths, got {names!r}")
    bases = [(path.parent / n).resolve() for n in names]
    for base, name in zip(bases, names):
        if not base.is_file():
            raise ValueError(f"{path}: '{DEFAULTS_KEY}' names {name!r}, but {base} does not exist")
    return bases, yaml.safe_dump(data, sort_keys=False) if data else "{}"


def config_chain(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> list[tuple[Path, str | None]]:
    """The files a config builds on, depth first, then itself.

    Returns:
        ``(file, text)`` pairs in the order they apply: ``text`` is the file's content without
        ``defaults`` (None for a file without ``defaults``, which is passed on as its path).

    Raises:
        ValueError: when the ``defaults`` form a cycle or name a missing file.
    """
    path = Path(path)
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise ValueError(f"config '{DEFAULTS_KEY}' form a cycle: {chain}")
    bases, text = load_config_file(path)
    if not bases:
        return [(path, None)]
    out: list[tuple[Path, str | None]] = []
    for base in bases:
        out += config_chain(base, (*_seen, resolved))
    return [*out, (path, text)]


def expand_defaults(args: Sequence[str]) -> list[str]:
    """Replace each ``--config FILE`` whose FILE has ``defaults`` by one ``--config`` per piece.

    Arguments that are not config files (or not readable YAML mappings) pass through unchanged,
    so jsonargparse reports their errors as usual.

    Args:
        args: Command-line arguments after the subcommand, e.g. ``["--config", "x.yaml", ...]``.

    Returns:
        The arguments with ``defaults`` expanded in place (order kept: later overrides earlier).
    """
    out: list[str] = []
    i = 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        value: str | None = None
        if arg in _CONFIG_FLAGS and i + 1 < len(args):
            flag, value, i = arg, args[i + 1], i + 2
        elif arg.startswith("--config="):
            flag, value, i = "--config", arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        if Path(value).suffix in (".yaml", ".yml") and Path(value).is_file():
            # A file with defaults goes on as YAML text without that key (jsonargparse takes a config
            # as text as well as a path); its values are not paths relative to it, so nothing changes.
            for file, text in config_chain(value):
                out += [flag, str(file) if text is None else text]
        else:
            out += [flag, value]
    check_image_size_link(out)
    return out


def load_piece(piece: str) -> Any:
    """The content of one ``--config`` value: a YAML file's, or the value itself parsed as YAML.

    Returns None when it is neither (jsonargparse will report it).
    """
    try:
        is_file = "\n" not in piece and Path(piece).is_file()
        return yaml.safe_load(Path(piece).read_text() if is_file else piece)
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _piece_values(piece: str) -> dict[str, Any]:
    """``model``/``data`` image sizes a ``--config`` value (path or YAML text) sets."""
    data = load_piece(piece)
    found: dict[str, Any] = {}
    for group in ("model", "data"):
        node = data.get(group) if isinstance(data, dict) else None
        if isinstance(node, dict):
            init = node.get("init_args") if isinstance(node.get("init_args"), dict) else node
            if "image_size" in init:
                found[group] = init["image_size"]
    return found


def check_image_size_link(args: Sequence[str]) -> None:
    """Raise when the model's ``image_size`` is set and differs from the data's.

    ``data.init_args.image_size`` is linked to ``model.init_args.image_size``, and jsonargparse
    silently lets the link win, so a model size written by hand could drift from the data's
    unnoticed. Later arguments override earlier ones, as on the command line.

    Raises:
        ValueError: naming both flags and both values.
    """
    last: dict[str, Any] = {}
    for i, arg in enumerate(args):
        nxt = args[i + 1] if i + 1 < len(args) else None
        key, value = arg.split("=", 1) if arg.startswith("--") and "=" in arg else (arg, nxt)
        if key in _CONFIG_FLAGS and value is not None:
            last.update(_piece_values(value))
        for group in ("model", "data"):
            if key in (f"--{group}.init_args.image_size", f"--{group}.image_size") and value is not None:
                last[group] = yaml.safe_load(value)
    if "model" in last and last["model"] != last.get("data", last["model"]):
        raise ValueError(
            f"--model.init_args.image_size={last['model']} differs from --data.init_args.image_size="
            f"{last['data']}; image_size is linked from data to model, so set it under data only"
        )


def _class(class_path: Any) -> type | None:
    """The class a ``class_path`` names, or None (jsonargparse has validated it; be permissive)."""
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    import importlib

    module, name = class_path.rsplit(".", 1)
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) else None


def _ckpt_subclass(class_path: Any) -> bool:
    """Whether a callback's ``class_path`` names a ModelCheckpoint (sub)class."""
    cls = _class(class_path)
    return cls is not None and issubclass(cls, ModelCheckpoint)


def check_callback_inputs(cfg: Any) -> None:
    """Before anything is built: each callback class with a ``check_config(init_args)`` classmethod
    checks its arguments (a missing weights file is named before a paper-sized model is built)."""
    callbacks = cfg.get("trainer.callbacks") or []
    for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
        cls = _class(cb.get("class_path")) if hasattr(cb, "get") else None
        check = getattr(cls, "check_config", None)
        if check is not None:
            init = cb.get("init_args")
            check(init.as_dict() if hasattr(init, "as_dict") else dict(init or {}))


def apply_run_name(cfg: Any) -> None:
    """Set the logger's ``name`` and empty ModelCheckpoint ``dirpath`` from ``cfg.run_name``.

    ``cfg`` is the (sub)command's parsed jsonargparse Namespace; nothing happens without a run name.
    """
    run_name = cfg.get("run_name")
    if not run_name:
        return
    save_dir = cfg.get("trainer.default_root_dir") or "."
    logger = cfg.get("trainer.logger")
    if hasattr(logger, "get") and logger.get("init_args") is not None:
        init = logger.init_args
        if "name" in init:
            init.name = run_name
        save_dir = init.get("save_dir") or save_dir
    for cb in cfg.get("trainer.callbacks") or []:
        if (
            hasattr(cb, "get")
            and _ckpt_subclass(cb.get("class_path"))
            and cb.init_args.get("dirpath") is None
        ):
            cb.init_args.dirpath = str(Path(save_dir) / run_name / "checkpoints")


def _data_window(datamodule: Any, index: int) -> float:
    """Level (``index`` 0) or width (1) of an instantiated data module's CT window (the paper's
    40/400 for a data module that has none)."""
    from medsynth.data.transforms import WINDOW_LEVEL, WINDOW_WIDTH

    return float(getattr(datamodule, "window", (WINDOW_LEVEL, WINDOW_WIDTH))[index])


class MedsynthCLI(LightningCLI):
    """LightningCLI with ``run_name`` and the data -> model ``image_size`` link (module docstring)."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Names the run: the logger's name, and <logger save_dir>/<run_name>/checkpoints for a "
            "ModelCheckpoint without dirpath.",
        )
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")
        # The CT window is the data's: the model takes it from the instantiated data module (a
        # data module without one has the paper's), so it is set once, under data.
        for i, name in enumerate(("window_level", "window_width")):
            parser.link_arguments(
                "data",
                f"model.init_args.{name}",
                compute_fn=partial(_data_window, index=i),
                apply_on="instantiate",
            )

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # medsynth.cli.main always passes the (expanded) command line as ``args``; LightningCLI
        # warns whenever args and sys.argv are both given, which here is every run.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        apply_run_name(cfg)
        check_callback_inputs(cfg)
