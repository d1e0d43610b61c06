"""Speed work (issue 11), each against an independent reference: the condition cache against the
uncached computation, the sampler loop against the pre-change outputs (golden values), precision
against the fp32 default, and the GPU options against the default layout."""

from __future__ import annotations

import importlib.util
import itertools
import re
from collections import Counter
from pathlib import Path

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medsynth.callbacks import SynthesisImageGrid, SynthesisMetrics
from medsynth.commands.synthesize import build_parser
from medsynth.data import PhantomDataModule
from medsynth.diffusion import SAMPLERS, ClassifierFreeGuidance, GaussianDiffusion, TimestepMap, sample
from medsynth.models import SDM, ConditionalDDPM, EdgeGuidedDDPM, MaskGuidedDDPM
from medsynth.models.base import SynthesisModule, check_mask
from medsynth.nn import DiffusionUNet, SPADEDiffusionUNet
from medsynth.nn.spade import LabelPatches, SPADENorm, _unique_rows
from medsynth.synthesis import read_label_case, synthesize_volume

TINY = dict(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,))
SDM_TINY = dict(TINY, spade_hidden=8)
METHODS = {"conditional": ConditionalDDPM, "mask": MaskGuidedDDPM, "edge": EdgeGuidedDDPM, "sdm": SDM}
REPO = Path(__file__).resolve().parents[1]


def make(cls: type, **kwargs):
    """A tiny model whose (live and EMA) weights are perturbed: zero-initialised convs would make
    every output the same constant. SDM's null condition counts as trained (guidance is used)."""
    torch.manual_seed(0)
    model = cls(32, **(SDM_TINY if cls is SDM else TINY), **kwargs)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn(p.shape))  # logical order, whatever the layout
    model.ema.shadow.load_state_dict(model.net.state_dict())
    if cls is SDM:
        model.null_trained.fill_(True)
    return model


def make_mask() -> torch.Tensor:
    mask = torch.zeros(2, 32, 32, dtype=torch.long)  # [B, H, W]
    mask[:, 8:24, 8:20] = 6
    mask[1, 2:10, 20:30] = 1
    mask[:, 26:, :] = 16
    return mask


def make_image() -> torch.Tensor:
    return torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(5))


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(2)


