"""Rectified flow against closed forms, scipy and the flow schedulers of diffusers and MONAI.

The Gaussian toy data set x_0 ~ N(mu, s^2 I) has an exact flow-matching velocity,
v*(x, t) = E[eps - x_0 | x_t = x] = -mu + c(t) (x - (1 - t) mu) with
c(t) = (t - (1 - t) s^2) / ((1 - t)^2 s^2 + t^2) (x_t is Gaussian with mean (1 - t) mu, variance
(1 - t)^2 s^2 + t^2, and Cov(eps - x_0, x_t) = t - (1 - t) s^2). Its ODE maps the noise z at t = 1 to
x_0 = mu + s z exactly, so a sampler's error is known per sample, without statistics.
"""

from __future__ import annotations

import math
import re

import lightning as L
import numpy as np
import pytest
import torch
from conftest import tiny_phantom, tiny_trainer
from scipy import stats
from scipy.special import expit

from medsynth.diffusion import (
    DEFAULT_NUM_STEPS,
    FLOW_SAMPLERS,
    SAMPLERS,
    TIMESTEP_SAMPLING,
    ClassifierFreeGuidance,
    GaussianDiffusion,
    RectifiedFlow,
    build_process,
    guided_output,
    heun_schedule,
    sample,
    shift_time,
)
from medsynth.models import SDM, ConditionalDDPM, EdgeGuidedDDPM, MaskGuidedDDPM

MU = torch.tensor([-0.5, 0.2, 0.4, 0.0], dtype=torch.float64).reshape(1, 1, 2, 2)
S = 0.3
TINY = dict(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,))


def gaussian_velocity(x: torch.Tensor, time: torch.Tensor, **kwargs) -> torch.Tensor:
    """The exact velocity of x_0 ~ N(MU, S^2 I) at x and network time t * 1000, in float64."""
    t = (time.double() / 1000.0).reshape(-1, 1, 1, 1)
    c = (t - (1 - t) * S**2) / ((1 - t) ** 2 * S**2 + t**2)
    return (-MU + c * (x.double() - (1 - t) * MU)).float()


def affine_map_error(sampler: str, nfe: int) -> float:
    """Largest error of the slope of the sampler's map z -> x_0 (exact: MU + S z), over the pixels.

    The exact velocity is affine in x, so every Euler or Heun step and the whole chain are affine
    too: two starting points (z = 0 and z = 1) give the sampler's map exactly.
    """
    z = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])  # [2, 1, 2, 2]
    x = RectifiedFlow().solve(gaussian_velocity, z, sampler, nfe, clip_denoised=False).double()
    return float(((x[1] - x[0]) - S).abs().max())


