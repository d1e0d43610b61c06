"""GAN steps are iterations: ``max_steps=N`` gives exactly N generator and N discriminator updates,
and the step in checkpoint names, ``global_step`` and resumption counts iterations too."""

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from medsynth.data import PhantomDataModule
from medsynth.models import Pix2Pix

SIZE = 32


def _count_updates(model: Pix2Pix) -> dict[str, int]:
    """Count real parameter updates through torch's own optimiser hooks (independent of Lightning)."""
    counts = {"g": 0, "d": 0}
    original = model.configure_optimizers

    def configure():
        opt_g, opt_d = original()
        for name, opt in (("g", opt_g), ("d", opt_d)):
            opt.register_step_post_hook(lambda *_, name=name: counts.__setitem__(name, counts[name] + 1))
        return [opt_g, opt_d]

    model.configure_optimizers = configure
    return counts


def _fit(max_steps: int, tmp_path, ckpt_path=None) -> tuple[L.Trainer, dict[str, int]]:
    torch.manual_seed(0)
    model = Pix2Pix(image_size=SIZE, model_channels=4, disc_channels=4)
    counts = _count_updates(model)
    dm = PhantomDataModule(
        num_train_cases=1, num_val_cases=0, num_test_cases=0, depth=4, image_size=SIZE, batch_size=2
    )  # 2 batches per epoch: max_steps=5 crosses epochs
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1, save_last=True)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[ckpt], limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, counts


def test_max_steps_counts_generator_iterations(tmp_path):
    trainer, counts = _fit(5, tmp_path)
    assert counts == {"g": 5, "d": 5}
    assert trainer.global_step == 5
    names = sorted(p.name for p in tmp_path.glob("epoch=*.ckpt"))
    assert [n.split("step=")[1] for n in names] == ["2.ckpt", "4.ckpt"], names
    assert torch.load(tmp_path / names[-1], weights_only=False)["global_step"] == 4
    # Resuming from the step-4 checkpoint continues in iterations: 3 more to reach 7.
    trainer, counts = _fit(7, tmp_path, ckpt_path=str(tmp_path / names[-1]))
    assert counts == {"g": 3, "d": 3} and trainer.global_step == 7
