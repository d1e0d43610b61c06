"""Prediction types (eps, x_0, v) against closed forms: targets, round trips, one posterior, guidance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.diffusion import PREDICTION_TYPES, GaussianDiffusion, cosine_betas, guided_output, sample
from medsynth.models import MaskGuidedDDPM

TINY = dict(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=())


def tensors(seed: int = 0, b: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((b, 1, 8, 8), generator=g) * 2 - 1
    eps = torch.randn((b, 1, 8, 8), generator=g)
    t = torch.tensor([0, 10, 500, 999][:b])
    return x0, eps, t


def abar64(t: torch.Tensor) -> np.ndarray:
    """abar_t of the cosine schedule in float64, from the betas alone (cumulative product)."""
    return np.cumprod(1.0 - cosine_betas(1000))[t.numpy()][:, None, None, None]


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_target_is_the_closed_form(kind: str) -> None:
    """eps; x_0; v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022), against float64 numpy."""
    d = GaussianDiffusion(noise_schedule="cosine", prediction_type=kind)
    x0, eps, t = tensors()
    a = abar64(t)
    ref = {"eps": eps.double().numpy(), "x0": x0.double().numpy()}
    ref["v"] = np.sqrt(a) * eps.double().numpy() - np.sqrt(1 - a) * x0.double().numpy()
    got = d.prediction_target(x0, t, eps).double().numpy()
    np.testing.assert_allclose(got, ref[kind], rtol=0, atol=2e-6)


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_true_prediction_recovers_x0_and_eps(kind: str) -> None:
    """Round trip: the exact target at x_t = q_sample(x_0, eps) maps back to (x_0, eps).

    float32 rounding is amplified by the conversion's condition number: 1/sqrt(abar) for
    eps -> x_0 (~600 at t = 999) and 1/sqrt(1 - abar) for x_0 -> eps (~30 at t = 0); the tolerance
    is 2e-6 times that factor.
    """
    d = GaussianDiffusion(noise_schedule="cosine", prediction_type=kind)
    x0, eps, t = tensors(1)
    xt = d.q_sample(x0, t, eps)
    x0_hat, eps_hat = d.x0_eps_from_prediction(d.prediction_target(x0, t, eps), xt, t)
    a = torch.from_numpy(abar64(t)).float()
    tol_x0 = 2e-6 * (1 / a.sqrt() if kind == "eps" else torch.ones_like(a))
    tol_eps = 2e-6 * (1 / (1 - a).sqrt() if kind == "x0" else torch.ones_like(a))
    assert ((x0_hat - x0).abs() <= tol_x0).all(), float((x0_hat - x0).abs().max())
    assert ((eps_hat - eps).abs() <= tol_eps).all(), float((eps_hat - eps).abs().max())


def test_the_three_types_give_one_posterior() -> None:
    """Fed its exact target, every type gives the true posterior q(x_{t-1} | x_t, x_0) (unclipped)."""
    x0, eps, _ = tensors(2, b=3)
    t = torch.tensor([1, 10, 500])  # away from t = 999, where eps -> x_0 amplifies rounding 600x
    var = torch.zeros_like(x0)
    means = {}
    for kind in PREDICTION_TYPES:
        d = GaussianDiffusion(noise_schedule="cosine", prediction_type=kind)
        xt = d.q_sample(x0, t, eps)
        out = d.p_from_output(
            torch.cat([d.prediction_target(x0, t, eps), var], 1), xt, t, clip_denoised=False
        )
        true_mean = d.q_posterior_mean_variance(x0, xt, t)[0]
        assert torch.allclose(out["mean"], true_mean, atol=2e-5), kind
        means[kind] = out["mean"]
    assert torch.allclose(means["x0"], means["v"], atol=2e-5)


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_loss_simple_is_mse_of_the_target(kind: str) -> None:
    """A network that outputs zeros has loss_simple = mean(target^2); the exact target gives 0."""
    d = GaussianDiffusion(noise_schedule="cosine", prediction_type=kind)
    x0, eps, t = tensors(3)
    zeros = lambda x, t: torch.zeros(x.shape[0], 2, *x.shape[2:])  # noqa: E731
    loss = d.training_losses(zeros, x0, t, noise=eps)["loss_simple"]
    target = d.prediction_target(x0, t, eps)
    assert torch.allclose(loss, (target**2).mean(dim=(1, 2, 3)), rtol=1e-6)

    def exact(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return torch.cat([target, torch.zeros_like(target)], 1)

    assert float(d.training_losses(exact, x0, t, noise=eps)["loss_simple"].abs().max()) == 0.0


@pytest.mark.parametrize("kind", ["x0", "v"])
def test_guidance_on_any_type_is_guidance_on_eps(kind: str) -> None:
    """CFG on x_0 or v outputs gives the step CFG on the implied eps gives (affine, weights sum to 1)."""
    d = GaussianDiffusion(noise_schedule="cosine", prediction_type=kind)
    d_eps = GaussianDiffusion(noise_schedule="cosine")
    g = torch.Generator().manual_seed(4)
    xt = torch.randn((3, 1, 8, 8), generator=g)
    t = torch.tensor([20, 300, 900])
    pc, pu, v = (torch.randn((3, 1, 8, 8), generator=g) for _ in range(3))
    guided = guided_output(torch.cat([pc, v], 1), torch.cat([pu, v], 1), 1.5)
    ec, eu = d.x0_eps_from_prediction(pc, xt, t)[1], d.x0_eps_from_prediction(pu, xt, t)[1]
    guided_eps = guided_output(torch.cat([ec, v], 1), torch.cat([eu, v], 1), 1.5)
    a = d.p_from_output(guided, xt, t, clip_denoised=False)
    b = d_eps.p_from_output(guided_eps, xt, t, clip_denoised=False)
    assert torch.allclose(a["mean"], b["mean"], atol=1e-4)
    assert torch.allclose(a["pred_x0"], b["pred_x0"], atol=1e-3)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_samplers_agree_across_types(sampler: str) -> None:
    """An x_0 network and the eps network it implies draw the same samples with every sampler.

    The eps network is built from a fixed x_0 guess f(x_t) = tanh(x_t) through the closed form, so
    both describe one reverse process; respacing keeps the prediction type.
    """
    kinds = {k: GaussianDiffusion(noise_schedule="cosine", prediction_type=k) for k in PREDICTION_TYPES}
    ref = kinds["eps"]

    def for_type(kind: str):
        def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x0 = torch.tanh(x)
            eps = ref.predict_eps_from_x0(x, t, x0)
            target = kinds[kind].prediction_target(x0, t, eps)
            return torch.cat([target, torch.zeros_like(x)], 1)

        return net

    outs = {}
    for kind, d in kinds.items():
        g = torch.Generator().manual_seed(5)
        outs[kind] = sample(d, for_type(kind), (2, 1, 8, 8), sampler=sampler, num_steps=20, generator=g)
    assert kinds["v"].respace(20).prediction_type == "v"
    for kind in ("x0", "v"):
        assert torch.allclose(outs[kind], outs["eps"], atol=1e-3), (
            kind,
            float((outs[kind] - outs["eps"]).abs().max()),
        )


def test_unknown_prediction_type_is_named() -> None:
    with pytest.raises(ValueError, match="'sample'"):
        GaussianDiffusion(prediction_type="sample")
    with pytest.raises(ValueError, match="prediction_type"):
        MaskGuidedDDPM(32, prediction_type="velocity", **TINY)
    model = MaskGuidedDDPM(32, prediction_type="v", **TINY)
    assert model.diffusion.prediction_type == "v"
    assert model.diffusion.respace(10).prediction_type == "v"


def test_demo_flags_parse_booleans_and_reject_unknown_recipe_values(capsys) -> None:
    """`--ema_warmup false` is False (argparse's bool() would read it as True); bad values stop at parsing."""
    from medsynth.commands.demo import build_parser

    assert build_parser().parse_args(["--ema_warmup", "false"]).ema_warmup is False
    assert build_parser().parse_args(["--ema_warmup", "True"]).ema_warmup is True
    for flag, bad in (
        ("--ema_warmup", "maybe"),
        ("--prediction_type", "velocity"),
        ("--noise_schedule", "sigmoid"),
    ):
        with pytest.raises(SystemExit):
            build_parser().parse_args([flag, bad])
        assert flag.lstrip("-") in capsys.readouterr().err
