"""Recipe options against their closed forms: cosine schedule, EMA warm-up, lr warm-up; SDM after 4 steps."""

from __future__ import annotations

import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from medsynth.data import PhantomDataModule
from medsynth.diffusion import GaussianDiffusion, cosine_betas, named_betas
from medsynth.models import SDM, MaskGuidedDDPM
from medsynth.nn.ema import EMA, ema_decay_at

TINY = dict(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=())


def phantom(batch_size: int = 2) -> PhantomDataModule:
    return PhantomDataModule(
        num_train_cases=1, num_val_cases=1, num_test_cases=1, depth=4, image_size=32, batch_size=batch_size
    )


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **kwargs,
    )


def ref_cosine_abar(num_timesteps: int, s: float = 0.008) -> list[float]:
    """abar(t) = f(t) / f(0), f(t) = cos(((t/T + s) / (1 + s)) pi/2)^2, t = 0..T, one value at a time."""
    f = [math.cos(((t / num_timesteps + s) / (1 + s)) * math.pi / 2) ** 2 for t in range(num_timesteps + 1)]
    return [v / f[0] for v in f]


# ---------------------------------------------------------------------------------- cosine
@pytest.mark.parametrize("num_timesteps", [1000, 50])
def test_cosine_schedule_matches_eq17(num_timesteps: int) -> None:
    """Nichol & Dhariwal 2021, Eq. 17; abar_t of step t (0-based) is abar(t + 1) of the formula."""
    ref = ref_cosine_abar(num_timesteps)
    betas = cosine_betas(num_timesteps)
    assert betas.dtype == np.float64 and betas.shape == (num_timesteps,)
    d = GaussianDiffusion(num_timesteps=num_timesteps, noise_schedule="cosine")
    np.testing.assert_array_equal(d.betas, betas)
    # f(T) = cos(pi/2)^2 ~ 0, so the unclipped last beta is 1: only it hits the 0.999 clip
    unclipped = [1 - ref[t + 1] / ref[t] for t in range(num_timesteps)]
    assert unclipped[-1] > 0.999 and max(unclipped[:-1]) < 0.999
    np.testing.assert_allclose(betas[:-1], unclipped[:-1], rtol=1e-9, atol=1e-15)
    assert betas[-1] == 0.999
    np.testing.assert_allclose(d.alphas_cumprod[:-1], ref[1:-1], rtol=1e-10)
    np.testing.assert_allclose(d.alphas_cumprod[-1], ref[-2] * (1 - 0.999), rtol=1e-10)
    np.testing.assert_array_equal(
        named_betas("linear", num_timesteps), GaussianDiffusion(num_timesteps=num_timesteps).betas
    )


def test_respaced_cosine_schedule_keeps_abar() -> None:
    d = GaussianDiffusion(noise_schedule="cosine")
    ref = ref_cosine_abar(1000)
    keep = [0, 249, 500, 998, 999]
    r = d.respace(keep)
    abar = [ref[k + 1] for k in keep[:-1]] + [ref[998 + 1] * (1 - 0.999)]
    # rtol 1e-10: the cumulative product of 999 factors rounds to ~1e-12 relative near t = T
    np.testing.assert_allclose(r.alphas_cumprod, abar, rtol=1e-10)
    expected = [1 - abar[0]] + [1 - a / p for p, a in zip(abar[:-1], abar[1:])]
    np.testing.assert_allclose(r.betas, expected, rtol=1e-10)
    assert r.timestep_map == keep


def test_schedule_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="noise_schedule"):
        GaussianDiffusion(noise_schedule="sigmoid")
    with pytest.raises(ValueError, match="noise_schedule"):
        MaskGuidedDDPM(32, noise_schedule="quadratic", **TINY)
    with pytest.raises(ValueError, match="num_timesteps"):
        cosine_betas(0)
    with pytest.raises(ValueError, match="lr_warmup_steps"):
        MaskGuidedDDPM(32, lr_warmup_steps=-1, **TINY)
    model = MaskGuidedDDPM(32, noise_schedule="cosine", **TINY)
    np.testing.assert_array_equal(model.diffusion.betas, cosine_betas(1000))


