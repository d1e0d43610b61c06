"""What is specific to Pix2Pix, SPADE and OASIS: both networks train, loss terms, optimisers, EMA statistics.

The shared contract (generate errors, seeding, checkpoints, bf16, golden values) is tests/test_contract.py.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_phantom, tiny_trainer

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
    dm = tiny_phantom(batch_size=4, depth=8)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("cls", [Pix2Pix, SPADE, OASIS])
def test_one_step_updates_both_networks_and_logs_every_term(cls, phantom):
    torch.manual_seed(0)
    model = tiny(cls)
    before = [p.detach().clone() for p in (*model.generator.parameters(), *model.discriminator.parameters())]
    trainer = tiny_trainer(fast_dev_run=1)
    trainer.fit(model, datamodule=phantom)
    after = [p.detach() for p in (*model.generator.parameters(), *model.discriminator.parameters())]
    assert sum(not torch.equal(a, b) for a, b in zip(before, after)) > len(before) // 2  # G and D updated
    metrics = trainer.callback_metrics
    assert {"train/d_loss", "train/g_loss"} <= set(metrics)
    assert set(model.loss_weights) >= {k.removeprefix("train/") for k in metrics} - {"d_loss", "g_loss"}


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
    assert tiny(SPADE).vgg is None and tiny(SPADE).loss_weights["g_vgg"] == 0.0


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


def test_oasis_recompute_mid_epoch_with_persistent_workers():
    """Validation mid-epoch recomputes the EMA statistics without disturbing the training iterator.

    With one persistent worker, iterating the fit loop's own loader again would reset its worker
    mid-epoch (the old behaviour); the training loop must still see every batch of the epoch once.
    """
    import lightning as L
    from torch.utils.data import DataLoader

    dm = tiny_phantom(batch_size=2, depth=8)
    dm.setup("fit")
    dataset = dm.train_dataloader().dataset

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(dataset, batch_size=2, shuffle=True, num_workers=1, persistent_workers=True)

        def val_dataloader(self):
            return DataLoader(dataset, batch_size=2)

    seen: list[int] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.extend(int(i) for i in batch["slice_index"])

    model = tiny(OASIS, ema_bn_batches=2)
    calls = []
    original = model.recompute_ema_batch_norm
    model.recompute_ema_batch_norm = lambda b, n: calls.append(original(b, n)) or calls[-1]
    trainer = tiny_trainer(
        max_epochs=1, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=0, callbacks=[Record()]
    )
    trainer.fit(model, datamodule=Data())  # 4 batches: validation after batch 2 (mid-epoch) and 4
    assert len(calls) == 2 and all(c == 2 for c in calls)
    assert sorted(seen) == sorted(int(dataset[i]["slice_index"]) for i in range(len(dataset)))