# ---------------------------------------------------------------------------------- the path
def test_interpolant_and_target_at_given_t() -> None:
    """x_t = (1 - t) x_0 + t eps and v = eps - x_0 against float64 numpy, and MONAI's add_noise
    (timestep t * 1000) on the same inputs."""
    from monai.networks.schedulers import RFlowScheduler

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 3, 3, generator=g) * 2 - 1
    eps = torch.randn(4, 1, 3, 3, generator=g)
    t = torch.tensor([0.0, 0.25, 0.7, 1.0])
    f = RectifiedFlow()
    xt = f.interpolate(x0, t, eps)
    tt = t.double().numpy()[:, None, None, None]
    ref = (1 - tt) * x0.double().numpy() + tt * eps.double().numpy()
    np.testing.assert_allclose(xt.double().numpy(), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(xt[0], x0[0], rtol=0, atol=0)  # t = 0: the data
    torch.testing.assert_close(xt[3], eps[3], rtol=0, atol=0)  # t = 1: pure noise
    np.testing.assert_allclose(
        f.velocity_target(x0, eps).double().numpy(), (eps - x0).double().numpy(), rtol=0, atol=0
    )
    monai = RFlowScheduler(num_train_timesteps=1000, use_discrete_timesteps=False)
    torch.testing.assert_close(monai.add_noise(x0, eps, t * 1000), xt, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="float tensor of shape"):
        f.interpolate(x0, torch.tensor([0, 250, 700, 999]), eps)  # DDPM's integer timesteps


def test_loss_is_the_velocity_mse_against_float64() -> None:
    """``loss`` = mean (eps - x_0 - output)^2 per sample; the network sees x_t and t * 1000."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    eps = torch.randn(3, 1, 4, 4, generator=g)
    out = torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([0.1, 0.5, 0.95])
    seen = {}

    def model(x, time, cond):
        seen.update(x=x, time=time, cond=cond)
        return out

    losses = RectifiedFlow().training_losses(model, x0, t, {"cond": "c"}, noise=eps)
    assert set(losses) == {"loss"}
    ref = (((eps - x0 - out).double()) ** 2).mean(dim=(1, 2, 3))
    np.testing.assert_allclose(losses["loss"].double().numpy(), ref.numpy(), rtol=1e-6)
    torch.testing.assert_close(seen["time"], t * 1000)
    torch.testing.assert_close(seen["x"], RectifiedFlow().interpolate(x0, t, eps))
    assert seen["cond"] == "c"
    with pytest.raises(ValueError, match="1 channel"):
        RectifiedFlow().training_losses(lambda x, time: torch.cat([x, x], 1), x0, t)  # a DDPM's 2C output


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_loss_of_the_exact_velocity_is_the_conditional_variance(t: float) -> None:
    """The minimiser's loss is Var(eps - x_0 | x_t) = 1 + s^2 - (t - (1 - t) s^2)^2 / Var(x_t).

    The residual is Gaussian, so each squared residual has mean sigma^2 and SD sqrt(2) sigma^2: the
    mean over N = 4 x 20000 values is within 4 SE = 4 sqrt(2 / N) sigma^2 (a false failure has
    probability < 1e-4).
    """
    n = 20000
    g = torch.Generator().manual_seed(2)
    x0 = (MU + S * torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64)).float()
    eps = torch.randn(n, 1, 2, 2, generator=g)
    loss = RectifiedFlow().training_losses(gaussian_velocity, x0, torch.full((n,), t), noise=eps)["loss"]
    var = 1 + S**2 - (t - (1 - t) * S**2) ** 2 / ((1 - t) ** 2 * S**2 + t**2)
    assert abs(float(loss.double().mean()) - var) < 4 * math.sqrt(2 / (4 * n)) * var, (
        float(loss.mean()),
        var,
    )


# ---------------------------------------------------------------------------------- training times
def _draw(flow: RectifiedFlow, n: int = 20000, seed: int = 0) -> np.ndarray:
    return flow.sample_timesteps(n, "cpu", torch.Generator().manual_seed(seed)).double().numpy()


@pytest.mark.parametrize("mean,std,shift", [(0.0, 1.0, 1.0), (-0.5, 0.7, 1.0), (0.0, 1.0, 3.0)])
def test_logit_normal_quantiles_match_scipy(mean: float, std: float, shift: float) -> None:
    """Quantiles of t = shift(sigmoid(m + s n)) against scipy's: expit(norm.ppf(p, m, s)), shifted.

    Tolerance 4 standard errors of a sample quantile, sqrt(p (1 - p) / N) / f(q_p), with the
    density f of the logit-normal from scipy (through the shift's derivative); and a KS test at
    the 0.1 % level on the same draw.
    """
    flow = RectifiedFlow("logit-normal", mean, std, shift)
    draws = _draw(flow)
    n = len(draws)
    assert draws.dtype == np.float64 and 0 < draws.min() and draws.max() < 1
    ps = np.array([0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98])
    z = stats.norm.ppf(ps, mean, std)
    u = expit(z)  # quantiles before the shift
    q = shift_time(u, shift)
    f_u = stats.norm.pdf(z, mean, std) / (u * (1 - u))  # logit-normal density at u
    f_q = f_u / (shift / (1 + (shift - 1) * u) ** 2)  # through t' = a u / (1 + (a - 1) u)
    se = np.sqrt(ps * (1 - ps) / n) / f_q
    got = np.quantile(draws, ps)
    assert np.all(np.abs(got - q) < 4 * se), (got, q, se)
    unshift = draws / (shift - (shift - 1) * draws)  # the inverse shift
    assert stats.kstest(unshift, lambda x: stats.norm.cdf(np.log(x / (1 - x)), mean, std)).pvalue > 1e-3


def test_uniform_sampling_shift_and_bad_names() -> None:
    """Uniform t passes a KS test (0.1 %); the shift equals MONAI's timestep_transform with its
    ratio (pixels / base pixels)^(1/dims); unknown sampling names list the valid ones; a generator
    makes the draw reproducible."""
    from monai.networks.schedulers.rectified_flow import timestep_transform

    assert stats.kstest(_draw(RectifiedFlow("uniform")), "uniform").pvalue > 1e-3
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    for numel, base in ((64 * 64, 32 * 32), (256 * 256, 64 * 64)):
        ratio = (numel / base) ** 0.5
        monai = timestep_transform(t * 1000, numel, base, num_train_timesteps=1000, spatial_dim=2) / 1000
        torch.testing.assert_close(shift_time(t, ratio), monai, rtol=1e-12, atol=1e-12)
    assert RectifiedFlow(shift=2.0).time_grid(2) == [1.0, 2 * 0.5 / 1.5, 0.0]
    for bad in ("lognormal", "logit_normal"):
        with pytest.raises(ValueError, match="unknown timestep_sampling .*logit-normal, uniform"):
            RectifiedFlow(bad)
        with pytest.raises(ValueError, match="logit-normal, uniform"):
            ConditionalDDPM(32, process="rflow", timestep_sampling=bad, **TINY)
    np.testing.assert_array_equal(_draw(RectifiedFlow(), 8, 5), _draw(RectifiedFlow(), 8, 5))
    for kwargs in ({"logit_std": 0.0}, {"shift": -1.0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            RectifiedFlow(**kwargs)
    assert TIMESTEP_SAMPLING == ("logit-normal", "uniform")


# ---------------------------------------------------------------------------------- samplers
def test_euler_transports_noise_to_the_gaussian_data() -> None:
    """Euler, 1000 steps, with the exact velocity: per-pixel mean and variance of N = 20000 samples.

    Tolerances are sample-size arithmetic: 4 SE of a mean, S / sqrt(N) = 0.0021, and of a
    variance, S^2 sqrt(2 / (N - 1)) = 0.0009. Euler's own error at 1000 steps is below that: its map
    is exact in the mean and off by 5.8e-4 in the slope (3.5e-4 in the variance; measured with
    affine_map_error), so a wrong velocity or sign fails by far more.
    """
    n = 20000
    z = torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    x = RectifiedFlow().solve(gaussian_velocity, z, "euler", 1000, clip_denoised=False).double()
    mean, var = x.mean(0, keepdim=True), x.var(0, keepdim=True)
    assert float((mean - MU).abs().max()) < 4 * S / math.sqrt(n)
    assert float((var - S**2).abs().max()) < 4 * S**2 * math.sqrt(2 / (n - 1))
    assert affine_map_error("euler", 1000) < 1e-3


def test_heun_converges_at_second_order_and_euler_at_first() -> None:
    """Error of the map z -> x_0 on the Gaussian toy: Euler's halves when the evaluations double
    (first order; measured 0.513, 0.507, 0.504 from 16 to 128); Heun's falls to a quarter (second
    order: measured 0.248 from 100 to 200 evaluations, 0.251 from 101 to 201) and beats Euler's from
    17 evaluations (measured ratios 0.56 at 17, 0.33 at 64, 0.10 at 200). Below that the last Euler
    step, a large first-order step, dominates (Heun 1.3x Euler's error at 3-8 here): the price of never
    evaluating at t = 0, which two-point data shows is worth it (next test). Deterministic."""
    euler = {n: affine_map_error("euler", n) for n in (16, 32, 64, 128, 200)}
    heun = {n: affine_map_error("heun", n) for n in (17, 64, 100, 101, 200, 201)}
    for n in (16, 32, 64):
        assert 0.45 < euler[2 * n] / euler[n] < 0.55, (n, euler)
    for a, b in ((100, 200), (101, 201)):
        assert 0.2 < heun[b] / heun[a] < 0.3, heun
    assert heun[17] < 0.7 * euler[16] and heun[64] < 0.4 * euler[64] and heun[200] < 0.15 * euler[200]
    assert heun[200] < 1e-3


TWO_POINT = 0.8


def two_point_velocity(x: torch.Tensor, time: torch.Tensor, **kwargs) -> torch.Tensor:
    """The exact velocity of x_0 = +-A (each pixel, probability 1/2): (x - E[x_0 | x_t = x]) / t with
    E[x_0 | x_t = x] = A tanh((1 - t) A x / t^2), float64. Singular at t = 0 (the posterior mean
    jumps from -A to A at x = 0): evaluating there raises."""
    t = (time.double() / 1000.0).reshape(-1, 1, 1, 1)
    if bool((t <= 0).any()):
        raise AssertionError("the velocity was evaluated at t = 0")
    posterior_mean = TWO_POINT * torch.tanh((1 - t) * TWO_POINT * x.double() / t**2)
    return ((x.double() - posterior_mean) / t).float()


def test_heun_never_evaluates_the_singular_end_and_reaches_two_point_data() -> None:
    """On data with a singular velocity at t = 0 (two points, +-A) Heun never evaluates t = 0 (the
    field raises there), and its samples approach +-A (mean distance measured 0.019 at 8, 1e-4 at
    16, 0.0000 to 4 decimals at 32; asserted < 0.03, 0.002, 0.002), half of them positive, as the data.
    A chain that ends with a Heun correction at t = 0, fed the field's value there (-x: eps is
    independent of x_0), keeps a first-order error that halves as the evaluations double (measured
    0.10, 0.050, 0.025 at 8, 16, 32; 5.2x the last-Euler chain's at 8): the reason for the last Euler
    step. 16000 values; the noise is seeded."""
    z = torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    flow = RectifiedFlow()

    def at_zero_too(x, time):  # the same field, with its t = 0 value
        return -x if float(time.reshape(-1)[0]) == 0 else two_point_velocity(x, time)

    def distance(x: torch.Tensor) -> float:
        return float((x.abs() - TWO_POINT).abs().mean())

    old = {}
    for n, tol in ((8, 0.03), (16, 0.002), (32, 0.002)):
        x = flow.solve(two_point_velocity, z, "heun", n, clip_denoised=False)
        assert distance(x) < tol and abs(float((x > 0).float().mean()) - 0.5) < 0.02, (n, distance(x))
        old[n] = distance(flow.integrate(at_zero_too, z, flow.time_grid(n // 2), n // 2, clip_denoised=False))
        assert old[n] > 4 * distance(x), (n, old[n], distance(x))
    assert 0.4 < old[16] / old[8] < 0.6 and 0.4 < old[32] / old[16] < 0.6, old


@pytest.mark.parametrize("nfe", [1, 2, 3, 4, 7])
def test_network_evaluations_and_times(nfe: int) -> None:
    """num_steps counts network evaluations for both samplers. Euler n: n evaluations at
    t = 1, 1 - 1/n, ...; Heun n: (n - 1) // 2 Heun steps (evaluations at both ends of each
    interval), then 1 (odd n) or 2 (even n) Euler steps, on n - (n - 1) // 2 uniform intervals; no
    evaluation at t = 0."""
    calls = {s: [] for s in FLOW_SAMPLERS}
    for s in FLOW_SAMPLERS:

        def model(x, time, s=s):
            calls[s].append(round(float(time[0]) / 1000, 6))
            return torch.zeros_like(x)

        sample(RectifiedFlow(), model, (2, 1, 2, 2), sampler=s, num_steps=nfe)
    assert calls["euler"] == [round(1 - i / nfe, 6) for i in range(nfe)]
    h = (nfe - 1) // 2
    k = nfe - h
    grid = [round(1 - i / k, 6) for i in range(k + 1)]
    want = [x for i in range(h) for x in (grid[i], grid[i + 1])] + grid[h:-1]
    assert calls["heun"] == want and len(want) == nfe and 0.0 not in want
    assert heun_schedule(nfe) == (k, h)


def test_euler_and_heun_match_diffusers_schedulers() -> None:
    """Euler equals diffusers' FlowMatchEulerDiscreteScheduler on the same grid (custom sigmas, with
    and without its shift); Heun with 2N - 1 evaluations on FlowMatchHeunDiscreteScheduler's own
    grid (linspace(1, 1/1000, N), then 0) equals that scheduler, to 2e-4: diffusers recovers the
    velocity at sigma = 1/1000 as (x - (x - sigma v)) / sigma in float32, which loses ~1e-7 / sigma =
    1e-4 (measured difference 6e-5; a wrong step is off by ~0.1). MONAI's RFlowScheduler Euler step,
    fed the velocity with its sign (x_0 - eps), is the same step."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
    from monai.networks.schedulers import RFlowScheduler

    def model(x, time):  # a smooth, nonlinear "network"
        t = time.reshape(-1, 1, 1, 1) / 1000
        return torch.tanh(1.5 * x) - 0.4 * t * x + 0.2

    x1 = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    for shift in (1.0, 3.0):
        flow = RectifiedFlow(shift=shift)
        ref = FlowMatchEulerDiscreteScheduler(shift=shift)
        ref.set_timesteps(sigmas=[1 - i / 5 for i in range(5)])  # the unshifted grid; it shifts
        x = x1.clone()
        for t in ref.timesteps:
            x = ref.step(model(x, t.expand(3)), t, x).prev_sample
        torch.testing.assert_close(
            flow.solve(model, x1, "euler", 5, clip_denoised=False), x, atol=1e-5, rtol=0
        )
        np.testing.assert_allclose(ref.sigmas.numpy(), flow.time_grid(5), atol=1e-6)
    for n in (2, 3, 6):
        ref = FlowMatchHeunDiscreteScheduler()
        ref.set_timesteps(n)
        x = x1.clone()
        for t in ref.timesteps:
            x = ref.step(model(x, t.expand(3)), t, x).prev_sample
        grid = [*np.linspace(1.0, 1 / 1000, n).tolist(), 0.0]
        ours = RectifiedFlow().integrate(model, x1, grid, heun_intervals=n - 1, clip_denoised=False)
        torch.testing.assert_close(ours, x, atol=2e-4, rtol=0)
        assert len(ref.timesteps) == 2 * n - 1  # its evaluations
    monai, flow = RFlowScheduler(use_discrete_timesteps=False), RectifiedFlow()
    monai.set_timesteps(4)
    grid = flow.time_grid(4)
    x = x1.clone()
    for t, t_next in zip(grid[:-1], grid[1:]):
        tt = torch.full((3,), t * 1000)
        x, _ = monai.step(-model(x, tt), t * 1000, x, t_next * 1000)
    torch.testing.assert_close(flow.solve(model, x1, "euler", 4, clip_denoised=False), x, atol=1e-5, rtol=0)


