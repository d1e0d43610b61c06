"""SynthesisMetrics: values against an independent reference, invariance to batch size and to the
number of processes (2-process DDP on CPU, odd number of slices), early failures; image grid.
FRD, organ HU statistics and the memorization check the same way."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import tiny_trainer as trainer
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from torch.utils.data import DataLoader

from medsynth.callbacks import SynthesisImageGrid, SynthesisMetrics, comparison_grid, slice_seed
from medsynth.labels import CLASSES, ORGAN_IDS, PAPER_DICE_ORDER
from medsynth.metrics.frd import frd
from medsynth.models import OrganSegmenter
from medsynth.models.base import SynthesisModule
from medsynth.random import randn

SIZE = 32


class TinySynth(SynthesisModule):
    """Deterministic 'method': a fixed function of the mask plus seeded noise."""

    generate_options = ("num_steps",)

    def __init__(self) -> None:
        super().__init__(image_size=SIZE)
        self.gain = torch.nn.Parameter(torch.tensor(0.05))  # DDP needs a parameter

    def _generate(self, mask, *, generator=None, num_steps=None):
        base = mask.float()[:, None] * self.gain  # [B, 1, H, W]
        noise = randn(base.shape, generator, base.device)  # one generator per slice, or one for all
        return base + 0.1 * noise + 0.1 * (num_steps or 1)


class TinyFeatures(torch.nn.Module):
    """Small fixed feature network on [B, 1, H, W] (stand-in for Inception)."""

    feature_id = "tiny-features"

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.proj = torch.nn.Parameter(torch.randn(16, 3, generator=g, dtype=torch.float64))

    def forward(self, x):
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.double(), 4).flatten(1)  # [B, 16]
        return torch.tanh(pooled @ self.proj * 3)


def make_slices(n: int = 7) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        mask = torch.zeros(SIZE, SIZE, dtype=torch.long)
        mask[2:30, 3:29] = 16
        mask[4 + i % 3 : 16, 5:17] = 6
        mask[20:26, 18 + i % 2 : 26] = 1 + i % 4
        image = (mask.float() / 20 + 0.05 * torch.rand(SIZE, SIZE, generator=g))[None]
        out.append(
            {"image": image, "mask": mask, "case_id": f"case{i % 2}", "slice_index": torch.tensor(i // 2)}
        )
    return out


def make_segmenter() -> OrganSegmenter:
    torch.manual_seed(0)
    return OrganSegmenter(SIZE, model_channels=4)


def train_slices() -> list[dict]:
    """5 'training' slices: the masks of the first test slices with independent intensities."""
    g = torch.Generator().manual_seed(1)
    return [
        {**s, "image": (s["mask"].float() / 20 + 0.08 * torch.rand(SIZE, SIZE, generator=g))[None]}
        for s in make_slices(5)
    ]


def make_callback(segmenter, **kw) -> SynthesisMetrics:
    return SynthesisMetrics(
        metrics=("psnr", "ssim", "fid", "dice", "frd", "hu", "memorization"),
        segmenter=segmenter,
        feature_extractor=TinyFeatures(),
        num_steps=2,
        seed=3,
        train_data=train_slices(),
        **kw,
    )


def run_test(devices: int, batch_size: int, segmenter) -> dict[str, float]:
    kw = {"devices": devices}
    if devices > 1:
        # spawn, not fork: a parent that has run OpenMP-parallel ops (OMP_NUM_THREADS > 1, as in CI)
        # leaves libgomp's thread pool behind, and forked workers can hang on it (seen in CI).
        kw["strategy"] = "ddp_spawn"
    t = trainer(callbacks=[make_callback(segmenter)], **kw)
    t.test(TinySynth(), dataloaders=DataLoader(make_slices(), batch_size=batch_size, collate_fn=collate))
    return {k: float(v) for k, v in t.callback_metrics.items()}


def collate(items: list[dict]) -> dict:
    return {
        "image": torch.stack([b["image"] for b in items]),
        "mask": torch.stack([b["mask"] for b in items]),
        "case_id": [b["case_id"] for b in items],
        "slice_index": torch.stack([b["slice_index"] for b in items]),
    }


def reference(segmenter) -> dict[str, float]:
    """Independent computation: each slice generated with its own seeded generator, scikit-image
    PSNR/SSIM, scipy sqrtm Fréchet distance, Dice from direct voxel counts; FRD, HU statistics
    and memorization by :func:`reference_new_metrics`."""
    model, feats = TinySynth(), TinyFeatures()
    ps, ss, fr, ff = [], [], [], []
    inter, psum, tsum = np.zeros(17), np.zeros(17), np.zeros(17)
    for s in make_slices():
        g = torch.Generator().manual_seed(slice_seed(s["case_id"], int(s["slice_index"]), 3))
        fake = model.generate(s["mask"][None], num_steps=2, generator=g)
        real = s["image"][None]
        f, r = fake[0, 0].double().numpy(), real[0, 0].double().numpy()
        ps.append(sk_psnr(r, f, data_range=1.0))
        ss.append(
            sk_ssim(f, r, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        )
        with torch.no_grad():
            fr.append(feats(real)[0].numpy())
            ff.append(feats(fake)[0].numpy())
        seg = segmenter.segment(fake)[0].numpy()
        m = s["mask"].numpy()
        for c in range(17):
            inter[c] += np.sum((seg == c) & (m == c))
            psum[c] += np.sum(seg == c)
            tsum[c] += np.sum(m == c)
    fr, ff = np.array(fr), np.array(ff)
    c1, c2 = np.cov(fr, rowvar=False), np.cov(ff, rowvar=False)
    fid = (
        np.sum((fr.mean(0) - ff.mean(0)) ** 2)
        + np.trace(c1 + c2)
        - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2).real)
    )
    out = {"test/psnr": np.mean(ps), "test/ssim": np.mean(ss), "test/fid": fid, "test/num_slices": 7.0}
    dices = []
    for c in ORGAN_IDS:
        if psum[c] + tsum[c] > 0:
            out[f"test/dice/{CLASSES[c].name}"] = 2 * inter[c] / (psum[c] + tsum[c])
            if c in PAPER_DICE_ORDER:  # the mean covers the paper's 14 Dice columns
                dices.append(out[f"test/dice/{CLASSES[c].name}"])
    out["test/dice/mean"] = np.mean(dices)
    return {**out, **reference_new_metrics(segmenter)}


def reference_new_metrics(segmenter) -> dict[str, float]:
    """Each slice generated with its own generator; FRD by the library function on the whole
    sets (itself checked against frd-score); HU quantiles by numpy on the clipped, rounded HU
    values; nearest training slices by numpy brute force, copy threshold by ``np.percentile``."""
    model = TinySynth()
    real, fake, masks = [], [], []
    for s in make_slices():
        g = torch.Generator().manual_seed(slice_seed(s["case_id"], int(s["slice_index"]), 3))
        fake.append(model.generate(s["mask"][None], num_steps=2, generator=g).detach())
        real.append(s["image"][None])
        masks.append(s["mask"].numpy())
    real, fake, masks = torch.cat(real), torch.cat(fake), np.stack(masks)
    out = {"test/frd": frd(real, fake), "test/num_slices": 7.0}
    for c in np.unique(masks):
        if c == 0:
            continue
        stats = {}
        for name, x in (("real", real), ("synthetic", fake)):
            hu = np.clip(np.round(x[:, 0].double().numpy()[masks == c] * 400 - 160), -160, 240)
            q1, med, q3 = np.quantile(hu, [0.25, 0.5, 0.75])
            stats.update({f"{name}_median": med, f"{name}_q1": q1, f"{name}_q3": q3})
        stats["median_error"] = stats["synthetic_median"] - stats["real_median"]
        stats["median_error_window"] = stats["median_error"] / 400
        out.update({f"test/hu/{CLASSES[c].name}/{k}": v for k, v in stats.items()})
    train = torch.stack([s["image"] for s in train_slices()])
    spaces = {
        "pixel": lambda x: x.double().flatten(1).numpy() / SIZE,  # RMS: / sqrt(H * W)
        "feature": lambda x: np.concatenate(
            [segmenter.bottleneck_features(x[i : i + 1]).numpy() for i in range(len(x))]
        ),
    }
    for space, vec in spaces.items():
        ref = vec(train)
        dist = {
            n: np.sqrt(((vec(x)[:, None] - ref[None]) ** 2).sum(-1)).min(1)
            for n, x in (("s", fake), ("r", real))
        }
        thr = np.percentile(dist["r"], 5)
        out[f"test/memorization/{space}/copy_rate"] = np.mean(dist["s"] < thr)
        out[f"test/memorization/{space}/threshold"] = thr
        for q in (5, 25, 50, 75, 95):
            out[f"test/memorization/{space}/synthetic_q{q:02d}"] = np.quantile(dist["s"], q / 100)
            out[f"test/memorization/{space}/real_q{q:02d}"] = np.quantile(dist["r"], q / 100)
    return out


def assert_close(got: dict, want: dict, tol: float = 2e-5) -> None:
    assert set(got) == set(want), (sorted(got), sorted(want))
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=tol, rel=tol), k


def test_single_process_matches_reference_and_batch_size():
    """Logged values are float32, hence the bound 2e-5."""
    seg = make_segmenter()
    want = reference(seg)
    assert_close(run_test(1, 2, seg), want)
    assert_close(run_test(1, 3, seg), want)


def test_ddp_two_processes_odd_slices_match_single_process():
    """7 slices on 2 processes: DistributedSampler pads one duplicate; every slice counts once.
    Radiomics features, HU histograms and nearest-training distances travel per slice, so FRD,
    the HU medians and the copy rates match too."""
    seg = make_segmenter()
    single = run_test(1, 2, seg)
    ddp = run_test(2, 2, seg)
    assert ddp["test/num_slices"] == 7.0
    assert_close(ddp, single, tol=1e-6)


def test_validation_subset_is_fixed_by_slice_identity():
    seg = make_segmenter()
    cb = make_callback(seg, val_fraction=0.5, val_num_steps=1)
    t = trainer(callbacks=[cb], limit_train_batches=0, max_epochs=1, num_sanity_val_steps=0)
    t.validate(TinySynth(), dataloaders=DataLoader(make_slices(), batch_size=3, collate_fn=collate))
    n = t.callback_metrics["val/num_slices"]
    assert 0 < n < 7
    cb2 = make_callback(seg, val_fraction=0.5, val_num_steps=1)
    t2 = trainer(callbacks=[cb2], num_sanity_val_steps=0)
    t2.validate(TinySynth(), dataloaders=DataLoader(make_slices(), batch_size=1, collate_fn=collate))
    assert cb2.results["val"] == pytest.approx(cb.results["val"], rel=1e-6)


def test_real_feature_cache(tmp_path):
    seg = make_segmenter()
    loader = DataLoader(make_slices(), batch_size=4, collate_fn=collate)
    cb = make_callback(seg, fid_cache_dir=tmp_path, fid_cache_key="tiny-split")
    trainer(callbacks=[cb]).test(TinySynth(), dataloaders=loader)
    files = list(tmp_path.glob("fid_real_features_*.pt"))
    assert len(files) == 1
    data = torch.load(files[0], weights_only=False)
    assert len(data["keys"]) == 7 and "tiny-features" in data["split_id"]
    cb2 = make_callback(seg, fid_cache_dir=tmp_path, fid_cache_key="tiny-split")
    calls = []
    orig = cb2.feature_extractor.forward
    cb2.feature_extractor.forward = lambda x: (calls.append(x.shape[0]), orig(x))[1]
    trainer(callbacks=[cb2]).test(TinySynth(), dataloaders=loader)
    assert sum(calls) == 7  # fake images only: real features came from the cache
    assert cb2.results["test"]["fid"] == pytest.approx(cb.results["test"]["fid"], rel=1e-6)


def test_fails_early_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt"):
        SynthesisMetrics(metrics=("fid",), fid_weights=tmp_path)
    with pytest.raises(ValueError, match="segmenter"):
        SynthesisMetrics(metrics=("dice",))
    with pytest.raises(FileNotFoundError, match="segmenter checkpoint"):
        SynthesisMetrics(metrics=("dice",), segmenter=tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="metrics"):
        SynthesisMetrics(metrics=("psnr", "lpips"))
    with pytest.raises(ValueError, match="window"):
        SynthesisMetrics(metrics=("hu",), window=(40.0, -400.0))
    # memorization without training slices: an error when the test starts, before any sampling
    model = TinySynth()
    model.generate = lambda *a, **k: pytest.fail("sampled before the error")
    with pytest.raises(ValueError, match="no training slices: pass train_data="):
        trainer(callbacks=[SynthesisMetrics(metrics=("memorization",))]).test(
            model, dataloaders=DataLoader(make_slices(), batch_size=2, collate_fn=collate)
        )


def test_image_grid():
    slices = make_slices(3)
    batch = collate(slices)
    grid = comparison_grid(batch["mask"], batch["image"], batch["image"] * 0 + 1.0)
    assert grid.shape == (3 * SIZE, 3 * SIZE, 3) and grid.dtype == np.uint8
    # middle column = real slice in gray; right column = synthetic (all white)
    expected = np.rint(batch["image"][1, 0].numpy() * 255)
    np.testing.assert_array_equal(grid[SIZE : 2 * SIZE, SIZE : 2 * SIZE, 0], expected)
    assert (grid[:, 2 * SIZE :] == 255).all()
    # overlay: background pixel stays gray, an organ pixel is blended with its colour
    r, c = 5, 5  # liver (6)
    blend = np.rint(0.5 * batch["image"][0, 0, r, c].item() * 255 + 0.5 * np.array(CLASSES[6].color))
    np.testing.assert_array_equal(grid[r, c], blend)
    cb = SynthesisImageGrid(num_images=2)
    t = trainer(callbacks=[cb])
    t.test(TinySynth(), dataloaders=DataLoader(slices, batch_size=3, collate_fn=collate))
    assert cb.last_grid.shape == (2 * SIZE, 3 * SIZE, 3)
    assert not math.isnan(float(cb.last_grid.mean()))


def test_image_grid_colours_a_models_own_label_set():
    """A TotalSegmentator mask (ids up to 118) is drawn in that set's colours, not refused as an
    AMOS mask (a model on real CT logs its validation grid this way)."""
    from medsynth.labels import get_label_set

    ts = get_label_set("totalseg")
    image = torch.full((1, 1, 4, 4), 0.2)
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, 1, 2] = ts.num_classes - 2  # the last structure before the body class
    with pytest.raises(ValueError, match="mask values must lie in 0..16"):
        comparison_grid(mask, image, image)
    grid = comparison_grid(mask, image, image, label_set=ts)
    colour = np.array(ts.classes[ts.num_classes - 2].color, dtype=np.float64)
    np.testing.assert_array_equal(grid[1, 2], np.rint(0.5 * 0.2 * 255 + 0.5 * colour))
    np.testing.assert_array_equal(grid[0, 0], np.rint(np.full(3, 0.2 * 255)))


def test_model_checkpoint_last_holds_the_weights_training_ended_with(tmp_path):
    """A run that max_steps stops between two validations (every 2 steps; 5 steps): last.ckpt is
    step 5 with the model's final weights. (Lightning 2.6's own ModelCheckpoint leaves it at step 4,
    the last validation: the real-CT flow run lost steps 2001-2634 that way.)"""
    from lightning.pytorch.demos.boring_classes import BoringModel

    from medsynth.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    model = BoringModel()
    cb = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(
        max_steps=5,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        enable_checkpointing=True,
        callbacks=[cb],
    ).fit(model)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 5
    state = model.state_dict()
    assert ckpt["state_dict"].keys() == state.keys()
    for k, v in state.items():
        torch.testing.assert_close(ckpt["state_dict"][k], v)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]
