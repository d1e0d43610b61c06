"""Gaussian diffusion and samplers against closed forms and an independent float64 computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from medsynth.diffusion import (
    SAMPLERS,
    ClassifierFreeGuidance,
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    guided_output,
    linear_betas,
    normal_kl,
    sample,
    space_timesteps,
)

T = 1000


def ref_schedule(num_timesteps: int = T) -> tuple[np.ndarray, np.ndarray]:
    """Linear betas of Ho et al. scaled to T, and alpha-bar, written out independently."""
    s = 1000.0 / num_timesteps
    betas = np.array(
        [s * 1e-4 + (s * 0.02 - s * 1e-4) * i / (num_timesteps - 1) for i in range(num_timesteps)]
    )
    return betas, np.cumprod(1.0 - betas)


def oracle_model(diffusion: GaussianDiffusion, x0: torch.Tensor, v: float = 0.0):
    """The exact eps of a data distribution that is the single point x0 (any variance channel)."""
    abar = torch.tensor(diffusion.alphas_cumprod, dtype=torch.float32)

    def model(x, t, **kwargs):
        a = abar[t].reshape(-1, 1, 1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, torch.full_like(eps, v)], dim=1)

    return model


def test_linear_schedule_and_scaling() -> None:
    betas, _ = ref_schedule()
    np.testing.assert_allclose(linear_betas(1000), betas, rtol=1e-12)
    assert linear_betas(1000).dtype == np.float64
    b4000 = linear_betas(4000)
    np.testing.assert_allclose([b4000[0], b4000[-1]], [2.5e-5, 5e-3], rtol=1e-12)
    with pytest.raises(ValueError, match="num_timesteps"):
        linear_betas(0)


def test_q_sample_moments_match_closed_form() -> None:
    d = GaussianDiffusion()
    _, abar = ref_schedule()
    x0 = torch.tensor([[[[-0.8, 0.3]]]]).repeat(40000, 1, 1, 1)  # [N, 1, 1, 2]
    for t in (0, 10, 500, 999):
        tt = torch.full((x0.shape[0],), t)
        xt = d.q_sample(x0, tt, torch.randn(x0.shape, generator=torch.Generator().manual_seed(t)))
        mean, var, log_var = d.q_mean_variance(x0[:1], tt[:1])
        exp_mean = math.sqrt(abar[t]) * np.array([-0.8, 0.3])
        np.testing.assert_allclose(mean.flatten().numpy(), exp_mean, rtol=1e-6)
        np.testing.assert_allclose(float(var), 1 - abar[t], rtol=1e-6)
        np.testing.assert_allclose(float(log_var), math.log(1 - abar[t]), rtol=1e-6)
        emp_mean = xt.mean(0).flatten().numpy()
        emp_var = xt.var(0).flatten().numpy()
        se = math.sqrt((1 - abar[t]) / x0.shape[0])
        assert np.all(np.abs(emp_mean - exp_mean) < 5 * se + 1e-7)
        np.testing.assert_allclose(emp_var, 1 - abar[t], rtol=0.05)


def test_posterior_matches_bayes_rule() -> None:
    # q(x_{t-1} | x_t, x_0) from the product of q(x_t | x_{t-1}) and q(x_{t-1} | x_0).
    d = GaussianDiffusion()
    betas, abar = ref_schedule()
    x0, xt = torch.tensor([[[[0.4]]]]), torch.tensor([[[[-1.3]]]])
    for t in (1, 2, 50, 999):
        alpha, abar_prev = 1 - betas[t], abar[t - 1]
        precision = alpha / betas[t] + 1 / (1 - abar_prev)
        var = 1 / precision
        mean = var * (math.sqrt(alpha) * -1.3 / betas[t] + math.sqrt(abar_prev) * 0.4 / (1 - abar_prev))
        m, v, lv = d.q_posterior_mean_variance(x0, xt, torch.tensor([t]))
        np.testing.assert_allclose(float(m), mean, rtol=1e-5)
        np.testing.assert_allclose(float(v), var, rtol=1e-5)
        np.testing.assert_allclose(float(lv), math.log(var), rtol=1e-5)
    # t = 0: the posterior is the point x_0, its log variance is clipped to that of t = 1.
    m, v, lv = d.q_posterior_mean_variance(x0, xt, torch.tensor([0]))
    np.testing.assert_allclose(float(m), 0.4, rtol=1e-6)
    assert float(v) == 0.0
    np.testing.assert_allclose(float(lv), math.log(betas[1] * (1 - abar[0]) / (1 - abar[1])), rtol=1e-6)


def test_normal_kl() -> None:
    m, lv = torch.randn(5), torch.randn(5)
    assert torch.allclose(normal_kl(m, lv, m, lv), torch.zeros(5), atol=1e-7)
    # KL(N(0, 1) || N(1, 4)) = log 2 + (1 + 1) / 8 - 1/2
    kl = normal_kl(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(math.log(4.0)))
    np.testing.assert_allclose(float(kl), math.log(2) + 0.25 - 0.5, rtol=1e-6)


def test_discretized_likelihood_sums_to_one() -> None:
    # The 256 bins of [-1, 1] cover the real line: their probabilities sum to 1.
    x = torch.linspace(-1, 1, 256)
    for mean, log_scale in ((0.1, -2.0), (-0.9, -4.0), (0.99, -1.0)):
        logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
        np.testing.assert_allclose(float(logp.exp().sum()), 1.0, rtol=1e-4)


def _ref_hybrid_loss(x0, noise, out, t, betas, abar) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Improved DDPM hybrid loss per sample, float64 numpy/scipy, written from the paper."""
    simple, vlb = [], []
    abar_prev = np.append(1.0, abar[:-1])
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)
    log_bt_clipped = np.log(np.append(beta_tilde[1], beta_tilde[1:]))
    for i, ti in enumerate(t):
        a, ap, b = abar[ti], abar_prev[ti], betas[ti]
        xt = math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i]
        eps, v = out[i, :1], out[i, 1:]
        simple.append(np.mean((noise[i] - eps) ** 2))
        frac = (v + 1) / 2
        logvar = frac * math.log(b) + (1 - frac) * log_bt_clipped[ti]
        x0_hat = (xt - math.sqrt(1 - a) * eps) / math.sqrt(a)
        coef1, coef2 = math.sqrt(ap) * b / (1 - a), math.sqrt(1 - b) * (1 - ap) / (1 - a)
        mean = coef1 * x0_hat + coef2 * xt
        if ti == 0:
            std = np.exp(0.5 * logvar)
            upper = np.where(x0[i] > 0.999, 1.0, norm.cdf((x0[i] + 1 / 255 - mean) / std))
            lower = np.where(x0[i] < -0.999, 0.0, norm.cdf((x0[i] - 1 / 255 - mean) / std))
            vlb.append(-np.mean(np.log(np.maximum(upper - lower, 1e-12))) / math.log(2))
        else:
            true_mean = coef1 * x0[i] + coef2 * xt
            true_logvar = log_bt_clipped[ti]
            kl = 0.5 * (-1 + logvar - true_logvar + np.exp(true_logvar - logvar))
            kl = kl + 0.5 * (true_mean - mean) ** 2 * np.exp(-logvar)
            vlb.append(np.mean(kl) / math.log(2))
    simple, vlb = np.array(simple), np.array(vlb) * (len(betas) / 1000)
    return simple + vlb, simple, vlb