def test_clipping_steps_towards_the_clipped_x0() -> None:
    """clip_denoised: where x - t v leaves [-1, 1] the step heads for the clipped x_0, so one Euler
    step from t = 1 lands on it; inside the range nothing changes."""
    x1 = torch.tensor([[[[0.5, -0.2]]]])
    v = torch.tensor([[[[-2.0, 0.3]]]])  # implied x_0 = x - v = [2.5, -0.5]
    out = RectifiedFlow().solve(lambda x, time: v, x1, "euler", 1, clip_denoised=True)
    torch.testing.assert_close(out, torch.tensor([[[[1.0, -0.5]]]]))
    raw = RectifiedFlow().solve(lambda x, time: v, x1, "euler", 1, clip_denoised=False)
    torch.testing.assert_close(raw, torch.tensor([[[[2.5, -0.5]]]]))


def test_guidance_on_the_velocity_is_guidance_on_eps() -> None:
    """Guiding a flow's velocity, v_u + s (v_c - v_u), implies the guided eps, eps_u + s (eps_c - eps_u),
    since eps = x_t + (1 - t) v; ClassifierFreeGuidance works on 1-channel (velocity) outputs."""
    g = torch.Generator().manual_seed(5)
    xt, v_c, v_u = (torch.randn(2, 1, 3, 3, generator=g) for _ in range(3))
    t, s = 0.35, 1.7
    v_g = guided_output(v_c, v_u, s, channels=1)
    eps = lambda v: xt + (1 - t) * v  # noqa: E731
    torch.testing.assert_close(eps(v_g), eps(v_u) + s * (eps(v_c) - eps(v_u)))

    def model(x, time, seg):  # velocity 2 + x where conditioned, x where not
        return x + 2.0 * seg.mean(dim=(1, 2, 3), keepdim=True)

    x, tt, seg = torch.full((1, 1, 2, 2), 0.2), torch.tensor([350.0]), torch.ones(1, 3, 2, 2)
    out = ClassifierFreeGuidance(model, 3.0, cond_key="seg", guided_channels=1)(x, tt, seg=seg)
    torch.testing.assert_close(out, torch.full((1, 1, 2, 2), 0.2 + 3.0 * 2.0))
    two = torch.randn(2, 2, 3, 3, generator=g), torch.randn(2, 2, 3, 3, generator=g)
    torch.testing.assert_close(guided_output(*two, 1.5, channels=1), guided_output(*two, 1.5))  # (eps, v)