# ---------------------------------------------------------------------------- condition cache
def _branch_calls(model, monkeypatch) -> tuple[list[str], list]:
    """Count the runs of the time-independent part: the encoder branch, or every SPADE's
    modulation (its convs over the label map, or the patch lookup that replaces them)."""
    calls: list[str] = []
    net = model.ema.shadow
    if net.cond_encoder is not None:
        return calls, [net.cond_encoder.register_forward_hook(lambda *_: calls.append("branch"))]
    for name in ("modulation", "lookup"):
        original = getattr(SPADENorm, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(SPADENorm, name, counted)
    return calls, []


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("name", ["mask", "edge", "sdm"])
def test_condition_cache_matches_uncached_sampling(name: str, sampler: str, monkeypatch) -> None:
    model, mask, steps = make(METHODS[name]), make_mask(), 4
    calls, hooks = _branch_calls(model, monkeypatch)
    per_step = 1 if name != "sdm" else sum(isinstance(m, SPADENorm) for m in model.ema.shadow.modules())
    for scale in (None, 1.0, 2.0) if name == "sdm" else (None,):
        kw = {} if scale is None else {"guidance_scale": scale}
        model.condition_cache = False
        calls.clear()
        ref = model.generate(mask, sampler=sampler, num_steps=steps, generator=seeded(), **kw)
        assert len(calls) == steps * per_step  # recomputed at every step
        model.condition_cache = True
        calls.clear()
        out = model.generate(mask, sampler=sampler, num_steps=steps, generator=seeded(), **kw)
        assert len(calls) == per_step  # once per generate() call
        if name == "sdm":  # the blocky mask's few distinct patches take the lookup at every size
            assert set(calls) == {"lookup"}
        assert ref.std() > 1e-3  # not a constant image
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    for h in hooks:
        h.remove()


@pytest.mark.parametrize("name", ["conditional", "mask", "edge", "sdm"])
def test_encoded_condition_gives_the_same_loss_and_gradients(name: str) -> None:
    # Training passes the raw condition; the cache is a rewrite of the same forward: same loss and
    # gradients (the parameters of the branch/SPADE convs get theirs through the cached tensors).
    model = make(METHODS[name])
    net, d = model.net, model.diffusion
    x0, t = make_image() * 2 - 1, torch.tensor([3, 640])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    kwargs = model.model_kwargs(make_mask())
    params = [p for p in net.parameters()]

    def loss_and_grads(kw):
        loss = d.training_losses(net, x0, t, kw, noise)["loss"].sum()
        return loss, torch.autograd.grad(loss, params, allow_unused=True)

    ref, ref_g = loss_and_grads(kwargs)
    out, out_g = loss_and_grads(net.encode_condition(**kwargs))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    for a, b in zip(out_g, ref_g):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_encoded_condition_errors() -> None:
    net = DiffusionUNet(32, cond_channels=17, **TINY)
    x, t, cond = torch.randn(2, 1, 32, 32), torch.tensor([1, 2]), torch.rand(2, 17, 32, 32)
    feats = net.encode_condition(cond=cond)["cond_features"]
    with pytest.raises(ValueError, match="not both"):
        net(x, t, cond=cond, cond_features=feats)
    with pytest.raises(ValueError, match="batch 1"):
        net(x[:1], t[:1], cond_features=feats)  # a cache built for another batch
    with pytest.raises(ValueError, match="no conditioning encoder"):
        DiffusionUNet(32, **TINY).encode_condition(cond=cond)
    spade = SPADEDiffusionUNet(32, label_nc=17, spade_hidden=4, **TINY)
    segf = spade.encode_condition(seg=cond)["seg_features"]
    with pytest.raises(ValueError, match="decoder blocks"):
        spade(x, t, seg_features=segf[:-1])
    norm = SPADENorm(4, 17, hidden=4, norm="group")
    with pytest.raises(ValueError, match="does not fit"):
        norm(torch.randn(2, 4, 8, 8), modulation=norm.encode(cond, (16, 16)))
    with pytest.raises(ValueError, match="seg"):
        norm(torch.randn(2, 4, 8, 8))


def _onehot_blocks(batch: int, size: int, block: int, seed: int) -> torch.Tensor:
    """One-hot ``[B, 17, size, size]`` of random labels on ``block``-pixel squares."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 17, (batch, size // block, size // block), generator=g)
    labels = labels.repeat_interleave(block, 1).repeat_interleave(block, 2)
    return torch.nn.functional.one_hot(labels, 17).permute(0, 3, 1, 2).float()


def test_label_patches_count_the_distinct_neighbourhoods() -> None:
    """Closed forms: a constant h x w mask (h, w >= 5) has 9 distinct zero-padded 3x3 patches
    (4 corners, 4 edges, the interior) and 25 distinct 5x5 neighbourhoods (5 kinds of position
    per axis: on the border, one in, further in, and the mirror two); two constant images of
    different labels double both; a null condition (all zeros, guidance) adds 1 patch (zero
    padding reads as zeros too) and 9 neighbourhoods (the gamma/beta conv's padding is zero, not
    the all-zero patch's activation: 3 kinds of position per axis)."""
    one = torch.zeros(1, 17, 8, 8)
    one[:, 3] = 1
    other = torch.zeros(1, 17, 8, 8)
    other[:, 5] = 1
    p = LabelPatches.build(one, (8, 8))
    assert (p.labels.shape[0], p.neighbours.shape[0], p.size, p.num_labels) == (9, 25, (8, 8), 17)
    p = LabelPatches.build(one, (5, 7))  # resized (nearest) first
    assert (p.labels.shape[0], p.neighbours.shape[0]) == (9, 25)
    both = LabelPatches.build(torch.cat([one, other, torch.zeros_like(one)]), (8, 8))
    assert (both.labels.shape[0], both.neighbours.shape[0]) == (19, 59)
    n = both.labels.shape[0]
    corner = both.neighbours[both.index[1, 0, 0]].view(3, 3)  # top-left pixel: 5 neighbours outside
    assert (corner[0] == n).all() and (corner[:, 0] == n).all() and (corner[1:, 1:] < n).all()
    assert (both.labels[both.neighbours[both.index[1, 4, 4], 4]] == 5).all()  # interior of "other"
    assert (both.labels[both.neighbours[both.index[2, 4, 4]]] == 17).all()  # null: id K everywhere


def test_label_patches_give_up_where_the_convs_are_cheaper() -> None:
    """None for per-pixel label noise (more distinct patches than PATCH_LOOKUP_MAX_FRACTION of the
    pixels), for soft label maps and for OASIS-style noise channels (not one-hot); a SPADENorm
    refuses LabelPatches of another label count (the wrong size: the float64 test below)."""
    assert LabelPatches.build(_onehot_blocks(2, 32, 1, 0), (32, 32)) is None  # per-pixel noise
    blocks = _onehot_blocks(2, 32, 8, 0)
    assert LabelPatches.build(blocks, (32, 32)) is not None
    assert LabelPatches.build(0.5 * blocks, (32, 32)) is None  # soft
    assert LabelPatches.build(torch.cat([blocks, torch.randn(2, 1, 32, 32)], 1), (32, 32)) is None
    norm = SPADENorm(8, 16, hidden=8, norm="group")
    with pytest.raises(ValueError, match="label_nc=16"):
        norm.lookup(LabelPatches.build(blocks, (32, 32)))


@pytest.mark.parametrize("base", [5, 3000])
def test_unique_rows_matches_torch_unique(base: int) -> None:
    """The digit-packing dedupe against ``torch.unique(dim=0)``: same distinct rows, and every row
    is its distinct row at its index; base 3000 (3000^9 > 2^62) takes the re-ranking path."""
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, base, (50, 9), generator=g)[torch.randint(0, 50, (2000,), generator=g)]
    distinct, inverse = _unique_rows(rows, base)
    ref = torch.unique(rows, dim=0)
    assert distinct.shape == ref.shape
    assert torch.equal(torch.unique(distinct, dim=0), ref)
    assert torch.equal(distinct[inverse], rows)


@pytest.mark.parametrize("size", [(32, 32), (16, 16), (8, 8), (6, 10)])
def test_spade_lookup_matches_the_convs_in_float64(size: tuple[int, int]) -> None:
    """SPADENorm.encode with LabelPatches against the convs run in float64 on the same weights:
    blocky masks, a null condition in the batch, every level's size of a 32-px UNet and a
    non-square one (the ring of padding ids must stand for the gamma/beta conv's zero padding)."""
    torch.manual_seed(0)
    norm = SPADENorm(12, 17, hidden=16, norm="group")
    seg = torch.cat([_onehot_blocks(2, 32, 4, 1), torch.zeros(1, 17, 32, 32)])  # [3, 17, 32, 32]
    patches = LabelPatches.build(seg, size, max_fraction=1.0)  # the smallest sizes are all edges
    scale, beta = norm.encode(seg, size, patches)
    ref = SPADENorm(12, 17, hidden=16, norm="group").double()
    ref.load_state_dict(norm.state_dict())
    gamma64, beta64 = ref.modulation(seg.double(), size)
    assert scale.is_contiguous() and beta.is_contiguous() and beta.shape == (3, 12, *size)
    torch.testing.assert_close(scale.double(), 1 + gamma64, atol=1e-5, rtol=0)
    torch.testing.assert_close(beta.double(), beta64, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not for size"):
        norm.encode(seg, (size[0] + 1, size[1]), patches)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sdm_sampling_with_the_lookup_matches_the_convs(sampler: str, monkeypatch) -> None:
    """Whole chains (4 steps; no guidance, 1.0 and 2.0; two noise seeds) with SPADE's patch lookup
    against the same chains with the convs over the label map (``spade_lookup = False``). Only
    float rounding differs (modulation maps: <= 1e-6), and the chain amplifies it: over 3 weight
    seeds x 3 noise seeds x the three samplers x three scales the largest difference measured was
    6.6e-5 (outputs in [0, 1]). The test allows 5e-4, 7.6x that and 0.05 % of the range."""
    model, mask = make(SDM), make_mask()
    calls: list[int] = []
    lookup = SPADENorm.lookup
    monkeypatch.setattr(SPADENorm, "lookup", lambda self, p: calls.append(1) or lookup(self, p))
    for scale, seed in itertools.product((None, 1.0, 2.0), (2, 3)):
        kw = {} if scale is None else {"guidance_scale": scale}
        calls.clear()
        out = model.generate(
            mask, sampler=sampler, num_steps=4, generator=torch.Generator().manual_seed(seed), **kw
        )
        assert calls  # the lookup ran
        model.ema.shadow.spade_lookup = False
        calls.clear()
        ref = model.generate(
            mask, sampler=sampler, num_steps=4, generator=torch.Generator().manual_seed(seed), **kw
        )
        model.ema.shadow.spade_lookup = True
        assert not calls
        assert ref.std() > 1e-3
        torch.testing.assert_close(out, ref, atol=5e-4, rtol=0)


def test_guidance_wrapper_encodes_both_passes_once() -> None:
    def model(x, t, seg):  # eps = x + 3 mean(seg); v = 0.1 (cond) or -0.9 (null)
        m = seg.mean(dim=(1, 2, 3), keepdim=True)
        return torch.cat([x + 3 * m, torch.where(m > 0, 0.1, -0.9).expand_as(x)], dim=1)

    x, t, seg = torch.randn(2, 1, 2, 2), torch.tensor([5, 6]), torch.rand(2, 3, 2, 2)
    for scale in (1.0, 2.0):
        cfg = ClassifierFreeGuidance(model, scale)
        enc = cfg.encode_condition(seg=seg)
        assert enc["guided"]["seg"].shape[0] == (2 if scale == 1.0 else 4)  # [2B] under guidance
        torch.testing.assert_close(cfg(x, t, **enc), cfg(x, t, seg=seg), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not both"):
        cfg(x, t, seg=seg, **enc)


# Outputs and training losses of the code before this change (main at f63e94b, same machine
# type): the sampler and table changes keep the DDPMs' bit for bit; SDM's differ by float rounding
# (~1e-7 relative: SPADENorm's multiply-add is one addcmul now); compared here to rtol 1e-6.
GOLDEN_SAMPLES = {
    ("conditional", "ddpm", None): 1089.4061001241207,
    ("conditional", "ddim", None): 1129.8124248981476,
    ("conditional", "dpm++", None): 1127.5362777113914,
    ("mask", "ddpm", None): 1073.3972163498402,
    ("mask", "ddim", None): 1094.5174112021923,
    ("mask", "dpm++", None): 1095.3575618863106,
    ("edge", "ddpm", None): 1059.0250931084156,
    ("edge", "ddim", None): 1106.942399442196,
    ("edge", "dpm++", None): 1107.4358277022839,
    ("sdm", "ddpm", None): 1074.0400337576866,
    ("sdm", "ddpm", 2.0): 1072.9397142231464,
    ("sdm", "ddim", None): 1097.4772071242332,
    ("sdm", "ddim", 2.0): 1094.0957599878311,
    ("sdm", "dpm++", None): 1098.1353488862514,
    ("sdm", "dpm++", 2.0): 1095.5691300332546,
}
GOLDEN_TRAIN = {"conditional": 1.010714054107666, "mask": 1.1162971258163452}
GOLDEN_TRAIN.update(edge=1.1019728183746338, sdm=1.1460771560668945)


@pytest.mark.parametrize("name", ["conditional", "mask", "edge", "sdm"])
def test_sampling_and_training_match_the_code_before_the_change(name: str) -> None:
    model, mask = make(METHODS[name]), make_mask()
    for (n, sampler, scale), ref in GOLDEN_SAMPLES.items():
        if n == name:
            out = model.generate(mask, sampler=sampler, num_steps=5, guidance_scale=scale, generator=seeded())
            np.testing.assert_allclose(
                out.double().sum().item(), ref, rtol=1e-6, err_msg=f"{sampler} {scale}"
            )
    torch.manual_seed(3)
    loss = model._losses(model.net, {"image": make_image(), "mask": mask}, training=True)["loss"]
    np.testing.assert_allclose(loss.item(), GOLDEN_TRAIN[name], rtol=1e-6)


# ---------------------------------------------------------------------------- sampler loop
def _count_host_work(monkeypatch) -> Counter:
    """Count what moves data between host and device: .item(), int(), .tolist(), from_numpy,
    TimestepMap construction."""
    counts: Counter = Counter()
    for attr in ("item", "__int__", "tolist"):
        orig = getattr(torch.Tensor, attr)

        def wrapped(self, *a, _orig=orig, _attr=attr, **k):
            counts[_attr] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, attr, wrapped)
    orig_from_numpy = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda a: counts.update(["from_numpy"]) or orig_from_numpy(a))
    orig_init = TimestepMap.__init__
    monkeypatch.setattr(
        TimestepMap, "__init__", lambda self, *a: counts.update(["TimestepMap"]) or orig_init(self, *a)
    )
    return counts


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_loop_has_no_per_step_host_work(monkeypatch, sampler: str) -> None:
    def model(x, t):
        return torch.cat([0.5 * x, torch.tanh(x)], dim=1)

    d = GaussianDiffusion()
    sample(d, model, (2, 1, 4, 4), sampler=sampler, num_steps=3)  # the full chain builds its tables
    counts = _count_host_work(monkeypatch)
    per_run = []
    for steps in (5, 12):
        counts.clear()
        sample(d, model, (2, 1, 4, 4), sampler=sampler, num_steps=steps)
        per_run.append(dict(counts))
    assert per_run[0] == per_run[1]  # nothing grows with the number of steps
    if sampler != "dpm++":
        assert per_run[0].get("TimestepMap") == 1  # one wrapper for the respaced chain


def test_schedule_tables_stay_on_device_and_pickle_without_caches() -> None:
    import pickle

    d = GaussianDiffusion().respace(10)
    t = torch.tensor([0, 9])
    a = d._extract(d.sqrt_alphas_cumprod, t, 4)
    assert a.shape == (2, 1, 1, 1)
    np.testing.assert_array_equal(a.flatten().numpy(), d.sqrt_alphas_cumprod[[0, 9]].astype(np.float32))
    assert torch.device("cpu") in d._device_tables
    clone = pickle.loads(pickle.dumps(d))
    assert clone._device_tables == {} and clone._wrapped is None
    torch.testing.assert_close(clone._extract(clone.sqrt_alphas_cumprod, t, 4), a, rtol=0, atol=0)
    # a temporary array (not one of the tables) is gathered from the host, correctly
    tmp = np.arange(10, dtype=np.float64) * 0.5
    np.testing.assert_array_equal(d._extract(tmp, t, 1).numpy(), [0.0, 4.5])


def test_mask_values_checked_on_the_host_before_the_transfer(monkeypatch) -> None:
    model = make(ConditionalDDPM)
    batch = {"image": make_image(), "mask": make_mask()}
    bad = {"image": make_image(), "mask": make_mask() + 20}
    with pytest.raises(ValueError, match=r"0\.\.16, got 20\.\.36"):
        model.on_before_batch_transfer(bad, 0)
    with pytest.raises(ValueError, match="values must lie"):
        model._losses(model.net, bad, training=True)  # no host check: the step checks itself
    model.on_before_batch_transfer(batch, 0)

    def no_device_check(*a, **k):
        raise AssertionError("the value check ran again on the device")

    monkeypatch.setattr(torch, "aminmax", no_device_check)
    model._losses(model.net, batch, training=True)  # the host check is consumed: no aminmax
    with pytest.raises(AssertionError, match="ran again"):
        model._losses(model.net, batch, training=True)  # next batch, not host-checked: checks
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"got -1\.\.3"):
        check_mask(torch.tensor([[[-1, 3]]]))


