"""Mask-region intensity metrics against direct numpy computation (loops over pixels in float64)."""

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