# ---------------------------------------------------------------------------------- processes
def test_sampler_names_are_checked_per_process() -> None:
    """A flow asked for a DDPM sampler (and the reverse) fails naming its process and samplers;
    unknown samplers and processes list the valid ones; DEFAULT_NUM_STEPS covers every sampler."""
    flow, ddpm = RectifiedFlow(), GaussianDiffusion()
    for s in SAMPLERS:
        with pytest.raises(
            ValueError, match=rf"'{re.escape(s)}' belongs to process 'ddpm'.*'rflow'.*euler, heun"
        ):
            sample(flow, lambda x, t: x, (1, 1, 2, 2), sampler=s)
    for s in FLOW_SAMPLERS:
        with pytest.raises(
            ValueError, match=rf"'{s}' belongs to process 'rflow'.*'ddpm'.*ddpm, ddim, dpm\+\+"
        ):
            sample(ddpm, lambda x, t: torch.cat([x, x], 1), (1, 1, 2, 2), sampler=s)
    with pytest.raises(ValueError, match="unknown sampler 'rk4'.*euler, heun"):
        sample(flow, lambda x, t: x, (1, 1, 2, 2), sampler="rk4")
    with pytest.raises(ValueError, match="unknown process 'flow'; choose one of ddpm, rflow"):
        build_process("flow")
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
        sample(flow, lambda x, t: x, (1, 1, 2, 2), num_steps=0)
    assert set(DEFAULT_NUM_STEPS) == set(SAMPLERS + FLOW_SAMPLERS)
    calls = []
    sample(flow, lambda x, t: calls.append(1) or x, (1, 1, 2, 2))  # None: euler, its default count
    assert len(calls) == DEFAULT_NUM_STEPS["euler"]