# ---------------------------------------------------------------------------- precision
def _conv_dtypes(net: torch.nn.Module) -> tuple[list, torch.utils.hooks.RemovableHandle]:
    seen: list = []
    return seen, net.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))


def test_autocast_bf16_reaches_the_network_and_fp32_is_the_default() -> None:
    model, mask = make(MaskGuidedDDPM), make_mask()
    seen, hook = _conv_dtypes(model.ema.shadow)
    ref = model.generate(mask, sampler="ddim", num_steps=2, generator=seeded())
    assert seen and set(seen) == {torch.float32}
    seen.clear()
    with model.autocast("bf16"):
        out = model.generate(mask, sampler="ddim", num_steps=2, generator=seeded())
    assert seen and set(seen) == {torch.bfloat16} and out.dtype == torch.float32
    # bf16 rounding, not another image (a few saturated pixels of these random weights flip: mean)
    assert 0 < (out - ref).abs().mean() < 0.01
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16), model.autocast("32"):
        again = model.generate(mask, sampler="ddim", num_steps=2, generator=seeded())
    assert set(seen) == {torch.float32}
    torch.testing.assert_close(again, ref, rtol=0, atol=0)
    hook.remove()
    with pytest.raises(ValueError, match="'fp8'"):
        model.autocast("fp8")


