"""The ``data:`` section of an experiment config, on its own: what ``medsynth evaluate``, ``medsynth
reflow`` and :class:`~medsynth.data.ReflowDataModule` build the real data from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L

__all__ = ["build_datamodule", "data_sections"]


def data_sections(config: str | Path | None) -> list[dict[str, Any]]:
    """The ``data:`` sections of an experiment config and its ``defaults``, in order (JSON-able
    dicts, the input of :func:`build_datamodule`); None: the default phantom at ``image_size=64``.

    Raises:
        FileNotFoundError: naming a missing config.
        ValueError: naming the config when no piece has a ``data`` section with a class_path.
    """
    from medsynth.configs import expand_defaults, load_piece

    if config is None:
        return [{"class_path": "medsynth.data.PhantomDataModule", "init_args": {"image_size": 64}}]
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"data config not found: {path}")
    pieces = expand_defaults(["--config", str(path)])[1::2]  # paths or YAML text, in order
    loaded = [load_piece(p) for p in pieces]
    sections = [d["data"] for d in loaded if isinstance(d, dict) and isinstance(d.get("data"), dict)]
    if not sections or not any("class_path" in s for s in sections):
        raise ValueError(f"{path}: no 'data:' section with a class_path (in it or its defaults)")
    return sections


def build_datamodule(
    config: str | Path | Sequence[Mapping[str, Any]] | None, overrides: Mapping[str, Any] | None = None
) -> L.LightningDataModule:
    """The ``data:`` section of an experiment config as a data module, parsed as ``medsynth fit`` does.

    The config's ``defaults`` are followed (:mod:`medsynth.configs`), the ``data`` sections of all
    pieces are merged in order, and jsonargparse validates and instantiates the result, so a
    config that ``medsynth fit`` accepts gives the same data module here.

    Args:
        config: A YAML file with (or building on one with) a ``data`` section, or its sections as
            :func:`data_sections` returns them; None builds the default
            :class:`~medsynth.data.PhantomDataModule` at ``image_size=64``.
        overrides: Extra ``init_args`` (e.g. ``{"batch_size": 8}``).

    Raises:
        FileNotFoundError: naming a missing config.
        ValueError: naming the config when no piece has a ``data`` section or it does not parse.
    """
    import json

    from jsonargparse import ArgumentParser

    if config is None or isinstance(config, (str, Path)):
        sections = data_sections(config)
        source = str(config or "default data")
    else:
        sections, source = [dict(s) for s in config], "the data sections"
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    argv = [f"--data={json.dumps(s)}" for s in sections]
    argv += [f"--data.init_args.{k}={json.dumps(v)}" for k, v in (overrides or {}).items()]
    try:
        cfg = parser.parse_args(argv)
    except Exception as err:  # jsonargparse's ArgumentError names the bad key
        raise ValueError(f"{source}: the data section does not parse: {err}") from err
    return parser.instantiate_classes(cfg).data
