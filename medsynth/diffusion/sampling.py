"""Samplers over a :class:`GaussianDiffusion` and classifier-free guidance as a model wrapper.

- ``"ddpm"``: ancestral sampling with the learned variance (Improved DDPM); ``num_steps=None``
  is the full T-step chain (the paper's setting), fewer steps respace the schedule.
- ``"ddim"``: deterministic DDIM (eta = 0, Song et al. 2021) on the respaced schedule.
- ``"dpm++"``: DPM-Solver++(2M) (Lu et al. 2022) through diffusers' DPMSolverMultistepScheduler
  built from the same betas; it gets only the eps channels, never the variance channels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from medsynth.diffusion.gaussian import GaussianDiffusion, ModelFn, randn_like
from medsynth.random import GeneratorLike

__all__ = ["SAMPLERS", "DEFAULT_NUM_STEPS", "sample", "ClassifierFreeGuidance", "guided_output"]

SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++")
# Network evaluations when num_steps is None: the paper's full chain for "ddpm" (None = T).
DEFAULT_NUM_STEPS: dict[str, int | None] = {"ddpm": None, "ddim": 50, "dpm++": 20}


def guided_output(cond: Tensor, uncond: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance on (eps, v) outputs ``[B, 2C, H, W]`` (Ho & Salimans 2021; SDM).

    eps = eps_u + s (eps_c - eps_u); the variance channels are the conditional pass's. The same
    formula on an x_0 or v prediction gives the same step: both are affine in eps at fixed x_t and t,
    with weights (1 - s) + s = 1.
    """
    eps_c, v_c = cond.chunk(2, dim=1)
    eps_u = uncond.chunk(2, dim=1)[0]
    return torch.cat([eps_u + guidance_scale * (eps_c - eps_u), v_c], dim=1)


class ClassifierFreeGuidance(nn.Module):
    """Wraps a conditional network; the unconditional pass gets ``model_kwargs[cond_key]`` zeroed.

    Both passes run as one batch of 2B. With ``guidance_scale == 1`` only the conditional pass runs.
    :meth:`encode_condition` builds the 2B conditioning (condition and null condition) once, through
    the network's own ``encode_condition`` where it has one; ``forward(x, t, guided=...)`` takes it.

    Args:
        model: ``model(x, t, **kwargs) -> [B, 2C, H, W]``.
        guidance_scale: s (1.5 in SDM; 1.0 = no guidance).
        cond_key: The keyword carrying the condition (the one-hot mask); the null condition is zeros.
    """

    def __init__(self, model: ModelFn, guidance_scale: float, cond_key: str = "seg") -> None:
        super().__init__()
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale!r}")
        self.model = model
        self.guidance_scale = float(guidance_scale)
        self.cond_key = cond_key

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
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), **both).float()  # [2B, 2C, H, W]
        out_c, out_u = out.chunk(2, dim=0)
        return guided_output(out_c, out_u, self.guidance_scale)


def _check_sampler(sampler: str) -> str:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return sampler


@torch.no_grad()
def sample(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    shape: tuple[int, ...],
    *,
    sampler: str = "ddpm",
    num_steps: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    generator: GeneratorLike = None,
    device: torch.device | str = "cpu",
    clip_denoised: bool = True,
) -> Tensor:
    """Draw samples ``[B, C, H, W]`` in [-1, 1] (approximately) from pure noise.

    Args:
        diffusion: The trained T-step process.
        model: ``model(x_t, t, **model_kwargs) -> [B, 2C, H, W]`` (eps, v).
        shape: Output shape.
        sampler: "ddpm", "ddim" or "dpm++".
        num_steps: Network evaluations; None = ``DEFAULT_NUM_STEPS[sampler]`` (T for "ddpm").
        model_kwargs: Conditioning passed to every network call.
        generator: Seeds the initial noise and the ancestral noise.
        device: Where to sample.
        clip_denoised: Clip the predicted x_0 to [-1, 1] (every sampler).
    """
    _check_sampler(sampler)
    if num_steps is None:
        num_steps = DEFAULT_NUM_STEPS[sampler] or diffusion.num_timesteps
    if not isinstance(num_steps, int) or not 1 <= num_steps <= diffusion.num_timesteps:
        raise ValueError(f"num_steps must be an int in 1..{diffusion.num_timesteps}, got {num_steps!r}")
    model_kwargs = model_kwargs or {}
    x = randn_like(torch.empty(shape, device=device), generator)
    batch = shape[0]

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