class DtypeProbe(SynthesisModule):
    """Records the dtype of a convolution run inside generate() (autocast changes it)."""

    def __init__(self, image_size: int = 32) -> None:
        super().__init__(image_size)
        self.save_hyperparameters()
        self.conv = torch.nn.Conv2d(1, 1, 1)
        self.seen: list[torch.dtype] = []

    def _generate(self, mask, *, generator=None):
        y = self.conv(mask.float()[:, None] / 16)  # [B, 1, H, W]
        self.seen.append(y.dtype)
        return y.float()


def _slices(n: int = 2, size: int = 32) -> list[dict]:
    return [
        {"image": torch.rand(1, size, size), "mask": make_mask()[0], "case_id": "c", "slice_index": i}
        for i in range(n)
    ]


@pytest.mark.parametrize("precision,dtype", [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)])
def test_callbacks_sample_under_the_trainer_precision(precision: str, dtype: torch.dtype) -> None:
    probe = DtypeProbe()
    callbacks = [SynthesisImageGrid(num_images=1), SynthesisMetrics(metrics=("psnr",))]
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.test(probe, dataloaders=DataLoader(_slices(), batch_size=2))
    assert len(probe.seen) == 2 and set(probe.seen) == {dtype}  # one call per callback


def test_synthesize_precision(tmp_path) -> None:
    lab = np.zeros((32, 32, 2), dtype=np.uint8)
    lab[4:28, 4:28] = 16
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(lab, np.eye(4)), path)
    case = read_label_case(path)
    probe = DtypeProbe()
    for precision, dtype in ((None, torch.float32), ("32", torch.float32), ("bf16", torch.bfloat16)):
        probe.seen.clear()
        synthesize_volume(probe, case, progress=False, precision=precision)
        assert probe.seen and set(probe.seen) == {dtype}
    base = ["--checkpoint", "m.ckpt", "--input", "a.nii.gz", "--output", "out"]
    assert build_parser().parse_args(base).precision == "32"
    assert build_parser().parse_args([*base, "--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--precision", "fp8"])


