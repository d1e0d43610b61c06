"""Samplers over a :class:`GaussianDiffusion` or a :class:`RectifiedFlow`, and classifier-free guidance.

Gaussian process (Improved DDPM):

- ``"ddpm"``: ancestral sampling with the learned variance (Improved DDPM); ``num_steps=None``
  is the full T-step chain (the paper's setting), fewer steps respace the schedule.
- ``"ddim"``: deterministic DDIM (eta = 0, Song et al. 2021) on the respaced schedule.
- ``"dpm++"``: DPM-Solver++(2M) (Lu et al. 2022) through diffusers' DPMSolverMultistepScheduler
  built from the same betas; it gets only the eps channels, never the variance channels.

Rectified flow: ``"euler"`` and ``"heun"`` (:mod:`medsynth.diffusion.flow`). A process accepts only
its own samplers (``process.samplers``); :func:`check_sampler` names the process and its samplers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from medsynth.diffusion.flow import FLOW_SAMPLERS, RectifiedFlow
from medsynth.diffusion.gaussian import SAMPLERS, GaussianDiffusion, ModelFn, randn_like
from medsynth.diffusion.process import PROCESSES
from medsynth.random import GeneratorLike

__all__ = [
    "SAMPLERS",
    "FLOW_SAMPLERS",
    "DEFAULT_NUM_STEPS",
    "check_sampler",
    "sample",
    "ClassifierFreeGuidance",
    "guided_output",
]

# Network evaluations when num_steps is None: the paper's full chain for "ddpm" (None = T); 30 for
# the flow samplers, the setting of MONAI's MAISI rectified-flow inference config.
DEFAULT_NUM_STEPS: dict[str, int | None] = {"ddpm": None, "ddim": 50, "dpm++": 20, "euler": 30, "heun": 30}


def guided_output(cond: Tensor, uncond: Tensor, guidance_scale: float, channels: int | None = None) -> Tensor:
    """Classifier-free guidance on network outputs ``[B, K, H, W]`` (Ho & Salimans 2021; SDM).

    The first ``channels`` channels (the prediction) become p_u + s (p_c - p_u); the rest (Improved
    DDPM's variance channels) are the conditional pass's. ``channels=None``: the first half, the
    (eps, v) layout of Improved DDPM. On eps this is the guidance of the papers; on an x_0, v or
    flow-velocity prediction it gives the same step, since each is affine in eps at fixed x_t and t
    (rectified flow: eps = x_t + (1 - t) v) and the weights (1 - s) + s sum to 1.
    """
    c = cond.shape[1] // 2 if channels is None else channels
    if not 1 <= c <= cond.shape[1]:
        raise ValueError(f"channels must lie in 1..{cond.shape[1]} for outputs {tuple(cond.shape)}, got {c}")
    p_c, rest = cond[:, :c], cond[:, c:]
    p_u = uncond[:, :c]
    return torch.cat([p_u + guidance_scale * (p_c - p_u), rest], dim=1)


class ClassifierFreeGuidance(nn.Module):
    """Wraps a conditional network; the unconditional pass gets ``model_kwargs[cond_key]`` zeroed.

    Both passes run as one batch of 2B. With ``guidance_scale == 1`` only the conditional pass runs.
    :meth:`encode_condition` builds the 2B conditioning (condition and null condition) once, through
    the network's own ``encode_condition`` where it has one; ``forward(x, t, guided=...)`` takes it.

    Args:
        model: ``model(x, t, **kwargs) -> [B, K, H, W]``.
        guidance_scale: s (1.5 in SDM; 1.0 = no guidance).
        cond_key: The keyword carrying the condition (the one-hot mask); the null condition is zeros.
        guided_channels: How many leading output channels are the prediction that guidance acts on
            (see :func:`guided_output`); None: the first half, Improved DDPM's (eps, v) layout.
    """

    def __init__(
        self, model: ModelFn, guidance_scale: float, cond_key: str = "seg", guided_channels: int | None = None
    ) -> None:
        super().__init__()
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale!r}")
        if guided_channels is not None and guided_channels < 1:
            raise ValueError(f"guided_channels must be positive or None, got {guided_channels!r}")
        self.model = model
        self.guidance_scale = float(guidance_scale)
        self.cond_key = cond_key
        self.guided_channels = guided_channels

    def _network_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keywords of the network call: the condition, then (when guiding) the null one, as 2B."""
        if self.cond_key not in kwargs:
            raise ValueError(
                f"classifier-free guidance needs the keyword {self.cond_key!r}, got {sorted(kwargs)}"
            )
        if self.guidance_scale == 1.0:
            return kwargs
        cond = kwargs[self.cond_key]
        both = {k: torch.cat([v, v]) if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        both[self.cond_key] = torch.cat([cond, torch.zeros_like(cond)])  # [2B, ...]
        return both

    def encode_condition(self, **kwargs: Any) -> dict[str, Any]:
        """``{"guided": ...}``: the network's keywords for both passes, encoded once per chain."""
        both = self._network_kwargs(kwargs)
        encode = getattr(self.model, "encode_condition", None)
        return {"guided": encode(**both) if encode is not None else both}

    def forward(self, x: Tensor, t: Tensor, guided: dict[str, Any] | None = None, **kwargs: Any) -> Tensor:
        if guided is not None and kwargs:
            raise ValueError(
                f"give guided (from encode_condition) or the raw keywords, not both: {sorted(kwargs)}"
            )
        both = guided if guided is not None else self._network_kwargs(kwargs)
        if self.guidance_scale == 1.0:
            return self.model(x, t, **both)
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), **both).float()  # [2B, K, H, W]
        out_c, out_u = out.chunk(2, dim=0)
        return guided_output(out_c, out_u, self.guidance_scale, self.guided_channels)


