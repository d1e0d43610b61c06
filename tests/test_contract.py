"""The contract every synthesis method keeps, run for each one medsynth.models exports.

Methods are discovered (every concrete :class:`SynthesisModule` in ``medsynth.models.__all__``),
so a new method is covered as soon as it is exported and has an entry in ``tests/conftest.py``
``TINY``; without one, ``test_every_method_has_tiny_settings`` fails. Every diffusion method runs
twice: with its default process (Improved DDPM) and as a rectified flow (``process="rflow"``,
ids ``<Method>-rflow``), since a flow is the same class with another process.

Covered: generate() output and errors, seeding and per-slice generators (batch independence),
fast_dev_run on the phantom, checkpoint round trip, bf16-mixed training on CPU, and golden
values (first training losses and sampled pixels of a seeded tiny model) so that an upgrade of
torch or diffusers that changes results fails here. Regenerate the golden values with
``PYTHONPATH=. python tests/test_contract.py`` after a change that is meant to alter them, and
say why in the commit.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import pytest
import torch
from conftest import TINY, TINY_SIZE, tiny_model, tiny_phantom, tiny_trainer
from torch import nn

import medsynth.models
from medsynth.models.base import SynthesisModule, is_method
from medsynth.models.ddpm import DiffusionModel

METHODS = [
    getattr(medsynth.models, n) for n in medsynth.models.__all__ if is_method(getattr(medsynth.models, n))
]
ids = [c.__name__ for c in METHODS]
#: The rectified-flow variant of a diffusion method: extra constructor arguments.
FLOW: dict[str, Any] = {"process": "rflow"}
#: (class, extra constructor arguments): every method, then each diffusion method as a flow.
CASES = [(c, {}) for c in METHODS] + [(c, FLOW) for c in METHODS if issubclass(c, DiffusionModel)]


def case_id(cls: type, extra: dict[str, Any]) -> str:
    return cls.__name__ + ("-rflow" if extra == FLOW else "")


case_ids = [case_id(*c) for c in CASES]
#: The second sampler whose pixels are pinned, per process: diffusers' DPM-Solver++ for Improved
#: DDPM, Heun with an odd count (Heun steps and a last Euler step) for a flow.
SECOND_SAMPLER: dict[str, tuple[str, dict[str, Any]]] = {
    "ddpm": ("pixels_dpm++", {"sampler": "dpm++"}),
    "rflow": ("pixels_heun", {"sampler": "heun", "num_steps": 3}),
}

# Golden values, from `PYTHONPATH=. python tests/test_contract.py` (torch 2.14.1, diffusers 0.42.1,
# CPU). "loss": the train/* metrics after the first step of a seeded fast_dev_run; "pixels" (and
# SECOND_SAMPLER's for the diffusion methods: DPM-Solver++ is diffusers'; Heun for the flows): mean
# of generate() and four pixels, for a seeded, perturbed (perturbed_model) model on the phantom's first validation
# masks with generator seed 0. Relative tolerance 1e-4 (losses also absolute 1e-4): float32 reductions vary by ~1e-6 across
# CPUs and thread counts, an algorithmic change moves these by far more.
GOLDEN: dict[str, dict[str, Any]] = {
    "ConditionalDDPM": {
        "loss": {"train/loss": 1.024512, "train/loss_simple": 1.016389, "train/loss_vlb": 0.008123},
        "pixels": [0.54506, 0.0, 0.011753, 1.0, 0.047732],
        "pixels_dpm++": [0.547312, 0.0, 0.0, 1.0, 0.0],
    },
    "MaskGuidedDDPM": {
        "loss": {"train/loss": 1.034278, "train/loss_simple": 1.022126, "train/loss_vlb": 0.012152},
        "pixels": [0.549564, 0.0, 0.004111, 1.0, 0.006944],
        "pixels_dpm++": [0.551067, 0.0, 0.0, 1.0, 0.0],
    },
    "EdgeGuidedDDPM": {
        "loss": {"train/loss": 1.034206, "train/loss_simple": 1.022495, "train/loss_vlb": 0.011711},
        "pixels": [0.513261, 0.0, 0.023783, 1.0, 0.00844],
        "pixels_dpm++": [0.515834, 0.0, 0.0, 1.0, 0.0],
    },
    "SDM": {
        "loss": {"train/loss": 1.06264, "train/loss_simple": 1.054776, "train/loss_vlb": 0.007865},
        "pixels": [0.427581, 0.0, 0.004839, 1.0, 0.001345],
        "pixels_dpm++": [0.429028, 0.0, 0.0, 1.0, 0.0],
    },
    "Pix2Pix": {
        "loss": {
            "train/d_fake": 0.745533,
            "train/d_loss": 0.682916,
            "train/d_real": 0.620299,
            "train/g_gan": 0.798449,
            "train/g_l1": 1.051185,
            "train/g_loss": 105.916985,
        },
        "pixels": [0.54727, 0.534952, 0.512072, 0.55512, 0.557741],
    },
    "SPADE": {
        "loss": {
            "train/d_fake": 1.052397,
            "train/d_loss": 2.006673,
            "train/d_real": 0.954275,
            "train/g_feat": 1.370662,
            "train/g_gan": 0.05006,
            "train/g_loss": 13.756681,
        },
        "pixels": [0.870344, 0.992547, 0.975373, 0.997101, 0.913239],
    },
    "OASIS": {
        "loss": {
            "train/d_fake": 2.815829,
            "train/d_labelmix": 0.000504,
            "train/d_loss": 5.750527,
            "train/d_real": 2.929658,
            "train/g_adv": 2.945399,
            "train/g_loss": 2.945399,
        },
        "pixels": [0.246821, 0.98691, 0.2721, 0.349858, 0.244742],
    },
    # The diffusion methods as rectified flows (process="rflow"): the loss is the velocity MSE;
    # "pixels" sample with Euler (the flow's default, num_steps 2), "pixels_heun" with Heun at 3.
    "ConditionalDDPM-rflow": {
        "loss": {"train/loss": 1.817149},
        "pixels": [0.549467, 0.651956, 0.0, 1.0, 0.456359],
        "pixels_heun": [0.550107, 0.658944, 0.0, 1.0, 0.45346],
    },
    "MaskGuidedDDPM-rflow": {
        "loss": {"train/loss": 1.877311},
        "pixels": [0.437924, 0.191951, 0.0, 1.0, 0.088238],
        "pixels_heun": [0.437801, 0.18708, 0.0, 1.0, 0.101044],
    },
    "EdgeGuidedDDPM-rflow": {
        "loss": {"train/loss": 1.834739},
        "pixels": [0.525494, 0.182159, 0.0, 1.0, 0.397049],
        "pixels_heun": [0.5255, 0.181494, 0.0, 1.0, 0.40789],
    },
    "SDM-rflow": {
        "loss": {"train/loss": 1.840573},
        "pixels": [0.529733, 0.149418, 0.0, 1.0, 0.49933],
        "pixels_heun": [0.529914, 0.152385, 0.0, 1.0, 0.517841],
    },
}
PIXELS = ((0, 16, 16), (0, 8, 20), (1, 20, 11), (1, 25, 6))


@pytest.fixture(scope="module")
def masks() -> torch.Tensor:
    """The phantom's first two validation masks, ``[2, 32, 32]``: a body and organs."""
    dm = tiny_phantom(batch_size=2)
    dm.setup("fit")
    return next(iter(dm.val_dataloader()))["mask"]