# ---------------------------------------------------------------------------- GPU options
@pytest.mark.parametrize("name", ["mask", "sdm"])
def test_channels_last_gives_the_same_outputs(name: str) -> None:
    cl, ref, mask = make(METHODS[name], channels_last=True), make(METHODS[name]), make_mask()
    # conv kernels with more than one input channel and a spatial extent (the others look contiguous
    # in both layouts)
    params = [p for net in (cl.net, cl.ema.shadow) for p in net.parameters()]
    convs = [p for p in params if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not any(p.is_contiguous() for p in convs)
    # The network: the same output to float rounding (other conv kernels sum in another order).
    kw = ref.model_kwargs(mask)
    x, t = torch.randn(2, 1, 32, 32, generator=seeded()), torch.tensor([10, 900])
    torch.testing.assert_close(cl.ema.shadow(x, t, **kw), ref.ema.shadow(x, t, **kw), atol=1e-5, rtol=0)
    # Samples: the first step's x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) multiplies eps's
    # rounding by 1 / sqrt(abar_999) ~ 160, hence the looser bound.
    for sampler in ("ddim", "dpm++"):
        a = cl.generate(mask, sampler=sampler, num_steps=3, generator=seeded())
        b = ref.generate(mask, sampler=sampler, num_steps=3, generator=seeded())
        torch.testing.assert_close(a, b, atol=1e-3, rtol=0)
    batch = {"image": make_image(), "mask": mask}
    losses = []
    for m in (cl, ref):
        torch.manual_seed(4)
        losses.append(m._losses(m.net, batch, training=True)["loss"])
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=0)