@pytest.mark.parametrize("num_timesteps", [1000, 100])
def test_hybrid_loss_matches_float64_reference(num_timesteps: int) -> None:
    g = torch.Generator().manual_seed(0)
    b = 4
    x0 = torch.rand(b, 1, 3, 3, generator=g) * 2 - 1
    x0[0, 0, 0, 0], x0[0, 0, 1, 1] = -1.0, 1.0  # the open-ended edge bins
    x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1  # on the 8-bit grid, as data are
    noise = torch.randn(x0.shape, generator=g)
    out = torch.cat(
        [noise + 0.3 * torch.randn(x0.shape, generator=g), torch.rand(x0.shape, generator=g) * 2 - 1], 1
    )
    t = torch.tensor([0, 1, num_timesteps // 2, num_timesteps - 1])
    d = GaussianDiffusion(num_timesteps=num_timesteps)
    losses = d.training_losses(lambda x, tt: out, x0, t, noise=noise)
    betas, abar = ref_schedule(num_timesteps)
    ref = _ref_hybrid_loss(
        x0.double().numpy(), noise.double().numpy(), out.double().numpy(), t.numpy(), betas, abar
    )
    for key, r in zip(("loss", "loss_simple", "loss_vlb"), ref):
        np.testing.assert_allclose(losses[key].numpy(), r, rtol=2e-4, atol=1e-6, err_msg=key)


def test_vlb_trains_only_the_variance() -> None:
    d = GaussianDiffusion()
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    out = torch.randn(3, 2, 4, 4, requires_grad=True)
    losses = d.training_losses(lambda x, t: out, x0, torch.tensor([0, 5, 700]))
    losses["loss_vlb"].sum().backward()
    assert torch.all(out.grad[:, 0] == 0)
    assert torch.all(out.grad[:, 1].abs().sum((1, 2)) > 0)


def test_learned_range_variance_interpolates_log_variance() -> None:
    d = GaussianDiffusion()
    betas, abar = ref_schedule()
    t = torch.tensor([0, 300, 999])
    xt = torch.zeros(3, 1, 1, 1)
    lo = np.log(
        np.append(betas[1] * (1 - abar[0]) / (1 - abar[1]), betas[1:] * (1 - abar[:-1]) / (1 - abar[1:]))
    )
    for v, frac in ((-1.0, 0.0), (1.0, 1.0), (0.0, 0.5)):
        out = torch.cat([torch.zeros(3, 1, 1, 1), torch.full((3, 1, 1, 1), v)], 1)
        lv = d.p_from_output(out, xt, t)["log_variance"].flatten().numpy()
        np.testing.assert_allclose(
            lv, frac * np.log(betas[[0, 300, 999]]) + (1 - frac) * lo[[0, 300, 999]], rtol=1e-5
        )


def test_respaced_betas_match_closed_form() -> None:
    d = GaussianDiffusion()
    _, abar = ref_schedule()
    keep = [0, 249, 500, 999]
    r = d.respace(keep)
    expected = [1 - abar[0]] + [1 - abar[k] / abar[p] for p, k in zip(keep[:-1], keep[1:])]
    np.testing.assert_allclose(r.betas, expected, rtol=1e-10)
    np.testing.assert_allclose(r.alphas_cumprod, abar[keep], rtol=1e-10)
    assert r.timestep_map == keep
    assert space_timesteps(1000, 1000) == list(range(1000))
    assert space_timesteps(1000, 5) == [0, 250, 500, 749, 999]
    # the network receives the original indices
    seen = []
    r.p_mean_variance(
        lambda x, t: seen.append(t.tolist()) or torch.zeros(2, 2, 1, 1),
        torch.zeros(2, 1, 1, 1),
        torch.tensor([3, 1]),
    )
    assert seen == [[999, 249]]


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddpm", 50), ("ddim", 25), ("dpm++", 10)])
def test_samplers_recover_the_single_data_point(sampler: str, steps: int | None) -> None:
    # With the exact eps of a one-point data set every sampler must land on that point; dpm++ must
    # ignore the variance channel (set to garbage here).
    d = GaussianDiffusion()
    x0 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9
    calls = []
    model = oracle_model(d, x0, v=5.0 if sampler == "dpm++" else 0.0)
    x = sample(d, lambda x, t: calls.append(1) or model(x, t), x0.shape, sampler=sampler, num_steps=steps)
    assert len(calls) == (steps or 1000)
    torch.testing.assert_close(x, x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_are_reproducible_with_a_generator(sampler: str) -> None:
    d = GaussianDiffusion()

    def model(x, t, seg):
        return torch.cat([0.5 * x + 0.1 * seg, torch.tanh(x)], dim=1)

    seg = torch.ones(2, 1, 4, 4)

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return sample(
            d, model, (2, 1, 4, 4), sampler=sampler, num_steps=8, model_kwargs={"seg": seg}, generator=g
        )

    torch.testing.assert_close(run(0), run(0), rtol=0, atol=0)
    assert not torch.allclose(run(0), run(1))


def test_unknown_sampler_is_named() -> None:
    with pytest.raises(ValueError, match="'euler'"):
        sample(GaussianDiffusion(), lambda x, t: torch.cat([x, x], 1), (1, 1, 2, 2), sampler="euler")
    with pytest.raises(ValueError, match="num_steps"):
        sample(GaussianDiffusion(), lambda x, t: torch.cat([x, x], 1), (1, 1, 2, 2), num_steps=1001)


def test_classifier_free_guidance_arithmetic() -> None:
    cond = torch.tensor([[[[2.0]], [[0.7]]]])  # [1, 2, 1, 1]: eps_c = 2, v_c = 0.7
    uncond = torch.tensor([[[[0.5]], [[-0.3]]]])  # eps_u = 0.5
    out = guided_output(cond, uncond, 1.5)
    # 0.5 + 1.5 * (2 - 0.5) = 2.75; the variance channel is the conditional one
    torch.testing.assert_close(out, torch.tensor([[[[2.75]], [[0.7]]]]))

    # The wrapper: a model whose eps is 3 * mean(seg) + x and v = 0.1 (cond) or -0.9 (null).
    def model(x, t, seg):
        m = seg.mean(dim=(1, 2, 3), keepdim=True)
        return torch.cat([x + 3 * m, torch.where(m > 0, 0.1, -0.9).expand_as(x)], dim=1)

    x, t, seg = torch.full((1, 1, 2, 2), 0.2), torch.tensor([5]), torch.ones(1, 3, 2, 2)
    guided = ClassifierFreeGuidance(model, 2.0, cond_key="seg")(x, t, seg=seg)
    # eps_c = 3.2, eps_u = 0.2 -> 0.2 + 2 * 3 = 6.2; v from the conditional pass
    torch.testing.assert_close(guided[:, 0], torch.full((1, 2, 2), 6.2))
    torch.testing.assert_close(guided[:, 1], torch.full((1, 2, 2), 0.1))
    plain = ClassifierFreeGuidance(model, 1.0, cond_key="seg")(x, t, seg=seg)
    torch.testing.assert_close(plain, model(x, t, seg))
    with pytest.raises(ValueError, match="'seg'"):
        ClassifierFreeGuidance(model, 2.0)(x, t)