def test_options_of_the_other_process_are_rejected() -> None:
    """DiffusionModel's defaults are the processes' own; an option of the other process off its
    default is an error naming it."""
    import inspect

    params = inspect.signature(ConditionalDDPM.__mro__[1].__init__).parameters
    flow, gauss = RectifiedFlow.defaults(), GaussianDiffusion.defaults()
    assert params["timestep_sampling"].default == flow["timestep_sampling"]
    assert (params["logit_mean"].default, params["logit_std"].default) == (
        flow["logit_mean"],
        flow["logit_std"],
    )
    assert params["time_shift"].default == flow["shift"]
    assert params["timesteps"].default == gauss["num_timesteps"]
    assert params["noise_schedule"].default == gauss["noise_schedule"]
    assert params["prediction_type"].default == gauss["prediction_type"]
    with pytest.raises(ValueError, match="prediction_type='v' applies to process='ddpm' only"):
        ConditionalDDPM(32, process="rflow", prediction_type="v", **TINY)
    with pytest.raises(ValueError, match="time_shift=2.0 applies to process='rflow' only"):
        ConditionalDDPM(32, time_shift=2.0, **TINY)
    with pytest.raises(ValueError, match="'ddim' belongs to process 'ddpm'"):
        ConditionalDDPM(32, process="rflow", sampler="ddim", **TINY)


