"""The methods the protocol trains: recipes (class + init args), building, loading.

A table maps a method name to ``(class name in medsynth.models, init args besides image_size)``.
:data:`METHODS` is the phantom's: the diffusion recipe read from the one file that states it,
``experiments/phantom/_diffusion.yaml`` (:func:`recipe_from_config`), and the GAN widths of
``experiments/phantom/*.yaml``. Another data set passes a table of its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from medsynth.data.transforms import WINDOW_LEVEL, WINDOW_WIDTH

__all__ = [
    "DIFFUSION",
    "DIFFUSION_RECIPE",
    "GANS",
    "METHODS",
    "MethodTable",
    "build_model",
    "load_model",
    "method_class",
    "recipe_from_config",
    "recipes",
]

MethodTable = Mapping[str, tuple[str, Mapping[str, Any]]]

#: The repository root (benchmarks/protocol/ -> ..).
ROOT = Path(__file__).resolve().parents[2]


def recipe_from_config(
    path: str | Path, drop: tuple[str, ...] = ("sampler", "num_steps", "label_set")
) -> dict[str, Any]:
    """The ``model.init_args`` of an experiment config (lists as tuples), without ``drop`` (the
    sampler and the label set are the benchmark's own options)."""
    path = Path(path)
    try:
        init_args = yaml.safe_load(path.read_text())["model"]["init_args"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: no model.init_args to read a recipe from ({e!r})") from e
    return {k: tuple(v) if isinstance(v, list) else v for k, v in init_args.items() if k not in drop}


# The phantom recipe of the diffusion models: cosine schedule, v-prediction, EMA with warm-up, a
# higher lr with warm-up than the paper's 1e-4 (which needs 150k steps), the small UNet.
DIFFUSION_RECIPE: dict[str, Any] = recipe_from_config(ROOT / "experiments" / "phantom" / "_diffusion.yaml")

#: name -> (class in medsynth.models, init_args besides image_size). The GAN widths are those of
#: experiments/phantom/*.yaml. SPADE runs without its VGG19 perceptual term (lambda_vgg=0): medsynth
#: never downloads the ImageNet weights it needs.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "conditional_ddpm": ("ConditionalDDPM", DIFFUSION_RECIPE),
    "mask_guided_ddpm": ("MaskGuidedDDPM", DIFFUSION_RECIPE),
    "edge_guided_ddpm": ("EdgeGuidedDDPM", DIFFUSION_RECIPE),
    "sdm": ("SDM", {**DIFFUSION_RECIPE, "spade_hidden": 32}),
    "pix2pix": ("Pix2Pix", {"model_channels": 16, "disc_channels": 16}),
    "spade": ("SPADE", {"model_channels": 8, "disc_channels": 16, "spade_hidden": 32, "lambda_vgg": 0.0}),
    "oasis": (
        "OASIS",
        {
            "model_channels": 8,
            "disc_channels": 16,
            "spade_hidden": 32,
            "ema_decay": 0.999,
            "ema_warmup": True,
            "ema_bn_batches": 4,
        },
    ),
}
#: The diffusion methods and the GANs of :data:`METHODS`, as the paper's claims group them.
DIFFUSION: tuple[str, ...] = ("conditional_ddpm", "mask_guided_ddpm", "edge_guided_ddpm", "sdm")
GANS: tuple[str, ...] = ("pix2pix", "spade", "oasis")


def _entry(name: str, table: MethodTable) -> tuple[str, Mapping[str, Any]]:
    if name not in table:
        raise ValueError(f"unknown method {name!r}; the table has {', '.join(table)}")
    return table[name]


def method_class(name: str, table: MethodTable = METHODS) -> type:
    """The medsynth.models class of ``name``."""
    return getattr(importlib.import_module("medsynth.models"), _entry(name, table)[0])


def recipes(names: list[str] | tuple[str, ...], table: MethodTable = METHODS) -> dict[str, dict[str, Any]]:
    """``{name: {"class": ..., **init_args}}``: what a result file records of each method."""
    return {n: {"class": _entry(n, table)[0], **_entry(n, table)[1]} for n in names}


def build_model(
    name: str,
    image_size: int = 64,
    label_set: str = "amos",
    table: MethodTable = METHODS,
    seed: int = 0,
    window: tuple[float, float] = (WINDOW_LEVEL, WINDOW_WIDTH),
) -> L.LightningModule:
    """A fresh model of ``name``'s recipe, its weights drawn after ``torch.manual_seed(seed)``.

    ``label_set`` other than ``"amos"`` and a CT ``window`` (level, width in HU; the data's) other
    than the paper's are passed on (the defaults are left out of the init args).
    """
    cls = method_class(name, table)
    torch.manual_seed(seed)
    extra: dict[str, Any] = {} if label_set == "amos" else {"label_set": label_set}
    if tuple(map(float, window)) != (WINDOW_LEVEL, WINDOW_WIDTH):
        extra.update(window_level=float(window[0]), window_width=float(window[1]))
    return cls(image_size=image_size, **_entry(name, table)[1], **extra)


def load_model(
    name: str, path: str | Path, datamodule: L.LightningDataModule, device: str, table: MethodTable = METHODS
) -> Any:
    """A checkpoint of ``name`` in eval mode on ``device``; a model with an EMA generator with
    batch norm (OASIS) gets the EMA's batch-norm statistics from ``datamodule``'s training slices
    first, as before its tests."""
    # The run's own checkpoints: they may hold a data module's paths, which weights_only refuses.
    model = (
        method_class(name, table).load_from_checkpoint(path, map_location=device, weights_only=False).eval()
    )
    if getattr(model, "ema", None) is not None and getattr(model, "ema_bn_batches", 0) > 0:
        datamodule.setup("fit")
        model.recompute_ema_batch_norm(datamodule.train_dataloader(), model.ema_bn_batches)
    return model