def options(cls: type) -> dict[str, Any]:
    return dict(TINY[cls.__name__]["options"])


def fit_once(
    cls: type, precision: str = "32-true", extra: dict[str, Any] | None = None
) -> tuple[SynthesisModule, L.Trainer]:
    """A seeded tiny model after one fast_dev_run step (one training and one validation batch)."""
    L.seed_everything(0, verbose=False)
    model = tiny_model(cls, **(extra or {}))
    trainer = tiny_trainer(fast_dev_run=1, precision=precision)
    trainer.fit(model, datamodule=tiny_phantom())
    return model, trainer


@pytest.fixture(scope="module")
def fitted() -> Any:
    """``fitted(cls, extra) -> (model, trainer)``, fitted once per module (fast_dev_run is the slow part)."""
    cache: dict[str, tuple[SynthesisModule, L.Trainer]] = {}

    def get(cls: type, extra: dict[str, Any]) -> tuple[SynthesisModule, L.Trainer]:
        key = case_id(cls, extra)
        if key not in cache:
            cache[key] = fit_once(cls, extra=extra)
        return cache[key]

    return get


def perturbed_model(cls: type, extra: dict[str, Any] | None = None) -> SynthesisModule:
    """A seeded tiny model with every weight moved by seeded noise (std 0.05).

    The diffusion UNets zero their output layer at initialisation (Improved DDPM), so an untouched
    model predicts zero noise and every variant would sample the same pixels; the perturbation
    makes the samples depend on every layer of the network, EMA copy included.
    """
    L.seed_everything(0, verbose=False)
    model = tiny_model(cls, **(extra or {}))
    g = torch.Generator().manual_seed(0)
    # The trained networks first, then the EMA copy (the order the golden values were drawn in).
    ema = getattr(model, "ema", None)
    averaged = {id(p) for p in ema.parameters()} if ema is not None else set()
    params = [p for p in model.parameters() if id(p) not in averaged]
    if ema is not None:
        params += list(ema.shadow.parameters())
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def sampled_pixels(
    cls: type, masks: torch.Tensor, extra: dict[str, Any] | None = None, **opts: Any
) -> list[float]:
    opts = {**options(cls), **opts}
    out = perturbed_model(cls, extra).generate(masks, generator=torch.Generator().manual_seed(0), **opts)
    return [float(out.mean()), *(float(out[b, 0, i, j]) for b, i, j in PIXELS)]