def check_sampler(process: GaussianDiffusion | RectifiedFlow, sampler: str) -> str:
    """``sampler`` if ``process`` has it; else a ValueError naming the process and its samplers."""
    if sampler in process.samplers:
        return sampler
    have = f"process {process.name!r} ({process.label}), whose samplers are {', '.join(process.samplers)}"
    owner = next((name for name, cls in PROCESSES.items() if sampler in cls.samplers), None)
    if owner is not None:
        raise ValueError(f"sampler {sampler!r} belongs to process {owner!r}, but this model's is {have}")
    raise ValueError(f"unknown sampler {sampler!r} for {have}")


@torch.no_grad()
def sample(
    diffusion: GaussianDiffusion | RectifiedFlow,
    model: ModelFn,
    shape: tuple[int, ...],
    *,
    sampler: str | None = None,
    num_steps: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    generator: GeneratorLike = None,
    device: torch.device | str = "cpu",
    clip_denoised: bool = True,
) -> Tensor:
    """Draw samples ``[B, C, H, W]`` in [-1, 1] (approximately) from pure noise.

    Args:
        diffusion: The trained process: a T-step :class:`GaussianDiffusion` or a :class:`RectifiedFlow`.
        model: ``model(x_t, t, **model_kwargs)``: ``[B, 2C, H, W]`` (prediction, v) for the Gaussian
            process, ``[B, C, H, W]`` (the velocity) for a flow.
        shape: Output shape.
        sampler: One of ``diffusion.samplers``: "ddpm", "ddim" or "dpm++" (Gaussian), "euler" or
            "heun" (flow); None: the first ("ddpm"; "euler").
        num_steps: Network evaluations; None = ``DEFAULT_NUM_STEPS[sampler]`` (T for "ddpm").
        model_kwargs: Conditioning passed to every network call.
        generator: Seeds the initial noise and the ancestral noise (one, or one per sample).
        device: Where to sample.
        clip_denoised: Clip the predicted x_0 to [-1, 1] (every sampler).
    """
    sampler = check_sampler(diffusion, diffusion.samplers[0] if sampler is None else sampler)
    limit = diffusion.max_num_steps  # T for the Gaussian process; None (no limit) for a flow
    if num_steps is None:
        num_steps = DEFAULT_NUM_STEPS[sampler] or limit
    if not isinstance(num_steps, int) or num_steps < 1 or (limit is not None and num_steps > limit):
        bound = "a positive int" if limit is None else f"an int in 1..{limit}"
        raise ValueError(f"num_steps must be {bound}, got {num_steps!r}")
    model_kwargs = model_kwargs or {}
    x = randn_like(torch.empty(shape, device=device), generator)  # [B, C, H, W]: x_T (x_1 for a flow)
    batch = shape[0]

    if sampler in FLOW_SAMPLERS:
        return diffusion.solve(model, x, sampler, num_steps, model_kwargs, clip_denoised)
    if sampler == "dpm++":
        return _dpm_solver(diffusion, model, x, num_steps, model_kwargs, clip_denoised)

    chain = diffusion if num_steps == diffusion.num_timesteps else diffusion.respace(num_steps)
    # The chain keeps its schedule tables and timestep map on x's device after the first step: the
    # loop below makes no host round trip (no table copies, no .item()).
    for i in reversed(range(chain.num_timesteps)):
        t = torch.full((batch,), i, device=x.device, dtype=torch.long)
        if sampler == "ddpm":
            x = chain.p_sample(model, x, t, model_kwargs, generator, clip_denoised)
        else:
            x = chain.ddim_sample(model, x, t, model_kwargs, generator, 0.0, clip_denoised)
    return x


def _dpm_solver(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    x: Tensor,
    num_steps: int,
    model_kwargs: dict[str, Any],
    clip_denoised: bool,
) -> Tensor:
    from diffusers import DPMSolverMultistepScheduler

    if diffusion.timestep_map != list(range(diffusion.num_timesteps)):
        raise ValueError("dpm++ needs the full (not respaced) diffusion; it chooses its own steps")
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=diffusion.num_timesteps,
        trained_betas=diffusion.betas.tolist(),
        solver_order=2,
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        lower_order_final=True,
        # Clip the predicted x_0 to the data range [-1, 1], as the ancestral and DDIM samplers do
        # (clip_denoised); without it an imperfect eps at high noise drives samples out of range.
        thresholding=clip_denoised,
        sample_max_value=1.0,
    )
    scheduler.set_timesteps(num_steps, device=x.device)
    scheduler.set_begin_index(0)  # no search of the (device) timesteps at the first step
    channels = x.shape[1]
    for step in scheduler.timesteps.tolist():  # host ints, read once: no device sync per step
        t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
        pred = model(x, t, **model_kwargs).float()[:, :channels]  # the variance channels are unused
        eps = diffusion.x0_eps_from_prediction(pred, x, t)[1]  # the solver takes eps for any type
        x = scheduler.step(eps, step, x).prev_sample  # DPM-Solver++ (2M) is deterministic
    return x
