"""Which process a diffusion model trains and samples with: ``"ddpm"`` or ``"rflow"``.

:func:`build_process` is the one place that maps ``DiffusionModel(process=...)`` and its options to
a :class:`~medsynth.diffusion.GaussianDiffusion` (Improved DDPM, the paper's) or a
:class:`~medsynth.diffusion.RectifiedFlow`. An option of the other process left off its default
is an error naming it, so a setting never silently does nothing.
"""

from __future__ import annotations

from typing import Any

from medsynth.diffusion.flow import RectifiedFlow
from medsynth.diffusion.gaussian import GaussianDiffusion

__all__ = ["PROCESSES", "build_process"]

#: name -> process class; "ddpm" (Improved DDPM) is the default everywhere.
PROCESSES: dict[str, type] = {"ddpm": GaussianDiffusion, "rflow": RectifiedFlow}
# The options of each process as DiffusionModel names them -> the constructor argument they set.
_OPTIONS: dict[str, dict[str, str]] = {
    "ddpm": {
        "timesteps": "num_timesteps",
        "noise_schedule": "noise_schedule",
        "prediction_type": "prediction_type",
    },
    "rflow": {
        "timestep_sampling": "timestep_sampling",
        "logit_mean": "logit_mean",
        "logit_std": "logit_std",
        "time_shift": "shift",
    },
}


def build_process(process: str = "ddpm", **options: Any) -> GaussianDiffusion | RectifiedFlow:
    """The process named ``process`` with ``options`` (DiffusionModel's names, see ``_OPTIONS``).

    Args:
        process: "ddpm" (Improved DDPM: T-step Gaussian diffusion, learned variance, hybrid loss) or
            "rflow" (rectified flow: velocity on the straight path).
        **options: ``timesteps``, ``noise_schedule``, ``prediction_type`` (ddpm) and
            ``timestep_sampling``, ``logit_mean``, ``logit_std``, ``time_shift`` (rflow).

    Raises:
        ValueError: naming ``process`` when it is unknown (with the valid names), an option that
            belongs to neither, or an option of the other process set off its default.
    """
    if process not in PROCESSES:
        raise ValueError(f"unknown process {process!r}; choose one of {', '.join(PROCESSES)}")
    known = {k for names in _OPTIONS.values() for k in names}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown process options {unknown}; known: {', '.join(sorted(known))}")
    for other, names in _OPTIONS.items():
        if other == process:
            continue
        defaults = PROCESSES[other].defaults()
        for key, arg in names.items():
            if key in options and options[key] != defaults[arg]:
                raise ValueError(
                    f"{key}={options[key]!r} applies to process={other!r} only; this model's process is "
                    f"{process!r} (leave {key} at its default {defaults[arg]!r})"
                )
    own = {arg: options[key] for key, arg in _OPTIONS[process].items() if key in options}
    return PROCESSES[process](**own)