@pytest.mark.parametrize("cls", [ConditionalDDPM, MaskGuidedDDPM, EdgeGuidedDDPM, SDM])
def test_every_diffusion_method_trains_and_samples_as_a_flow(cls: type) -> None:
    """process="rflow" keeps the network's code and conditioning, with 1 output channel (2 for
    DDPM); one training step logs the flow loss; generate() samples with Euler and Heun, and
    rejects the DDPM samplers naming the process."""
    extra = {"spade_hidden": 8} if cls is SDM else {}
    L.seed_everything(0, verbose=False)
    flow, ddpm = cls(32, process="rflow", **TINY, **extra), cls(32, **TINY, **extra)
    assert type(flow.net) is type(ddpm.net)
    assert flow.net.out_channels == 1 and ddpm.net.out_channels == 2
    assert isinstance(flow.diffusion, RectifiedFlow) and flow.hparams.process == "rflow"
    trainer = tiny_trainer(fast_dev_run=1)
    trainer.fit(flow, datamodule=tiny_phantom())
    assert set(k for k in trainer.callback_metrics if k.startswith("train/")) == {"train/loss"}
    mask = torch.zeros(2, 32, 32, dtype=torch.long)
    mask[:, 8:24, 8:24] = 6
    gen = [torch.Generator().manual_seed(i) for i in range(2)]
    for s in FLOW_SAMPLERS:
        out = flow.generate(mask, sampler=s, num_steps=3, generator=gen)
        assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="'dpm\\+\\+' belongs to process 'ddpm'.*'rflow'"):
        flow.generate(mask, sampler="dpm++")
    if cls is SDM:  # guidance on the 1-channel velocity (ClassifierFreeGuidance, guided_channels=1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # zero-initialised output convs make a fresh net ignore the mask: perturb
            for p in flow.ema.shadow.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        seeded = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
        with pytest.warns(UserWarning, match="never trained"):
            guided = flow.generate(mask, num_steps=2, guidance_scale=2.0, generator=seeded())
        plain = flow.generate(mask, num_steps=2, guidance_scale=1.0, generator=seeded())
        assert torch.isfinite(guided).all() and not torch.equal(guided, plain)


