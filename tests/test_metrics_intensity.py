"""Mask-region intensity metrics against direct numpy computation (loops over pixels in float64);
organ statistics in HU against hand-made volumes with known medians and quartiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.metrics import (
    background_mean,
    class_mean_painting,
    organ_intensity_error,
    region_means,
    region_sums,
)
from medsynth.metrics.intensity import (
    compare_hu_statistics,
    histogram_quantiles,
    hu_bins,
    hu_histogram,
    organ_hu_statistics,
)


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 5, size=(3, 6, 7))
    mask[:, 0] = 0
    mask[mask == 3] = 4  # class 3 absent
    real = rng.random((3, 1, 6, 7))
    synth = rng.random((3, 1, 6, 7))
    return synth, real, mask


def _ref_mean(img: np.ndarray, mask: np.ndarray, c: int) -> float:
    vals = [float(img[b, 0, i, j]) for b, i, j in np.ndindex(*mask.shape) if mask[b, i, j] == c]
    return sum(vals) / len(vals) if vals else float("nan")


def test_region_means_and_error_match_numpy() -> None:
    synth, real, mask = _data()
    means = region_means(torch.from_numpy(synth).float(), torch.from_numpy(mask), num_classes=5)
    assert means.dtype == torch.float64 and means.shape == (5,)
    for c in range(5):
        ref = _ref_mean(synth.astype(np.float32), mask, c)
        if np.isnan(ref):
            assert torch.isnan(means[c])
        else:
            assert float(means[c]) == pytest.approx(ref, rel=1e-12)
    err = organ_intensity_error(synth, real, mask, num_classes=5)
    for c in (0, 1, 2, 4):
        assert float(err[c]) == pytest.approx(
            abs(_ref_mean(synth, mask, c) - _ref_mean(real, mask, c)), rel=1e-12
        )
    assert torch.isnan(err[3])
    # sums over two halves add up to the whole
    a = region_sums(synth[:1], mask[:1], 5) + region_sums(synth[1:], mask[1:], 5)
    torch.testing.assert_close(a, region_sums(synth, mask, 5), rtol=1e-12, atol=1e-12)


def test_background_mean_and_painting() -> None:
    synth, _, mask = _data(1)
    assert background_mean(synth, mask) == pytest.approx(_ref_mean(synth, mask, 0), rel=1e-12)
    assert background_mean(synth[:, 0], mask) == pytest.approx(_ref_mean(synth, mask, 0), rel=1e-12)
    assert np.isnan(background_mean(synth, np.ones_like(mask)))
    lut = torch.tensor([0.0, 0.5, 0.25, float("nan"), 1.0])
    painted = class_mean_painting(torch.from_numpy(mask), lut)
    assert painted.shape == (3, 1, 6, 7) and painted.dtype == torch.float32
    expected = np.array([0.0, 0.5, 0.25, 0.0, 1.0])[mask][:, None]
    np.testing.assert_array_equal(painted.numpy(), expected.astype(np.float32))
    # painting with the real means gives zero organ error by construction
    means = region_means(synth, mask, 5)
    err = organ_intensity_error(class_mean_painting(torch.from_numpy(mask), means), synth, mask, 5)
    assert float(np.nanmax(err.numpy())) < 1e-6


def test_errors_name_the_argument() -> None:
    synth, _, mask = _data()
    with pytest.raises(ValueError, match="do not match"):
        region_means(synth[:, :, :5], mask)
    with pytest.raises(ValueError, match="integer"):
        region_means(synth, mask.astype(float))
    with pytest.raises(ValueError, match="0..2"):
        region_means(synth, mask, num_classes=3)
    with pytest.raises(ValueError, match="entries"):
        class_mean_painting(torch.from_numpy(mask), torch.zeros(2))


def _window_units(hu: np.ndarray, level: float = 40.0, width: float = 400.0) -> torch.Tensor:
    """HU -> float32 window units, the way slices are stored."""
    return torch.from_numpy(((hu - (level - width / 2)) / width).astype(np.float32))


def test_organ_hu_statistics_on_a_hand_made_volume() -> None:
    """Two 4x5 slices: liver (6) holds 60, 61, ..., 69 HU once each (median 64.5; numpy's
    linear quartiles at positions 2.25 and 6.75: 62.25 and 66.75), spleen (1) is 45 HU
    everywhere (IQR 0), the body (16) is fat at -100 HU and one pixel of air at -1000 HU, which
    the window clips to its lower edge, -160."""
    hu = np.full((2, 4, 5), -100.0)
    mask = np.full((2, 4, 5), 16)
    liver = [(0, 0, j) for j in range(5)] + [(1, 3, j) for j in range(5)]
    for v, (b, i, j) in zip(range(60, 70), liver):
        hu[b, i, j], mask[b, i, j] = v, 6
    hu[0, 2, 1:4], mask[0, 2, 1:4] = 45.0, 1
    hu[1, 1, 1:3], mask[1, 1, 1:3] = 45.0, 1
    hu[1, 0, 0] = -1000.0
    x = _window_units(np.clip(hu, -160, 240))[:, None]  # [2, 1, 4, 5]
    stats = organ_hu_statistics(x, torch.from_numpy(mask))
    assert set(stats) == {1, 6, 16}
    assert stats[6] == {"median": 64.5, "q1": 62.25, "q3": 66.75, "iqr": 4.5, "pixels": 10.0}
    assert stats[1] == {"median": 45.0, "q1": 45.0, "q3": 45.0, "iqr": 0.0, "pixels": 5.0}
    body = np.sort(np.clip(hu[mask == 16], -160, 240))
    assert stats[16]["median"] == np.median(body) == -100.0 and body[0] == -160.0
    assert organ_hu_statistics(x, torch.from_numpy(mask), organs=[6, 7]).keys() == {6}  # 7 absent
    # a shifted copy as the synthetic slices: the median error is the shift
    shifted = _window_units(np.clip(hu + 12.0, -160, 240))[:, None]
    first, count = hu_bins()
    cmp = compare_hu_statistics(hu_histogram(x, mask), hu_histogram(shifted, mask))
    assert (first, count) == (-160, 401)
    assert cmp[6]["median_error"] == 12.0 and cmp[6]["median_error_window"] == 0.03
    assert cmp[6]["synthetic_q3"] == 78.75 and cmp[6]["real_q1"] == 62.25


def test_hu_quantiles_equal_numpy_on_rounded_values_and_add_over_batches() -> None:
    """Random slices under another window (level 50, width 350: -125 .. 225 HU): histogram
    quantiles equal numpy's ``quantile`` of the values rounded to whole HU (to 1e-9, float64
    interpolation), lie within 0.5 HU of the unrounded quantiles, and histograms of two halves
    add up to the histogram of the whole."""
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.random((4, 1, 9, 8)).astype(np.float32))
    mask = torch.from_numpy(rng.integers(0, 4, (4, 9, 8)))
    window = (50.0, 350.0)
    hist = hu_histogram(x, mask, num_classes=4, window=window)
    assert torch.equal(
        hist, hu_histogram(x[:2], mask[:2], 4, window) + hu_histogram(x[2:], mask[2:], 4, window)
    )
    qs = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
    got = histogram_quantiles(hist, qs, first=-125).numpy()  # [4, 7]
    hu = x[:, 0].double().numpy() * 350 - 125
    for c in range(4):
        vals = hu[mask.numpy() == c]
        np.testing.assert_allclose(got[c], np.quantile(np.round(vals), qs), rtol=0, atol=1e-9)
        assert np.max(np.abs(got[c] - np.quantile(vals, qs))) <= 0.5
    assert torch.isnan(histogram_quantiles(torch.zeros(3, 5), (0.5,), first=0)).all()


def test_hu_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="window"):
        hu_bins((40.0, 0.0))
    with pytest.raises(ValueError, match="quantiles"):
        histogram_quantiles(torch.ones(5), (1.5,), first=0)
    with pytest.raises(ValueError, match="organs"):
        organ_hu_statistics(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), organs=[40])
    with pytest.raises(ValueError, match="histograms"):
        compare_hu_statistics(torch.zeros(17, 401), torch.zeros(17, 400))