def test_compile_flag_compiles_the_denoiser_and_its_ema(monkeypatch) -> None:
    # torch.compile itself is slow on CPU; that the flag reaches it is what is tested here.
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, *a, **k: compiled.append(fn) or fn)
    model = make(ConditionalDDPM, compile=True)
    owners = {fn.__self__ for fn in compiled}
    assert owners == {model.net, model.ema.shadow}
    assert make(ConditionalDDPM).hparams.compile is False and len(compiled) == 2
    out = model.generate(make_mask(), sampler="ddim", num_steps=2)
    assert out.shape == (2, 1, 32, 32)


def test_fused_adamw_only_on_cuda() -> None:
    opt = make(ConditionalDDPM).configure_optimizers()
    assert not opt.defaults["fused"]
    if torch.cuda.is_available():
        assert make(ConditionalDDPM).cuda().configure_optimizers().defaults["fused"] is True


def test_pin_memory_follows_cuda(monkeypatch) -> None:
    dm = PhantomDataModule(num_train_cases=1, num_val_cases=0, num_test_cases=0, depth=2, image_size=32)
    assert dm.train_dataloader().pin_memory == torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dm.train_dataloader().pin_memory is True


# ---------------------------------------------------------------------------- GPU benchmark
def test_gpu_benchmark_cpu_smoke(capsys) -> None:
    # The same code paths as on the GPU, at tiny sizes; prints every table. Run in this process
    # (a subprocess spent ~6 of its ~15 s importing torch and Lightning again).
    spec = importlib.util.spec_from_file_location("gpu_benchmark", REPO / "benchmarks" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    threads = torch.get_num_threads()
    try:
        gpu.main(["--cpu-smoke"])  # sets one thread, as the benchmark's smoke run does
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for heading in (
        "training throughput",
        "model FLOP utilisation",
        "sampling",
        "SDM encoding",
        "bf16 vs fp32",
        "synthesis on 1..1 devices",
    ):
        assert heading in out, out
    for method in ("ConditionalDDPM", "MaskGuidedDDPM", "EdgeGuidedDDPM", "SDM", "Pix2Pix", "SPADE", "OASIS"):
        assert method in out


def _sampling_speed_module():
    spec = importlib.util.spec_from_file_location("sampling_speed", REPO / "benchmarks" / "sampling_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(model, path: Path) -> Path:
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def test_sampling_speed_benchmark_checks_the_lookup(tmp_path, capsys) -> None:
    """sampling_speed.py's two lookup checks on a tiny SDM: the encoding's modulation maps
    (``sdm_encoding``) and a saved checkpoint's samples (``--lookup-check``) against the convs, to
    1e-5 (float rounding: the trained 30-minute SDM's samples differed by <= 1.2e-6 over 3 seeds);
    an unknown mask kind and a checkpoint of another method are refused by name."""
    bench = _sampling_speed_module()
    mask = bench.test_mask(2, 32, torch.device("cpu"), "blocks")  # [2, 32, 32], 8x8 squares
    assert torch.equal(mask, mask[:, ::8, ::8].repeat_interleave(8, 1).repeat_interleave(8, 2))
    with pytest.raises(ValueError, match="--mask must be"):
        bench.test_mask(2, 32, torch.device("cpu"), "circles")
    model = make(SDM)
    bench.sdm_encoding(model, mask, repeats=1)
    out = capsys.readouterr().out
    assert float(re.search(r"modulation maps ([0-9.e+-]+)", out).group(1)) < 1e-5, out
    bench.lookup_check(str(_save(model, tmp_path / "sdm.ckpt")), mask, seeds=2, threads=1, num_steps=10)
    rows = re.findall(r"^\s+(\d+)\s+([0-9.e+-]+)\s", capsys.readouterr().out, re.M)
    assert [r[0] for r in rows] == ["0", "1"] and all(float(r[1]) < 1e-5 for r in rows), rows
    with pytest.raises(SystemExit, match="needs an SDM checkpoint"):
        bench.lookup_check(
            str(_save(make(ConditionalDDPM), tmp_path / "ddpm.ckpt")), mask, seeds=1, threads=1
        )
