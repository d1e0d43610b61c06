"""medsynth.metrics against independent references: scikit-image, direct counts, closed forms,
a float64 FID pipeline with a small feature network; the offline missing-weights errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from medsynth.data.transforms import canonicalize
from medsynth.labels import TOTALSEG_TO_AMOS
from medsynth.metrics import (
    InceptionFeatures,
    TotalSegmentatorScorer,
    VolumeGeometry,
    dice_per_class,
    frechet_distance,
    frechet_distance_from_statistics,
    psnr,
    reassemble_volume,
    ssim,
)
from medsynth.metrics import image as image_mod
from medsynth.metrics.dice import map_totalseg_labels, window_to_hu


def _pair(b=3, h=40, w=36, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    pred = (target + 0.1 * torch.randn(b, 1, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    return pred, target


def test_psnr_ssim_match_scikit_image():
    pred, target = _pair()
    p, t = pred.numpy()[:, 0], target.numpy()[:, 0]
    ref_psnr = np.mean([sk_psnr(t[i], p[i], data_range=1.0) for i in range(3)])
    ref_ssim = np.mean(
        [
            sk_ssim(p[i], t[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
            for i in range(3)
        ]
    )
    assert float(psnr(pred, target)) == pytest.approx(ref_psnr, abs=1e-5)  # torchmetrics: float32 log
    assert float(ssim(pred, target)) == pytest.approx(ref_ssim, abs=1e-9)
    # float32 inputs and numpy inputs work too
    assert float(ssim(pred.float().numpy(), target.float().numpy())) == pytest.approx(ref_ssim, abs=1e-5)


def test_psnr_ssim_bad_input():
    with pytest.raises(ValueError, match="pred"):
        psnr(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 17))


def test_dice_per_class_direct_count():
    g = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 5, (2, 9, 11), generator=g)
    target = torch.randint(0, 5, (2, 9, 11), generator=g)
    target[target == 4] = 3  # class 4 only in pred; classes 5.. absent from both
    d = dice_per_class(pred, target, num_classes=7)
    assert d.dtype == torch.float64 and d.shape == (7,)
    p, t = pred.numpy().ravel(), target.numpy().ravel()
    for c in range(7):
        inter, sp, st = np.sum((p == c) & (t == c)), np.sum(p == c), np.sum(t == c)
        if sp + st == 0:
            assert math.isnan(d[c])
        else:
            assert d[c] == pytest.approx(2 * inter / (sp + st), abs=1e-15)
    assert d[4] == 0.0
    with pytest.raises(ValueError, match="target values"):
        dice_per_class(pred, target + 7, num_classes=7)


def test_frechet_distance_closed_forms():
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    a, b = np.array([[0.0], [2.0]]), np.array([[1.0], [5.0], [3.0]])
    m1, v1, m2, v2 = a.mean(), a.var(ddof=1), b.mean(), b.var(ddof=1)
    assert frechet_distance(a, b) == pytest.approx(
        (m1 - m2) ** 2 + (math.sqrt(v1) - math.sqrt(v2)) ** 2, rel=1e-12
    )
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 3.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = frechet_distance_from_statistics(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-12)
    # general case against scipy's sqrtm formula; identical sets give 0
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 6)), rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) + 1
    c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = (
        np.sum((x.mean(0) - y.mean(0)) ** 2)
        + np.trace(c1 + c2)
        - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2).real)
    )
    assert frechet_distance(torch.from_numpy(x), y) == pytest.approx(ref, rel=1e-9)
    assert abs(frechet_distance(x, x)) < 1e-9


class SmallNet(torch.nn.Module):
    """A fixed random feature network for 299x299 RGB in [0, 255] (stand-in for Inception)."""

    def __init__(self, dim: int = 5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.weight = torch.nn.Parameter(torch.randn(dim, 3 * 13 * 13, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(x.double() / 255.0, 13)  # [B, 3, 13, 13]
        return torch.tanh(x.flatten(1) @ self.weight.T)


def _reference_features(images: torch.Tensor, net: SmallNet) -> np.ndarray:
    """float64 reference of the clean-fid pipeline: uint8, RGB, PIL bicubic on float channels."""
    out = []
    for img in images.numpy()[:, 0]:
        u8 = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
        ch = np.asarray(Image.fromarray(u8.astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC))
        out.append(np.repeat(np.clip(ch, 0, 255)[None], 3, axis=0))
    with torch.no_grad():
        return net(torch.from_numpy(np.stack(out)).double()).numpy()


def test_fid_pipeline_matches_float64_reference():
    net = SmallNet()
    g = torch.Generator().manual_seed(0)
    real = torch.rand(6, 1, 32, 32, generator=g)
    fake = (real * 0.7 + 0.2 * torch.rand(6, 1, 32, 32, generator=g)).clamp(0, 1)
    extractor = InceptionFeatures(network=net)  # the path SynthesisMetrics takes: features, then FID
    fid = frechet_distance(torch.cat([extractor(real[:4]), extractor(real[4:])]), extractor(fake))
    fr, ff = _reference_features(real, net), _reference_features(fake, net)
    c1, c2 = np.cov(fr, rowvar=False), np.cov(ff, rowvar=False)
    ref = (
        np.sum((fr.mean(0) - ff.mean(0)) ** 2)
        + np.trace(c1 + c2)
        - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2).real)
    )
    assert fid == pytest.approx(ref, rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(extractor(real).numpy(), fr, rtol=1e-6, atol=1e-9)


def test_inception_missing_error_names_paths_and_url(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        InceptionFeatures(fid_weights=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "inception-2015-12-05.pt") in msg and image_mod.INCEPTION_URL in msg
    monkeypatch.setattr(image_mod, "cleanfid_cache_dirs", lambda: [tmp_path / "cache"])
    with pytest.raises(FileNotFoundError, match="cache"):
        InceptionFeatures()


class _FakeLayers(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 1).repeat(1, 683, 1, 1)[:, :2048]


class _FakeInception(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = _FakeLayers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_inception_file_is_loaded_offline(tmp_path):
    """A torchscript file with clean-fid's layout at fid_weights is used as is (no download)."""
    torch.jit.script(_FakeInception()).save(str(tmp_path / "inception-2015-12-05.pt"))
    ext = InceptionFeatures(fid_weights=tmp_path / "inception-2015-12-05.pt")
    img = torch.full((2, 1, 20, 20), 0.5)
    feats = ext(img)
    assert feats.shape == (2, 2048)
    # clean-fid normalises (x - 128) / 128; uint8 0.5 -> 128 -> 0
    assert torch.allclose(feats, torch.zeros_like(feats), atol=1e-6)


