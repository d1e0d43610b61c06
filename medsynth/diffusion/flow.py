"""Rectified flow: the same networks trained on a straight path between data and noise.

x_t = (1 - t) x_0 + t eps with t in [0, 1] (t = 1 is pure noise), and the network regresses the
velocity of that path, v = dx_t/dt = eps - x_0 (rectified flow, Liu et al. 2023, "Flow Straight and
Fast"; flow matching, Lipman et al. 2023; the convention of SD3, Esser et al. 2024, Sec. 2-3).
Its minimiser is the conditional mean E[eps - x_0 | x_t], the velocity field whose ODE
dx/dt = v(x, t), integrated from t = 1 (noise) to t = 0, carries the noise distribution to the
data distribution. Training times t are drawn uniformly or logit-normal, t = sigmoid(m + s n),
n ~ N(0, 1) (SD3, Sec. 3.1; their comparison of samplings, Sec. 5.1, ranks rf/lognorm(0.00, 1.00)
best on average, and it is the default here), optionally warped by SD3's time shift
t' = a t / (1 + (a - 1) t) (Sec. 5.3.2; MONAI's ``timestep_transform``, which MAISI uses, sets
a = (pixels / base pixels)^(1/dims) times a scale). The
network sees t * 1000, the range of the DDPM timestep indices, so the time embedding is unchanged.

One plain class in the shape of :class:`~medsynth.diffusion.GaussianDiffusion`: it takes the
network as an argument (``training_losses(model, x0, t, model_kwargs)``), conditioning travels in
``model_kwargs``, and a DDPM variant becomes a flow by the process it is given, not by a copy.
The network predicts C channels (the velocity); Improved DDPM's needs 2C (eps and the variance):
:meth:`output_channels` tells the model which to build.

Samplers (network evaluations = ``num_steps``, as for every medsynth sampler): ``"euler"``, n
steps on a uniform grid of t from 1 to 0, n evaluations; ``"heun"``, Heun's second-order method
(Karras et al. 2022, Alg. 1), 2 evaluations per step, and always a last Euler step to t = 0 (as
Karras et al. end their chain): n evaluations give (n - 1) // 2 Heun steps and 1 (odd n) or 2 (even
n) Euler steps, on n - (n - 1) // 2 uniform intervals; at 1 and 2 evaluations Heun is Euler. The
last step is Euler because the velocity is singular at t = 0: v(x, t) = (x - E[x_0 | x_t = x]) / t,
finite at t = 0 only for smooth data (a Gaussian), so a correction evaluated there sees a field the
network cannot have learnt (logit-normal training almost never draws t near 0). Even an exact field
loses with it: on a one-interval chain the corrector's slope at t = 0, -x, leaves half the noise
in the sample (x_1 / 2), where the Euler step lands on E[x_0 | x_1]. ``clip_denoised`` clips the
x_0 the velocity implies, x_0 = x_t - t v, to [-1, 1] and steps with the velocity of the clipped
x_0 (the flow's version of DDIM's clipping); the exact velocity of data in [-1, 1] implies an x_0
in [-1, 1], so it changes only a network's errors.

Why not a kept implementation (read: MONAI 1.6.1, diffusers 0.42.1). The math is a few lines;
what the libraries add does not fit here, and both serve as references in the tests instead
(tests/test_flow.py runs them on the same inputs):

- MONAI ``RFlowScheduler`` (MAISI): ``sample_timesteps`` draws from the global RNG, so the fixed
  timesteps of the validation loss (a seeded generator per batch) cannot be reproduced; its
  inference grid is stored as float16 (666.67 becomes 666.5 on the 0-1000 scale); it has Euler
  only, and its velocity is x_0 - eps. Its interpolant and resolution shift are the formulas here.
- diffusers ``FlowMatchEulerDiscreteScheduler``: its forward process (``scale_noise``) looks t up
  in the inference schedule, so training at arbitrary t needs the interpolant written out anyway;
  its Euler step is ``x + (t_next - t) v`` with the same convention as here.
- diffusers ``FlowMatchHeunDiscreteScheduler``: its grid is fixed to linspace(1, 1/1000, N) and a
  last Euler step to 0, 2N - 1 evaluations: at 3 evaluations the second step spans [0.001, 0],
  so an NFE study at 2-8 evaluations would spend a third of them on nothing; no custom grid.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "RectifiedFlow",
    "FLOW_SAMPLERS",
    "TIMESTEP_SAMPLING",
    "shift_time",
    "heun_schedule",
]

ModelFn = Callable[..., Tensor]

#: Samplers of a flow: first-order Euler (the default) and Heun's second-order method.
FLOW_SAMPLERS: tuple[str, ...] = ("euler", "heun")
#: How training draws t: logit-normal (SD3's default, m = 0, s = 1) or uniform on [0, 1).
TIMESTEP_SAMPLING: tuple[str, ...] = ("logit-normal", "uniform")


def shift_time(t: Tensor | float, shift: float) -> Tensor | float:
    """SD3's time shift t' = a t / (1 + (a - 1) t) (Esser et al. 2024, Sec. 5.3.2); a = 1 is the identity.

    a > 1 moves t towards 1 (more of the chain near pure noise), as larger images need.
    """
    return shift * t / (1.0 + (shift - 1.0) * t)


def heun_schedule(num_evaluations: int) -> tuple[int, int]:
    """``(intervals, heun_intervals)`` for Heun with ``num_evaluations`` network evaluations.

    (n - 1) // 2 Heun steps (2 evaluations each), then Euler steps (1 evaluation each): one for odd
    n, two for even n, so that no evaluation falls on t = 0 (module docstring).
    """
    if not isinstance(num_evaluations, int) or num_evaluations < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_evaluations!r}")
    heun = (num_evaluations - 1) // 2
    return num_evaluations - heun, heun


def _mean_flat(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


class RectifiedFlow:
    """Linear path between data and noise, velocity loss, timestep sampling, Euler and Heun steps.

    Args:
        timestep_sampling: How training draws t: "logit-normal" (SD3's; the default) or "uniform"
            (MAISI's), see :data:`TIMESTEP_SAMPLING`.
        logit_mean: m of the logit-normal, t = sigmoid(m + s n) (0, SD3).
        logit_std: s of the logit-normal (1, SD3).
        shift: SD3's time shift a of training times and the sampling grid (1: none); see
            :func:`shift_time`.
        time_scale: The network sees t * time_scale (1000: the range of DDPM timestep indices,
            as MONAI's and diffusers' flow schedulers feed their networks).
    """

    #: The name ``DiffusionModel(process=...)`` selects this process by.
    name = "rflow"
    label = "rectified flow"
    samplers = FLOW_SAMPLERS
    #: No upper limit on sampling steps (a Gaussian chain has at most T).
    max_num_steps: int | None = None

    def __init__(
        self,
        timestep_sampling: str = "logit-normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        shift: float = 1.0,
        time_scale: float = 1000.0,
    ) -> None:
        if timestep_sampling not in TIMESTEP_SAMPLING:
            raise ValueError(
                f"unknown timestep_sampling {timestep_sampling!r}; choose one of {', '.join(TIMESTEP_SAMPLING)}"
            )
        if not math.isfinite(logit_mean):
            raise ValueError(f"logit_mean must be finite, got {logit_mean!r}")
        if not (math.isfinite(logit_std) and logit_std > 0):
            raise ValueError(f"logit_std must be positive, got {logit_std!r}")
        if not (math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift must be positive, got {shift!r}")
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be positive, got {time_scale!r}")
        self.timestep_sampling = timestep_sampling
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)
        self.shift, self.time_scale = float(shift), float(time_scale)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The constructor's defaults (one source for the options a model passes on)."""
        return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}

    @staticmethod
    def output_channels(channels: int) -> int:
        """Network output channels for ``channels`` image channels: the velocity, C."""
        return channels

    # ------------------------------------------------------------------ the path
    def _t(self, t: Tensor, x: Tensor) -> Tensor:
        """``t [B]`` as float32 ``[B, 1, ..., 1]`` for broadcasting against ``x``."""
        if t.dim() != 1 or t.shape[0] != x.shape[0] or not t.dtype.is_floating_point:
            raise ValueError(
                f"t must be a float tensor of shape [{x.shape[0]}] with times in [0, 1], got "
                f"{t.dtype} {tuple(t.shape)}"
            )
        return t.float().reshape(-1, *([1] * (x.dim() - 1)))

    def interpolate(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = (1 - t) x_0 + t eps."""
        tt = self._t(t, x0)
        return (1.0 - tt) * x0 + tt * noise

    @staticmethod
    def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
        """v = d x_t / dt = eps - x_0, what the network regresses."""
        return noise - x0

    def model_time(self, t: Tensor) -> Tensor:
        """What the network receives as its timestep: t * time_scale."""
        return t.float() * self.time_scale

    def sample_timesteps(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> Tensor:
        """Training times ``[B]`` (float32, in [0, 1]) from ``timestep_sampling``, shifted by ``shift``.

        With a generator they are drawn on its device, then moved to ``device``.
        """
        where = generator.device if generator is not None else device
        if self.timestep_sampling == "uniform":
            u = torch.rand((batch,), generator=generator, device=where)
        else:
            n = torch.randn((batch,), generator=generator, device=where)
            u = torch.sigmoid(self.logit_mean + self.logit_std * n)
        return shift_time(u, self.shift).to(device)

    def training_losses(
        self,
        model: ModelFn,
        x0: Tensor,
        t: Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Flow-matching loss per sample: ``loss`` = mean ||v_theta(x_t, t) - (eps - x_0)||^2, ``[B]``.

        The sampling density of t is the only weighting (SD3, Sec. 3.1).
        """
        x0 = x0.float()
        if noise is None:
            noise = torch.randn_like(x0)
        xt = self.interpolate(x0, t, noise)
        output = model(xt, self.model_time(t), **(model_kwargs or {})).float()  # [B, C, H, W]
        self._check_output(output, x0)
        with torch.autocast(device_type=x0.device.type, enabled=False):
            loss = _mean_flat((self.velocity_target(x0, noise) - output) ** 2)
        return {"loss": loss}

    def _check_output(self, output: Tensor, x: Tensor) -> None:
        if output.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"model output must have shape [B, {x.shape[1]}, ...] (the velocity) for x_t "
                f"{tuple(x.shape)}, got {tuple(output.shape)}: a rectified-flow network predicts "
                f"{self.output_channels(x.shape[1])} channel(s)"
            )

    # ------------------------------------------------------------------ sampling
    def time_grid(self, intervals: int) -> list[float]:
        """``intervals + 1`` times from 1 to 0, uniform before the shift (float64 host values)."""
        if not isinstance(intervals, int) or intervals < 1:
            raise ValueError(f"intervals must be a positive int, got {intervals!r}")
        return [float(shift_time(1.0 - i / intervals, self.shift)) for i in range(intervals + 1)]

    def predict_velocity(
        self,
        model: ModelFn,
        x: Tensor,
        t: float,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = True,
    ) -> Tensor:
        """The network's velocity at ``x`` and time ``t`` (one evaluation).

        With ``clip_denoised`` (and t > 0) the implied x_0 = x - t v is clipped to [-1, 1] and the
        velocity that reaches it, (x - x_0) / t, replaces v where the clip changed x_0.
        """
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32)
        v = model(x, self.model_time(tt), **(model_kwargs or {})).float()  # [B, C, H, W]
        self._check_output(v, x)
        if clip_denoised and t > 0:
            x0 = x - t * v
            v = torch.where(x0.abs() > 1.0, (x - x0.clamp(-1.0, 1.0)) / t, v)
        return v

    def integrate(
        self,
        model: ModelFn,
        x: Tensor,
        times: Sequence[float],
        heun_intervals: int = 0,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = True,
    ) -> Tensor:
        """Integrate dx/dt = v(x, t) over ``times`` (decreasing, e.g. 1 -> 0) from ``x``.

        The first ``heun_intervals`` intervals take Heun steps (2 evaluations), the rest Euler
        steps (1 evaluation).
        """
        times = [float(s) for s in times]
        if len(times) < 2 or not 0 <= heun_intervals <= len(times) - 1:
            raise ValueError(
                f"need >= 2 times and 0 <= heun_intervals <= {len(times) - 1}, got {len(times)} times "
                f"and heun_intervals={heun_intervals}"
            )
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            v = self.predict_velocity(model, x, t, model_kwargs, clip_denoised)
            dt = t_next - t
            if i < heun_intervals:  # Heun: average the slopes at both ends of the Euler step
                v_next = self.predict_velocity(model, x + dt * v, t_next, model_kwargs, clip_denoised)
                v = 0.5 * (v + v_next)
            x = x + dt * v
        return x

    def solve(
        self,
        model: ModelFn,
        x1: Tensor,
        sampler: str,
        num_steps: int,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = True,
    ) -> Tensor:
        """Carry the noise ``x1`` (t = 1) to t = 0 with ``sampler`` in ``num_steps`` network evaluations."""
        if sampler not in self.samplers:
            raise ValueError(f"unknown flow sampler {sampler!r}; choose one of {', '.join(self.samplers)}")
        if sampler == "heun":
            intervals, heun = heun_schedule(num_steps)
        else:
            if not isinstance(num_steps, int) or num_steps < 1:
                raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
            intervals, heun = num_steps, 0
        return self.integrate(model, x1, self.time_grid(intervals), heun, model_kwargs, clip_denoised)

    def __repr__(self) -> str:
        return (
            f"RectifiedFlow(timestep_sampling={self.timestep_sampling!r}, logit_mean={self.logit_mean}, "
            f"logit_std={self.logit_std}, shift={self.shift}, time_scale={self.time_scale})"
        )
