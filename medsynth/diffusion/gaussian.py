"""Gaussian diffusion with learned-range variance and the hybrid loss (Nichol & Dhariwal, 2021).

One plain class in the shape of openai/improved-diffusion: it holds the float64 schedule tables
and takes the network as an argument (``model(x_t, t, **model_kwargs) -> [B, 2C, H, W]``: the
prediction, then the variance interpolation ``v``). Conditioning travels in ``model_kwargs``, so
the DDPM variants and SDM share this code unchanged (Zhuang et al., Sec. 2: Improved DDPM,
T = 1000, linear schedule, hybrid loss). The prediction is eps (the paper's), x_0 (Improved DDPM's
``START_X`` mean type) or v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022).

Respacing (Improved DDPM, Sec. 4) builds another instance over a subset of the steps whose
network calls are routed back to the original timestep indices through a timestep map.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medsynth.random import GeneratorLike, randn

__all__ = [
    "GaussianDiffusion",
    "SAMPLERS",
    "linear_betas",
    "cosine_betas",
    "named_betas",
    "NOISE_SCHEDULES",
    "PREDICTION_TYPES",
    "space_timesteps",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "TimestepMap",
]

ModelFn = Callable[..., Tensor]


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
    """Linear schedule of Ho et al. scaled so that any T spans the same noise range (float64)."""
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule of Improved DDPM (Nichol & Dhariwal 2021, Eq. 17), float64.

    abar(t) = f(t) / f(0) with f(t) = cos(((t / T + s) / (1 + s)) * pi / 2)^2, and
    beta_t = 1 - abar(t + 1) / abar(t) for t = 0..T-1, clipped at ``max_beta`` (0.999) so that
    the last steps near t = T do not become singular.

    Args:
        num_timesteps: T.
        s: Offset that keeps beta_0 from being tiny (0.008).
        max_beta: Upper clip of every beta (0.999).
    """
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
    if not s > 0:
        raise ValueError(f"s must be positive, got {s!r}")
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
    t = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((t + s) / (1.0 + s) * math.pi / 2.0) ** 2
    abar = f / f[0]
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


NOISE_SCHEDULES: tuple[str, ...] = ("linear", "cosine")
# What the network's first C output channels estimate: the noise (the paper's), the clean image,
# or the velocity v = sqrt(abar) eps - sqrt(1 - abar) x_0.
PREDICTION_TYPES: tuple[str, ...] = ("eps", "x0", "v")
#: Samplers of the Gaussian process (medsynth.diffusion.sample): ancestral, DDIM, DPM-Solver++.
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++")


def named_betas(noise_schedule: str, num_timesteps: int = 1000) -> np.ndarray:
    """Betas of a named schedule: "linear" (Ho et al.; the paper's) or "cosine" (Improved DDPM)."""
    if noise_schedule == "linear":
        return linear_betas(num_timesteps)
    if noise_schedule == "cosine":
        return cosine_betas(num_timesteps)
    raise ValueError(f"unknown noise_schedule {noise_schedule!r}; choose one of {', '.join(NOISE_SCHEDULES)}")