# ---------------------------------------------------------------------------------- EMA
class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(3, 2)
        self.bn = torch.nn.BatchNorm1d(2)


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_matches_float64_loop(warmup: bool) -> None:
    """n updates against s_n = d_n s_{n-1} + (1 - d_n) w_n computed one scalar at a time in float64."""
    torch.manual_seed(0)
    net = _Net().double()
    decay = 0.99
    ema = EMA(net, decay, warmup=warmup)
    init = [p.detach().clone() for p in net.parameters()]
    history = []
    for _ in range(25):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net.bn.running_mean.add_(1.0)
        history.append([p.detach().clone() for p in net.parameters()])
        ema.update(net)
    assert int(ema.num_updates) == 25
    for i, p in enumerate(ema.shadow.parameters()):
        ref = init[i].numpy().copy()
        for n, weights in enumerate(history, start=1):
            d = min(decay, (1 + n) / (10 + n)) if warmup else decay
            ref = d * ref + (1 - d) * weights[i].numpy()
        np.testing.assert_allclose(p.numpy(), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ema.shadow.bn.running_mean, net.bn.running_mean, rtol=0, atol=0)
    assert int(ema.shadow.bn.num_batches_tracked) == int(net.bn.num_batches_tracked)
    assert ema_decay_at(0.999, 1, True) == pytest.approx(2 / 11)
    assert ema_decay_at(0.999, 10**6, True) == 0.999 and ema_decay_at(0.999, 1, False) == 0.999


