"""What every command shares: the ``--help`` layout and library messages in the command's words."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping

__all__ = [
    "HelpFormatter",
    "add_sampling_arguments",
    "add_distributed_arguments",
    "parse_devices",
    "in_cli_words",
    "report_error",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` of medsynth's own commands: every option with its default (unless its help
    already says what the default is, or the option is required)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--num_steps``, ``--sampler``, ``--guidance_scale`` and ``--seed``: the ``generate()`` options
    of commands that sample (:meth:`medsynth.models.base.SynthesisModule.generate`)."""
    parser.add_argument(
        "--num_steps",
        type=int,
        default=None,
        help="diffusion models: network evaluations per slice (one per step; two per Heun step), so time "
        "grows linearly (default None: the model's 1000 steps, 10x the 100 the demo and docs use; 30 for "
        "a flow)",
    )
    parser.add_argument(
        "--sampler",
        default=None,
        help="diffusion models: ddpm (ancestral), ddim or dpm++; euler or heun for a rectified-flow model "
        "(default None: the model's own, for a DDPM the 1000-step ancestral chain)",
    )
    parser.add_argument("--guidance_scale", type=float, default=None, help="classifier-free guidance (SDM)")
    parser.add_argument("--seed", type=int, default=0, help="seeds each slice's noise")


def parse_devices(text: str) -> int | str:
    """``--devices``: an int (``2``, ``-1`` for all GPUs) or Lightning's other forms (``auto``, ``0,1``)."""
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else text


def add_distributed_arguments(parser: argparse.ArgumentParser, accelerator: str | None = "auto") -> None:
    """``--accelerator``, ``--devices``, ``--num_nodes`` and ``--strategy``: the Lightning Trainer flags
    of ``medsynth fit`` (``--trainer.devices`` ...) for commands that run on several processes
    (docs/multi_gpu.md)."""
    parser.add_argument(
        "--accelerator",
        default=accelerator,
        help="Lightning accelerator: cpu, gpu, auto (a GPU when there is one)"
        + (" (default: that of --device)" if accelerator is None else ""),
    )
    parser.add_argument(
        "--devices",
        type=parse_devices,
        default=1,
        help="devices (processes) per node: an int, -1 for all GPUs, or a list such as 0,1",
    )
    parser.add_argument("--num_nodes", type=int, default=1, help="nodes (machines) of the run")
    parser.add_argument(
        "--strategy",
        default="auto",
        help="Lightning strategy; ddp for several devices (see docs/multi_gpu.md)",
    )


def in_cli_words(message: str, flags: Mapping[str, str]) -> str:
    """A library message with the command's flags in place of the library's argument names.

    Library functions name a bad argument as Python does (``segmenter=PATH``, ``num=0``);
    ``flags`` maps each such text to the command's (``{"segmenter=": "--segmenter "}``). Keys are
    replaced in the order given, only where they start a word (``output=`` does not match inside
    ``fid_output=``).
    """
    for text, flag in flags.items():
        pattern = rf"(?<![\w-]){re.escape(text)}(?P<space> )?"
        message = re.sub(pattern, lambda m, f=flag: f.rstrip(" ") + " " if m.group("space") else f, message)
    return message


def report_error(command: str, err: BaseException, flags: Mapping[str, str] | None = None) -> int:
    """Print ``medsynth <command>: error: ...`` to stderr (in the command's words); returns 2."""
    print(f"medsynth {command}: error: {in_cli_words(str(err), flags or {})}", file=sys.stderr)
    return 2