def test_flow_checkpoint_loads_through_medsynth_load_model(tmp_path) -> None:
    """The checkpoint records the process (hparams): medsynth synthesize/evaluate's loader rebuilds a
    flow that samples the same slices and refuses "ddpm" naming "rflow"."""
    from medsynth.synthesis import load_model

    L.seed_everything(0, verbose=False)
    model = ConditionalDDPM(
        32, process="rflow", timestep_sampling="uniform", sampler="heun", num_steps=4, **TINY
    )
    trainer = tiny_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_phantom())
    trainer.save_checkpoint(tmp_path / "flow.ckpt")
    loaded = load_model(tmp_path / "flow.ckpt")
    assert loaded.hparams.process == "rflow" and loaded.diffusion.timestep_sampling == "uniform"
    mask = torch.zeros(1, 32, 32, dtype=torch.long)
    a = model.generate(mask, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        loaded.generate(mask, generator=torch.Generator().manual_seed(0)), a, rtol=0, atol=0
    )
    with pytest.raises(
        ValueError, match="'ddpm' belongs to process 'ddpm', but this model's is process 'rflow'"
    ):
        loaded.generate(mask, sampler="ddpm")


def test_callbacks_refuse_a_sampler_of_the_other_process_before_training() -> None:
    """A metrics or image-grid callback configured with a DDPM sampler fails at setup for a flow,
    naming the callback and the argument, before any weight changes (and the reverse)."""
    from medsynth.callbacks import SynthesisImageGrid, SynthesisMetrics

    cases = (
        ("rflow", SynthesisImageGrid(sampler="ddpm"), r"SynthesisImageGrid\(sampler='ddpm'\)"),
        (
            "rflow",
            SynthesisMetrics(metrics=["psnr"], val_sampler="ddim"),
            r"SynthesisMetrics\(val_sampler='ddim'\)",
        ),
        ("ddpm", SynthesisMetrics(metrics=["psnr"], sampler="heun"), r"SynthesisMetrics\(sampler='heun'\)"),
    )
    for process, callback, message in cases:
        model = ConditionalDDPM(32, process=process, **TINY)
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(ValueError, match=message + ".*process"):
            tiny_trainer(max_steps=1, callbacks=[callback]).fit(model, datamodule=tiny_phantom())
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