def test_ema_state_dict_resumes_the_warmup_and_moves_with_the_module() -> None:
    torch.manual_seed(0)
    net = _Net()
    a = EMA(net, 0.999, warmup=True)
    for _ in range(3):
        a.update(net)
    state = a.state_dict()
    assert set(state) == {"n_averaged"} | {f"module.{k}" for k in net.state_dict()}
    assert int(state["n_averaged"]) == 4  # the copy made at construction counts as the first average
    b = EMA(_Net(), 0.999, warmup=True)
    b.load_state_dict(state)
    assert int(b.num_updates) == 3 and b.current_decay() == a.current_decay() == pytest.approx(5 / 14)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)
    a.update(net)
    b.update(net)
    for x, y in zip(a.shadow.state_dict().values(), b.shadow.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    # the earlier layout (shadow.*, num_updates), and one from before the counter existed
    earlier = {"num_updates": torch.tensor(3), **{f"shadow.{k}": v for k, v in a.shadow.state_dict().items()}}
    c = EMA(_Net(), 0.999, warmup=True)
    c.load_state_dict(earlier)
    assert int(c.num_updates) == 3
    for x, y in zip(a.shadow.state_dict().values(), c.shadow.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    d = EMA(_Net(), 0.999)
    d.load_state_dict({k: v for k, v in earlier.items() if k != "num_updates"})
    assert int(d.num_updates) == 0
    with pytest.raises(RuntimeError, match="module.a.weight"):
        EMA(_Net(), 0.999).load_state_dict({k: v for k, v in state.items() if k != "module.a.weight"})
    # a registered submodule: follows dtype moves, stays in eval mode, trains nothing
    b.double().train()
    assert next(b.shadow.parameters()).dtype == torch.float64 and not b.shadow.training and not b.training
    assert [m for m in b.modules() if m.training] == []
    assert dict(b.named_children()) == {"module": b.shadow} and not any(
        p.requires_grad for p in b.parameters()
    )
    # an update from a float32 network into the float64 copy: the step in the copy's precision
    b.update(net)
    assert next(b.shadow.parameters()).dtype == torch.float64 and int(b.num_updates) == 5


class _Record(Callback):
    """Records the lr before each batch and the live weights after each batch."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.weights: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights.append(torch.cat([p.detach().flatten() for p in pl_module.net.parameters()]).double())


def test_ema_once_per_optimiser_step_with_accumulation_and_lr_warmup() -> None:
    """accumulate_grad_batches=2: 8 batches are 4 optimiser steps, so 4 EMA updates, and the lr
    ramps over optimiser steps (1/3, 2/3, 1, 1 of lr). The shadow equals the warm-up recursion over
    the weights after each optimiser step (batches 2, 4, 6, 8), not after every batch."""
    torch.manual_seed(0)
    model = MaskGuidedDDPM(32, ema_decay=0.9, ema_warmup=True, lr=1e-3, lr_warmup_steps=3, **TINY)
    init = torch.cat([p.detach().flatten() for p in model.net.parameters()]).double()
    rec = _Record()
    tr = trainer(max_steps=4, accumulate_grad_batches=2, callbacks=[rec])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.fit(model, datamodule=phantom())
    assert not [w for w in caught if "eval mode" in str(w.message)], (
        "the EMA copy counts as a module in eval mode"
    )
    assert tr.global_step == 4 and len(rec.weights) == 8
    assert int(model.ema.num_updates) == 4
    np.testing.assert_allclose(
        rec.lrs, [1e-3 * f for f in (1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1, 1)], rtol=1e-12
    )
    ref = init.clone()
    for n, w in enumerate(rec.weights[1::2], start=1):
        d = min(0.9, (1 + n) / (10 + n))
        ref = d * ref + (1 - d) * w
    shadow = torch.cat([p.detach().flatten() for p in model.ema.shadow.parameters()]).double()
    torch.testing.assert_close(shadow, ref, rtol=1e-5, atol=1e-6)
    per_batch = init.clone()
    for n, w in enumerate(rec.weights, start=1):
        d = min(0.9, (1 + n) / (10 + n))
        per_batch = d * per_batch + (1 - d) * w
    assert (shadow - per_batch).abs().max() > 100 * (shadow - ref).abs().max()


# ---------------------------------------------------------------------------------- SDM
def _sdm_difference(ema_warmup: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = SDM(32, spade_hidden=8, lr=1e-2, ema_warmup=ema_warmup, **TINY)
    dm = phantom()
    trainer(max_steps=4).fit(model, datamodule=dm)
    dm.setup("fit")
    masks = torch.stack([item["mask"] for item in dm.train_dataloader().dataset])  # [N, H, W]
    organs = ((masks > 0) & (masks < 16)).flatten(1).sum(1)
    mask = masks[int(organs.argmax())][None]  # [1, H, W], the slice with most organ pixels
    other = torch.flip(mask, dims=(-1,))  # the organs on the other side
    assert (mask != other).float().mean() > 0.1

    def gen(m: torch.Tensor) -> torch.Tensor:
        return model.generate(m, num_steps=10, generator=torch.Generator().manual_seed(0))

    a, again, b = gen(mask), gen(mask), gen(other)
    return float((a - b).abs().mean()), float((a - again).abs().max())


def test_sdm_trained_for_4_steps_depends_on_the_mask() -> None:
    """With EMA warm-up the 4-step EMA keeps only 0.82 * 0.75 * 0.69 * 0.64 = 0.5% of the
    initialisation, so its (zero-initialised) output layers already read the mask. Without it
    (decay 0.9999) the EMA is 99.96% the initialisation, which ignores the mask.

    Same mask twice with the same generator gives bit-identical output (noise floor 0). Measured
    mean |difference| between a mask and its mirror image (lr 1e-2, 4 steps, 10 sampling steps),
    torch seeds 0-3: 1.7e-3 / 2.3e-3 / 1.3e-3 / 7.2e-3 with warm-up, 9e-11 / 5e-10 / 6e-11 /
    1.5e-10 without. The threshold 2e-4 sits 6x below the smallest of the former, and the gap
    required (1e4) is over 1e6 smaller than the measured one.
    """
    diff_warm, noise_warm = _sdm_difference(True)
    diff_cold, _ = _sdm_difference(False)
    assert noise_warm == 0.0
    assert diff_warm > 2e-4, f"mask changes the output by only {diff_warm:.2e}"
    assert diff_warm > 1e4 * diff_cold, (diff_warm, diff_cold)