def space_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """``num_steps`` evenly spaced indices of ``0..num_timesteps-1`` including both ends."""
    if not isinstance(num_steps, int) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be an int in 1..{num_timesteps}, got {num_steps!r}")
    if num_steps == 1:
        return [num_timesteps - 1]
    return sorted({int(round(x)) for x in np.linspace(0, num_timesteps - 1, num_steps)})


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-likelihood of ``x`` in [-1, 1] under a Gaussian discretised to 256 bins (width 2/255).

    The first and last bins extend to -inf and +inf; probabilities are clamped at 1e-12
    (Ho et al. 2020, Sec. 3.3; Improved DDPM decoder L_0).
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = torch.special.ndtr(inv_std * (centered + 1.0 / 255.0))
    cdf_min = torch.special.ndtr(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_flat(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


class TimestepMap(nn.Module):
    """Wraps a network so that it receives the original timestep indices of a respaced chain."""

    def __init__(self, model: ModelFn, timestep_map: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("timestep_map", torch.as_tensor(list(timestep_map), dtype=torch.long), False)

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        if self.timestep_map.device != t.device:  # moved once, then kept on t's device
            self.timestep_map = self.timestep_map.to(t.device)
        return self.model(x, self.timestep_map[t], **kwargs)


class GaussianDiffusion:
    """Diffusion process, learned-range variance, hybrid loss and the ancestral/DDIM steps.

    Args:
        betas: float64 noise schedule; default the ``noise_schedule`` for ``num_timesteps``.
        num_timesteps: T when ``betas`` is not given (1000 in the paper).
        timestep_map: Original timestep index of every step (respaced chains); default identity.
        vlb_scale: Weight of L_vlb; default T/1000 (Improved DDPM: lambda = 0.001 with the 1/T
            weighting equals a weight of 1 when T = 1000).
        noise_schedule: "linear" (the paper's) or "cosine" (Improved DDPM, Eq. 17) when ``betas``
            is not given. A respaced chain always gets explicit betas (from abar).
        prediction_type: What the first C output channels estimate and ``loss_simple`` regresses:
            "eps" (the paper's), "x0" or "v" (see :data:`PREDICTION_TYPES`).
    """

    #: The name ``DiffusionModel(process=...)`` selects this process by.
    name = "ddpm"
    label = "Improved DDPM"
    samplers = SAMPLERS

    def __init__(
        self,
        betas: np.ndarray | Sequence[float] | None = None,
        num_timesteps: int = 1000,
        timestep_map: Sequence[int] | None = None,
        vlb_scale: float | None = None,
        noise_schedule: str = "linear",
        prediction_type: str = "eps",
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}"
            )
        self.prediction_type = prediction_type
        if noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(
                f"unknown noise_schedule {noise_schedule!r}; choose one of {', '.join(NOISE_SCHEDULES)}"
            )
        if betas is None:
            betas = named_betas(noise_schedule, num_timesteps)
        else:
            betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 1 or (betas <= 0).any() or (betas > 1).any():
            raise ValueError(f"betas must be a 1-D array in (0, 1], got shape {betas.shape}")
        self.betas = betas
        self.num_timesteps = T = len(betas)
        self.timestep_map = list(range(T)) if timestep_map is None else [int(i) for i in timestep_map]
        if len(self.timestep_map) != T:
            raise ValueError(f"timestep_map has {len(self.timestep_map)} entries for {T} steps")
        self.vlb_scale = T / 1000.0 if vlb_scale is None else float(vlb_scale)

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # beta_tilde_t; its log is clipped at t = 0 (where it is 0) by using beta_tilde_1.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        tail = self.posterior_variance[1] if T > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(tail, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )
        self.log_betas = np.log(betas)
        self._device_tables: dict[torch.device, dict[int, tuple[np.ndarray, Tensor]]] = {}
        self._wrapped: TimestepMap | None = None

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The constructor's defaults (one source for the options a model passes on)."""
        return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}

    @staticmethod
    def output_channels(channels: int) -> int:
        """Network output channels for ``channels`` image channels: the prediction and ``v``, 2C."""
        return 2 * channels

    @property
    def max_num_steps(self) -> int:
        """The most network evaluations a chain can take: T."""
        return self.num_timesteps

    def sample_timesteps(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> Tensor:
        """Training timesteps ``[B]``, int64 uniform in 0..T-1 (drawn on the CPU with a generator)."""
        if generator is None:  # drawn on the device: no host-to-device copy (a stream sync) per step
            return torch.randint(0, self.num_timesteps, (batch,), device=device)
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator).to(device)

    def __getstate__(self) -> dict[str, Any]:
        # The device copies of the tables and the wrapped network are caches: not pickled.
        state = self.__dict__.copy()
        state["_device_tables"], state["_wrapped"] = {}, None
        return state

    # ------------------------------------------------------------------ respacing
    def respace(self, num_steps: int | Sequence[int]) -> GaussianDiffusion:
        """Chain over a subset of the steps (an int: evenly spaced), betas = 1 - abar_i / abar_prev."""
        keep = (
            space_timesteps(self.num_timesteps, num_steps)
            if isinstance(num_steps, int)
            else sorted({int(i) for i in num_steps})
        )
        if not keep or keep[0] < 0 or keep[-1] >= self.num_timesteps:
            raise ValueError(f"respaced steps must lie in 0..{self.num_timesteps - 1}, got {keep}")
        new_betas, last = [], 1.0
        for i in keep:
            new_betas.append(1.0 - self.alphas_cumprod[i] / last)
            last = self.alphas_cumprod[i]
        return GaussianDiffusion(
            np.array(new_betas),
            timestep_map=[self.timestep_map[i] for i in keep],
            vlb_scale=self.vlb_scale,
            prediction_type=self.prediction_type,
        )

    def wrap_model(self, model: ModelFn) -> ModelFn:
        """The network as this chain must call it: with the original timestep indices."""
        if self.timestep_map == list(range(self.num_timesteps)):
            return model
        if self._wrapped is None or self._wrapped.model is not model:  # one wrapper per network
            self._wrapped = TimestepMap(model, self.timestep_map)
        return self._wrapped

    # ------------------------------------------------------------------ helpers
    def _extract(self, arr: np.ndarray, t: Tensor, ndim: int) -> Tensor:
        """``arr[t]`` as float32 ``[B, 1, ..., 1]`` on ``t``'s device (gathered in float64).

        The schedule tables (this instance's arrays) are copied to a device once and kept there, so
        a sampling or training step copies nothing from the host; other arrays are copied per call.
        """
        tables = self._device_tables.get(t.device)
        if tables is None:
            tables = {
                id(v): (v, torch.from_numpy(v).to(t.device))
                for v in vars(self).values()
                if isinstance(v, np.ndarray)
            }
            self._device_tables[t.device] = tables
        entry = tables.get(id(arr))
        # The entry holds the array itself, so its id cannot be reused by another array meanwhile.
        table = entry[1] if entry is not None and entry[0] is arr else torch.from_numpy(arr).to(t.device)
        return table[t].float().reshape(-1, *([1] * (ndim - 1)))

    def _check_t(self, t: Tensor, batch: int) -> Tensor:
        if t.dim() != 1 or t.shape[0] != batch:
            raise ValueError(f"t must have shape [{batch}], got {tuple(t.shape)}")
        return t.long()

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log variance of q(x_t | x_0)."""
        mean = self._extract(self.sqrt_alphas_cumprod, t, x0.dim()) * x0
        var = self._extract(1.0 - self.alphas_cumprod, t, x0.dim())
        log_var = self._extract(np.log(1.0 - self.alphas_cumprod), t, x0.dim())
        return mean, var, log_var

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """Sample x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        if noise is None:
            noise = torch.randn_like(x0)
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x0.dim()) * x0
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0.dim()) * noise
        )

    def q_posterior_mean_variance(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        n = x0.dim()
        mean = (
            self._extract(self.posterior_mean_coef1, t, n) * x0
            + self._extract(self.posterior_mean_coef2, t, n) * xt
        )
        var = self._extract(self.posterior_variance, t, n)
        log_var = self._extract(self.posterior_log_variance_clipped, t, n)
        return mean, var, log_var

    def predict_x0_from_eps(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        n = xt.dim()
        return (
            self._extract(self.sqrt_recip_alphas_cumprod, t, n) * xt
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, n) * eps
        )

    def predict_eps_from_x0(self, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        n = xt.dim()
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, n) * xt - x0) / self._extract(
            self.sqrt_recipm1_alphas_cumprod, t, n
        )

    def velocity(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, Sec. 4)."""
        n = x0.dim()
        return (
            self._extract(self.sqrt_alphas_cumprod, t, n) * noise
            - self._extract(self.sqrt_one_minus_alphas_cumprod, t, n) * x0
        )

    def x0_eps_from_prediction(self, pred: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x_0, eps) implied by the network's prediction of ``self.prediction_type`` at ``x_t``.

        x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps, so for v: x_0 = sqrt(abar) x_t - sqrt(1 - abar) v
        and eps = sqrt(1 - abar) x_t + sqrt(abar) v.
        """
        if self.prediction_type == "eps":
            return self.predict_x0_from_eps(xt, t, pred), pred
        if self.prediction_type == "x0":
            return pred, self.predict_eps_from_x0(xt, t, pred)
        n = xt.dim()
        a = self._extract(self.sqrt_alphas_cumprod, t, n)
        s = self._extract(self.sqrt_one_minus_alphas_cumprod, t, n)
        return a * xt - s * pred, s * xt + a * pred

    def prediction_target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What ``loss_simple`` regresses the prediction onto: eps, x_0 or v."""
        if self.prediction_type == "eps":
            return noise
        if self.prediction_type == "x0":
            return x0
        return self.velocity(x0, t, noise)

    # ------------------------------------------------------------------ reverse process
    def p_from_output(
        self, output: Tensor, xt: Tensor, t: Tensor, clip_denoised: bool = True
    ) -> dict[str, Tensor]:
        """p(x_{t-1} | x_t) from a network output ``[B, 2C, H, W]`` = (prediction, v).

        The prediction is read as ``self.prediction_type``; ``"eps"`` in the result is the implied eps.
        log sigma^2 = frac log beta_t + (1 - frac) log beta_tilde_t with frac = (v + 1) / 2.
        """
        output = output.float()
        if output.shape[1] != 2 * xt.shape[1] or output.shape[2:] != xt.shape[2:]:
            raise ValueError(
                f"model output must have shape [B, {2 * xt.shape[1]}, ...] (prediction, v) for x_t "
                f"{tuple(xt.shape)}, got {tuple(output.shape)}"
            )
        pred, v = output.chunk(2, dim=1)
        n = xt.dim()
        min_log = self._extract(self.posterior_log_variance_clipped, t, n)
        max_log = self._extract(self.log_betas, t, n)
        frac = (v + 1.0) / 2.0
        log_var = frac * max_log + (1.0 - frac) * min_log
        x0, eps = self.x0_eps_from_prediction(pred, xt, t)
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(x0, xt, t)
        return {
            "mean": mean,
            "log_variance": log_var,
            "variance": torch.exp(log_var),
            "pred_x0": x0,
            "eps": eps,
        }

    def p_mean_variance(
        self,
        model: ModelFn,
        xt: Tensor,
        t: Tensor,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = True,
    ) -> dict[str, Tensor]:
        """Run the (wrapped) network and return mean, variance and the predicted x_0 and eps."""
        t = self._check_t(t, xt.shape[0])
        output = self.wrap_model(model)(xt, t, **(model_kwargs or {}))
        return self.p_from_output(output, xt, t, clip_denoised)

    # ------------------------------------------------------------------ loss
    def vlb_terms(self, output: Tensor, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """L_{t-1} per sample in bits/dim: KL to the posterior, or the decoder NLL at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, xt, t)
        p = self.p_from_output(output, xt, t, clip_denoised=False)
        kl = _mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])
        nll = _mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model: ModelFn,
        x0: Tensor,
        t: Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Hybrid loss per sample: ``loss = loss_simple + vlb_scale * L_vlb`` (Improved DDPM, Eq. 16).

        L_vlb sees the mean built from the detached prediction, so it trains only the variance.

        Returns:
            dict with ``loss``, ``loss_simple`` (MSE of the prediction: on eps, x_0 or v) and
            ``loss_vlb`` (scaled), each ``[B]``.
        """
        t = self._check_t(t, x0.shape[0])
        x0 = x0.float()
        if noise is None:
            noise = torch.randn_like(x0)
        xt = self.q_sample(x0, t, noise)
        output = self.wrap_model(model)(xt, t, **(model_kwargs or {})).float()  # [B, 2C, H, W]
        if output.shape[1] != 2 * x0.shape[1]:
            raise ValueError(
                f"model output must have {2 * x0.shape[1]} channels (prediction, v), got {output.shape[1]}"
            )
        with torch.autocast(device_type=x0.device.type, enabled=False):
            pred, v = output.chunk(2, dim=1)
            loss_simple = _mean_flat((self.prediction_target(x0, t, noise) - pred) ** 2)
            frozen = torch.cat([pred.detach(), v], dim=1)
            loss_vlb = self.vlb_terms(frozen, x0, xt, t) * self.vlb_scale
        return {"loss": loss_simple + loss_vlb, "loss_simple": loss_simple, "loss_vlb": loss_vlb}

    # ------------------------------------------------------------------ sampling steps
    def p_sample(
        self,
        model: ModelFn,
        xt: Tensor,
        t: Tensor,
        model_kwargs: dict[str, Any] | None = None,
        generator: GeneratorLike = None,
        clip_denoised: bool = True,
    ) -> Tensor:
        """One ancestral step x_t -> x_{t-1} with the learned variance (no noise at t = 0)."""
        out = self.p_mean_variance(model, xt, t, model_kwargs, clip_denoised)
        noise = randn_like(xt, generator)
        nonzero = (t != 0).float().reshape(-1, *([1] * (xt.dim() - 1)))
        return out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise

    def ddim_sample(
        self,
        model: ModelFn,
        xt: Tensor,
        t: Tensor,
        model_kwargs: dict[str, Any] | None = None,
        generator: GeneratorLike = None,
        eta: float = 0.0,
        clip_denoised: bool = True,
    ) -> Tensor:
        """One DDIM step (Song et al. 2021, Eq. 12); eta = 0 is deterministic."""
        out = self.p_mean_variance(model, xt, t, model_kwargs, clip_denoised)
        eps = self.predict_eps_from_x0(xt, t, out["pred_x0"])  # from the clipped x_0 (improved-diffusion)
        n = xt.dim()
        abar = self._extract(self.alphas_cumprod, t, n)
        abar_prev = self._extract(self.alphas_cumprod_prev, t, n)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
        mean = out["pred_x0"] * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
        if eta == 0.0:
            return mean
        nonzero = (t != 0).float().reshape(-1, *([1] * (n - 1)))
        return mean + nonzero * sigma * randn_like(xt, generator)


def randn_like(x: Tensor, generator: GeneratorLike = None) -> Tensor:
    """Standard normal noise like ``x`` from ``generator`` (one, or one per sample: see medsynth.random)."""
    return randn(x.shape, generator, x.device, x.dtype)
