"""What is specific to SDM: defaults, mask dropout, classifier-free guidance, the fine-tuning recipe.

The shared contract (generate errors, seeding, checkpoints, bf16, golden values) is tests/test_contract.py.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import tiny_phantom, tiny_trainer

from medsynth.diffusion import ClassifierFreeGuidance
from medsynth.models import SDM
from medsynth.models.base import one_hot

TINY = dict(
    model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,), spade_hidden=8
)


def test_defaults_and_errors() -> None:
    model = SDM(32, **TINY)
    assert model.hparams.guidance_scale == 1.5 and model.hparams.drop_rate == 0.0
    assert model.hparams.lr == 1e-4 and model.hparams.ema_decay == 0.9999
    assert model.generate_options == ("num_steps", "sampler", "guidance_scale")
    with pytest.raises(ValueError, match="drop_rate"):
        SDM(32, drop_rate=1.0, **TINY)
    with pytest.raises(ValueError, match="guidance_scale"):
        SDM(32, guidance_scale=-1.0, **TINY)
    # Untrained null condition (drop_rate 0 only): the default falls back to no guidance.
    with pytest.warns(UserWarning, match="never trained"):
        den = model.denoiser(None)
    assert isinstance(den, ClassifierFreeGuidance) and den.guidance_scale == 1.0
    assert den.model is model.ema.shadow
    model.training_model_kwargs(torch.zeros(2, 4, 4, dtype=torch.long))  # drop_rate 0: still untrained
    assert not bool(model.null_trained)
    tuned = SDM(32, drop_rate=0.2, **TINY)
    tuned.training_model_kwargs(torch.zeros(2, 4, 4, dtype=torch.long))
    assert bool(tuned.null_trained) and tuned.denoiser(None).guidance_scale == 1.5
    assert "null_trained" in tuned.state_dict()  # saved with the checkpoint


def test_finetune_starts_from_weights_with_fresh_optimiser(tmp_path) -> None:
    """SDM's recipe: train with drop 0, then fine-tune with drop 0.2 at lr 2e-5 from those weights."""
    dm = tiny_phantom(batch_size=2, depth=2, num_val_cases=0, num_test_cases=0)
    stage1 = SDM(32, **TINY)
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(stage1, dm)
    ckpt = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(ckpt)
    stage2 = SDM(32, drop_rate=0.2, lr=2e-5, init_from=str(ckpt), **TINY)
    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["step"] = trainer.global_step
            seen["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
            seen["equal"] = all(
                torch.equal(a, b)
                for a, b in zip(pl_module.net.state_dict().values(), stage1.net.state_dict().values())
            )

    tiny_trainer(max_steps=1, callbacks=[Probe()]).fit(stage2, dm)
    assert seen == {"step": 0, "lr": 2e-5, "equal": True}
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        SDM(32, init_from=str(tmp_path / "missing.ckpt"), **TINY).setup("fit")


def test_mask_dropout_zeroes_whole_maps() -> None:
    torch.manual_seed(0)
    mask = torch.randint(0, 17, (400, 4, 4))
    seg = SDM(32, drop_rate=0.2, **TINY).training_model_kwargs(mask)["seg"]
    kept = seg.sum(dim=(1, 2, 3)) > 0
    # each map is either the full one-hot (16 pixels) or all zeros
    assert torch.all(seg[kept].sum(dim=(1, 2, 3)) == 16)
    assert torch.all(seg[~kept] == 0)
    rate = 1 - kept.float().mean().item()
    assert abs(rate - 0.2) < 3 * (0.2 * 0.8 / 400) ** 0.5
    torch.testing.assert_close(SDM(32, **TINY).training_model_kwargs(mask)["seg"], one_hot(mask))


def test_guidance_scale_one_equals_conditional_sampling() -> None:
    model = SDM(32, **TINY)
    with torch.no_grad():
        for p in model.ema.shadow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mask = torch.zeros(1, 32, 32, dtype=torch.long)
    mask[:, 8:24, 8:24] = 6
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = model.generate(mask, sampler="ddim", num_steps=4, guidance_scale=1.0, generator=g())
    # s = 1 + 1e-9 runs the batched cond + null passes: eps_u + s (eps_c - eps_u) ~= eps_c
    b = model.generate(mask, sampler="ddim", num_steps=4, guidance_scale=1.0 + 1e-9, generator=g())
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    c = model.generate(mask, sampler="ddim", num_steps=4, guidance_scale=3.0, generator=g())
    assert not torch.allclose(a, c)
