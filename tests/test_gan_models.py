"""Pix2Pix, SPADE and OASIS LightningModules: training on the phantom, generate(), EMA statistics."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from medsynth.data import PhantomDataModule
from medsynth.models import OASIS, SPADE, GANModule, Pix2Pix
from medsynth.models.base import one_hot

SIZE = 32
TINY = {
    Pix2Pix: {"model_channels": 8, "disc_channels": 8},
    SPADE: {"model_channels": 4, "disc_channels": 8, "spade_hidden": 16, "lambda_vgg": 0.0},
    OASIS: {"model_channels": 4, "disc_channels": 8, "spade_hidden": 16, "z_dim": 8},
}


def tiny(cls, **kwargs) -> GANModule:
    return cls(image_size=SIZE, **{**TINY[cls], **kwargs})


@pytest.fixture(scope="module")
def phantom():
    dm = PhantomDataModule(
        num_train_cases=1, num_val_cases=1, num_test_cases=1, depth=8, image_size=SIZE, batch_size=4, seed=0
    )
    dm.setup("fit")
    return dm


def _trainer(**kwargs):
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


@pytest.mark.parametrize("cls", [Pix2Pix, SPADE, OASIS])
def test_fast_dev_run_and_generate(cls, phantom):
    torch.manual_seed(0)
    model = tiny(cls)
    before = [p.detach().clone() for p in (*model.generator.parameters(), *model.discriminator.parameters())]
    trainer = _trainer(fast_dev_run=1)
    trainer.fit(model, datamodule=phantom)
    after = [p.detach() for p in (*model.generator.parameters(), *model.discriminator.parameters())]
    assert sum(not torch.equal(a, b) for a, b in zip(before, after)) > len(before) // 2  # G and D updated
    metrics = trainer.callback_metrics
    assert {"train/d_loss", "train/g_loss"} <= set(metrics)
    assert set(model.loss_weights) >= {k.removeprefix("train/") for k in metrics} - {"d_loss", "g_loss"}
    assert all(torch.isfinite(v) for v in metrics.values())
    mask = next(iter(phantom.val_dataloader()))["mask"]
    out = model.generate(mask)
    assert out.shape == (mask.shape[0], 1, SIZE, SIZE) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1 and out.std() > 0
    with pytest.raises(ValueError, match="num_steps"):
        model.generate(mask, num_steps=5)
    with pytest.raises(ValueError, match="guidance_scale"):
        model.generate(mask, guidance_scale=1.5)
    with pytest.raises(ValueError, match="image_size"):
        model.generate(mask[:, :16, :16])


def test_loss_terms_weighted_and_logged():
    torch.manual_seed(0)
    model = tiny(Pix2Pix)
    real = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    fake = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    mask = torch.randint(0, 17, (2, SIZE, SIZE))
    seg = one_hot(mask, 17)
    terms = model.generator_losses(real, fake, seg, mask)
    assert terms["g_l1"].item() == pytest.approx((fake - real).abs().mean().item(), rel=1e-6)
    logits = model.discriminate(seg, fake)
    assert terms["g_gan"].item() == pytest.approx(F.softplus(-logits).mean().item(), rel=1e-5)
    assert model.weighted_sum(terms).item() == pytest.approx(
        terms["g_gan"].item() + 100 * terms["g_l1"].item()
    )
    d = model.discriminator_losses(real, fake, seg, mask)
    assert model.weighted_sum(d).item() == pytest.approx(0.5 * (d["d_real"] + d["d_fake"]).item())


def test_published_optimiser_settings():
    p2p, spade, oasis = tiny(Pix2Pix), tiny(SPADE), tiny(OASIS)
    (g, d) = p2p.configure_optimizers()
    assert g.defaults["lr"] == d.defaults["lr"] == 5e-4 and g.defaults["betas"] == (0.5, 0.999)
    (g, d) = spade.configure_optimizers()
    assert g.defaults["lr"] == pytest.approx(2.5e-4) and d.defaults["lr"] == pytest.approx(1e-3)
    assert g.defaults["betas"] == d.defaults["betas"] == (0.0, 0.9)
    (g, d) = oasis.configure_optimizers()
    assert g.defaults["lr"] == 1e-4 and d.defaults["lr"] == 4e-4 and g.defaults["betas"] == (0.0, 0.999)
    assert oasis.ema is not None and oasis.ema.decay == 0.9999 and p2p.ema is None
    assert oasis.loss_weights["d_labelmix"] == 10 and spade.loss_weights["g_feat"] == 10
    assert not any(p is q for p in g.param_groups[0]["params"] for q in oasis.ema.parameters())


def test_spade_default_needs_vgg_weights():
    with pytest.raises(ValueError, match="lambda_vgg=0") as err:
        SPADE(image_size=SIZE, model_channels=4, disc_channels=8)
    assert "vgg_weights" in str(err.value) and "IMAGENET1K_V1" in str(err.value)
    assert SPADE.__init__.__defaults__ is not None and tiny(SPADE).vgg is None


def test_oasis_generate_seeded():
    model = tiny(OASIS)
    mask = torch.randint(0, 17, (2, SIZE, SIZE))
    a = model.generate(mask, generator=torch.Generator().manual_seed(1))
    b = model.generate(mask, generator=torch.Generator().manual_seed(1))
    c = model.generate(mask, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_oasis_ema_batch_norm_recomputed():
    # Without noise (z_dim=0) the input of the first batch norm is fc(mask at the start size).
    torch.manual_seed(0)
    model = tiny(OASIS, z_dim=0)
    batches = [{"mask": torch.randint(0, 17, (3, SIZE, SIZE))} for _ in range(3)]
    shadow = model.ema.shadow
    bn = shadow.blocks[0].norm_0.norm
    bn.running_mean.fill_(7.0)
    assert model.recompute_ema_batch_norm(batches, num_batches=2) == 2
    with torch.no_grad():
        x = [shadow.fc(F.interpolate(one_hot(b["mask"], 17), size=shadow.start_size)) for b in batches[:2]]
    ref_mean = torch.stack([v.mean((0, 2, 3)) for v in x]).mean(0)
    ref_var = torch.stack([v.var((0, 2, 3), unbiased=True) for v in x]).mean(0)
    torch.testing.assert_close(bn.running_mean, ref_mean)
    torch.testing.assert_close(bn.running_var, ref_var)
    assert bn.momentum == 0.1 and not shadow.training


@pytest.mark.parametrize("cls", [Pix2Pix, OASIS])
def test_bf16_training_step(cls, phantom):
    model = tiny(cls)
    trainer = _trainer(fast_dev_run=1, precision="bf16-mixed", limit_val_batches=0)
    trainer.fit(model, datamodule=phantom)
    assert all(torch.isfinite(v) for v in trainer.callback_metrics.values())