def second_sampler(cls: type, extra: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The key and generate() options of the second pinned sampler, or None for a GAN."""
    if "sampler" not in cls.generate_options:
        return None
    return SECOND_SAMPLER[extra.get("process", "ddpm")]


def golden_values(cls: type, masks: torch.Tensor, extra: dict[str, Any]) -> dict[str, Any]:
    """The values GOLDEN pins for ``cls`` with ``extra`` (see the comment there)."""
    _, trainer = fit_once(cls, extra=extra)
    loss = {
        k: round(float(v), 6) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("train/")
    }
    out = {"loss": loss, "pixels": [round(v, 6) for v in sampled_pixels(cls, masks, extra)]}
    second = second_sampler(cls, extra)
    if second is not None:
        out[second[0]] = [round(v, 6) for v in sampled_pixels(cls, masks, extra, **second[1])]
    return out


def test_methods_are_discovered() -> None:
    """Discovery finds the seven published methods (a broken __all__ or marker would shrink it)."""
    assert set(ids) >= {
        "ConditionalDDPM",
        "MaskGuidedDDPM",
        "EdgeGuidedDDPM",
        "SDM",
        "Pix2Pix",
        "SPADE",
        "OASIS",
    }
    assert not any(c.__name__ in ("SynthesisModule", "DiffusionModel", "GANModule") for c in METHODS)


@pytest.mark.parametrize("cls,extra", CASES, ids=case_ids)
def test_every_method_has_tiny_settings(cls: type, extra: dict[str, Any]) -> None:
    assert cls.__name__ in TINY, f"add {cls.__name__} to TINY in tests/conftest.py"
    key = case_id(cls, extra)
    assert key in GOLDEN, f"add golden values for {key}: PYTHONPATH=. python {__file__}"


@pytest.mark.parametrize("cls,extra", CASES, ids=case_ids)
def test_generate_output_and_errors(cls: type, extra: dict[str, Any], masks: torch.Tensor) -> None:
    model = tiny_model(cls, **extra)
    out = model.generate(masks, generator=torch.Generator().manual_seed(0), **options(cls))
    assert out.shape == (2, 1, TINY_SIZE, TINY_SIZE) and out.dtype == torch.float32 and out.std() > 0
    for name, value in (("num_steps", 3), ("sampler", "ddim"), ("guidance_scale", 2.0)):
        if name not in cls.generate_options:
            with pytest.raises(ValueError, match=name):
                model.generate(masks, **{name: value})
    bad = {
        "shape": masks[0],  # [H, W]
        "dtype": masks.float(),
        "values": masks + model.num_classes,
        "image_size": masks[:, :16, :16],
    }
    for what, mask in bad.items():
        with pytest.raises(ValueError, match=r"must|image_size|values"):
            model.generate(mask, **options(cls))
        assert what  # the loop ran for every kind of bad mask
    with pytest.raises(ValueError, match="generator"):
        model.generate(masks, generator=[torch.Generator()], **options(cls))  # 1 generator for 2 slices


@pytest.mark.parametrize("cls,extra", CASES, ids=case_ids)
def test_seeding_and_batch_independence(cls: type, extra: dict[str, Any], masks: torch.Tensor) -> None:
    """Same generator -> same output; slice i with its own generator is the same alone or in a batch.

    Tolerance 1e-5: a convolution over a batch of 2 and of 1 may sum in another order (~1e-7).
    """
    model = tiny_model(cls, **extra)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = model.generate(masks, generator=g(0), **options(cls))
    torch.testing.assert_close(model.generate(masks, generator=g(0), **options(cls)), a, rtol=0, atol=0)
    c = model.generate(masks, generator=g(1), **options(cls))
    assert (not torch.equal(a, c)) == TINY[cls.__name__][
        "stochastic"
    ]  # a method without randomness ignores it
    batch = model.generate(masks, generator=[g(10), g(11)], **options(cls))
    alone = model.generate(masks[1:], generator=[g(11)], **options(cls))
    torch.testing.assert_close(batch[1:], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls,extra", CASES, ids=case_ids)
def test_fast_dev_run_trains(cls: type, extra: dict[str, Any], fitted: Any) -> None:
    """One step changes the weights and logs finite train/ losses (val/ too where a method has one).

    Only "some weights changed": a diffusion UNet's zero-initialised output layer blocks the
    gradient to every earlier layer on the first step.
    """
    model, trainer = fitted(cls, extra)
    fresh = (L.seed_everything(0, verbose=False), tiny_model(cls, **extra))[1]
    changed = [not torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters())]
    assert any(changed)
    train = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    assert train and all(torch.isfinite(v) for v in train.values())
    assert all(k.split("/")[0] in ("train", "val") for k in trainer.callback_metrics)


@pytest.mark.parametrize("cls,extra", CASES, ids=case_ids)
def test_checkpoint_round_trip(
    cls: type, extra: dict[str, Any], fitted: Any, masks: torch.Tensor, tmp_path
) -> None:
    """A checkpoint saved by the Trainer loads with load_from_checkpoint and generates identically
    (a flow's process comes back from its hyperparameters)."""
    model, trainer = fitted(cls, extra)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = cls.load_from_checkpoint(path)
    assert type(loaded) is cls and loaded.hparams == model.hparams
    assert type(getattr(loaded, "diffusion", None)) is type(getattr(model, "diffusion", None))
    a = model.generate(masks, generator=torch.Generator().manual_seed(3), **options(cls))
    b = loaded.generate(masks, generator=torch.Generator().manual_seed(3), **options(cls))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("cls,extra", CASES, ids=case_ids)
def test_bf16_mixed_fit_step(cls: type, extra: dict[str, Any]) -> None:
    """bf16-mixed on CPU: the convolutions run in bfloat16 (autocast is active) and losses stay finite."""
    seen: set[torch.dtype] = set()
    L.seed_everything(0, verbose=False)
    model = tiny_model(cls, **extra)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype) if mod.training else None)
    trainer = tiny_trainer(fast_dev_run=1, precision="bf16-mixed", limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_phantom())
    assert torch.bfloat16 in seen
    assert all(torch.isfinite(v) for v in trainer.callback_metrics.values())