# ----------------------------------------------------------------------------- volumes / TotalSegmentator


def _geometry():
    affine = np.array(
        [[-0.8, 0, 0, 10], [0, 0, 2.5, -5], [0, 0.8, 0, 3], [0, 0, 0, 1.0]]
    )  # LSA-ish voxel order
    return VolumeGeometry((12, 6, 10), affine)


def test_geometry_round_trip_and_reassembly():
    geo = _geometry()
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 17, size=geo.shape)
    canonical = geo.to_canonical(vol)
    assert canonical.shape == geo.canonical_shape == (10, 12, 6)
    # canonical = PLS, the data pipeline's layout: voxel axis 2 (A) flipped first, then 0 (L), then 1 (S)
    np.testing.assert_array_equal(canonical, vol.transpose(2, 0, 1)[::-1])
    np.testing.assert_array_equal(canonical, canonicalize(vol, geo.affine)[0])  # MONAI's Orientation
    assert geo.spacing == pytest.approx((0.8, 0.8, 2.5))
    slices = {k: torch.from_numpy(canonical[:, :, k]) for k in reversed(range(6))}
    np.testing.assert_array_equal(reassemble_volume(slices, geo, mode="nearest"), vol)
    # resized slices (the model's resolution) come back to the original grid: 2x nearest upsampling
    small = torch.from_numpy(canonical[::2, ::2]).permute(2, 0, 1)  # [Z, 5, 6]
    up = reassemble_volume(small, geo, mode="nearest")
    np.testing.assert_array_equal(geo.to_canonical(up), np.repeat(np.repeat(canonical[::2, ::2], 2, 0), 2, 1))
    with pytest.raises(ValueError, match="missing"):
        reassemble_volume({0: slices[0]}, geo)


def test_totalsegmentator_mapping_and_dice_with_injected_call():
    from totalsegmentator.map_to_binary import class_map

    total_id = {name: i for i, name in class_map["total"].items()}
    geo = _geometry()
    labels = np.zeros(geo.shape, dtype=np.int64)
    labels[2:6, 1:4, 2:5] = 6  # liver
    labels[7:10, 2:5, 4:8] = 1  # spleen
    labels[0, 0, 0] = 16  # body label is ignored
    seen = {}

    def fake_totalseg(ct):
        seen["ct"] = ct
        out = np.zeros(ct.shape, dtype=np.int16)
        out[2:6, 1:4, 2:5] = total_id["liver"]  # perfect liver
        out[7:10, 2:5, 4:6] = total_id["spleen"]  # half the spleen
        out[0:2, 0:2, 0:2] = total_id["urinary_bladder"]  # false bladder
        out[11, 5, 9] = total_id["heart"]  # not an AMOS organ -> background
        return out

    scorer = TotalSegmentatorScorer(segment_fn=fake_totalseg)
    canonical_fake = np.full(geo.canonical_shape, 0.25)
    slices = [torch.from_numpy(canonical_fake[:, :, k]) for k in range(geo.num_slices)]
    dice = scorer.score_case(slices, geo, labels)
    assert dice[6] == 1.0
    assert dice[1] == pytest.approx(2 * 18 / (18 + 36))
    assert dice[TOTALSEG_TO_AMOS["urinary_bladder"]] == 0.0
    assert math.isnan(dice[2]) and math.isnan(dice[16])
    ct = seen["ct"]
    assert ct.shape == geo.shape and np.allclose(ct.affine, geo.affine)
    assert np.allclose(np.asarray(ct.dataobj), 0.25 * 400 - 160)  # HU of the window
    assert window_to_hu(np.array([0.0, 1.0])).tolist() == [-160.0, 240.0]
    assert map_totalseg_labels(np.array([total_id[n] for n in TOTALSEG_TO_AMOS])).tolist() == list(
        TOTALSEG_TO_AMOS.values()
    )


def test_totalsegmentator_missing_weights_error(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        TotalSegmentatorScorer(weights_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "nnunet" / "results") in msg and "totalseg_download_weights -t total" in msg


@pytest.mark.weights
def test_totalsegmentator_real_call(tmp_path):
    """Runs TotalSegmentator itself; only where its weights are installed."""
    from medsynth.metrics.dice import check_totalseg_weights

    try:
        check_totalseg_weights(None, fast=True)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    geo = VolumeGeometry((64, 64, 32), np.diag([3.0, 3.0, 3.0, 1.0]))
    labels = np.zeros(geo.shape, dtype=np.int64)
    slices = [torch.full((64, 64), 0.3) for _ in range(geo.num_slices)]
    dice = TotalSegmentatorScorer(fast=True).score_case(slices, geo, labels)
    assert dice.shape == (17,)