@pytest.mark.parametrize("cls,extra", CASES, ids=case_ids)
def test_golden_values(cls: type, extra: dict[str, Any], fitted: Any, masks: torch.Tensor) -> None:
    """First training losses and sampled pixels match the pinned values (module docstring)."""
    want = GOLDEN[case_id(cls, extra)]
    _, trainer = fitted(cls, extra)
    loss = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    assert set(loss) == set(want["loss"])
    for k, v in want["loss"].items():
        # abs 1e-4: float32 reductions differ with the thread count; measured 5e-5 on SPADE's
        # train/g_gan (a hinge term near 0.05) between 1 and 2 threads. Algorithmic changes move more.
        assert math.isclose(loss[k], v, rel_tol=1e-4, abs_tol=1e-4), (k, loss[k], v)
    second = second_sampler(cls, extra)
    assert set(want) == {"loss", "pixels"} | ({second[0]} if second else set())
    for key, opts in (("pixels", {}), second or ("pixels", {})):
        got = sampled_pixels(cls, masks, extra, **opts)
        for g, w in zip(got, want[key]):
            assert math.isclose(g, w, rel_tol=1e-4, abs_tol=1e-6), (key, got, want[key])


class _Stub(SynthesisModule):
    """A method whose raw output leaves [0, 1] and is float64: generate() must clamp and cast."""

    def _generate(self, mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return (mask[:, None].double() - 8.0) / 4.0  # [B, 1, H, W] in [-2, 2]


def test_generate_clamps_and_casts() -> None:
    mask = torch.arange(17).repeat(2, 16)[:, :256].reshape(2, 16, 16) % 17
    out = _Stub(image_size=16).generate(mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ((mask[:, None].float() - 8) / 4).clamp(0, 1))
    assert is_method(_Stub) and not is_method(SynthesisModule)


if __name__ == "__main__":
    import pprint
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    torch.set_num_threads(1)
    m = tiny_phantom(batch_size=2)
    m.setup("fit")
    first = next(iter(m.val_dataloader()))["mask"]
    pprint.pprint({case_id(c, e): golden_values(c, first, e) for c, e in CASES}, width=110, sort_dicts=False)
