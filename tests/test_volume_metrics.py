"""medsynth.metrics.volume against hand-made volumes: known steps, a texture with a known z
correlation, known medians, index bookkeeping of the views."""

import numpy as np
import pytest
import torch

from medsynth.metrics import (
    adjacent_difference_ratio,
    adjacent_slice_difference,
    median_drift,
    orthogonal_views,
    part_medians,
    texture_sticking,
)


def test_adjacent_slice_difference_by_hand() -> None:
    vol = np.zeros((3, 2, 2))
    vol[0] = [[0.0, 0.1], [0.2, 0.3]]
    vol[1] = [[0.5, 0.1], [0.2, 0.0]]
    vol[2] = [[0.5, 0.4], [0.2, 0.0]]
    mask = np.array([[[1, 1], [2, 0]], [[1, 1], [2, 2]], [[0, 1], [2, 2]]])
    out = adjacent_slice_difference(vol, mask, [1, 2, 3])
    # class 1: pairs (0,1) at (0,0),(0,1): |0.5|, |0|; pair (1,2) at (0,1): |0.3|
    assert out[1] == pytest.approx((0.5 + 0.0 + 0.3) / 3)
    # class 2: pair (0,1) at (1,0): 0; pair (1,2) at (1,0),(1,1): 0, 0
    assert out[2] == pytest.approx(0.0)
    assert np.isnan(out[3])
    torch_out = adjacent_slice_difference(torch.from_numpy(vol), torch.from_numpy(mask), [1])
    assert torch_out[1] == pytest.approx(out[1])
    with pytest.raises(ValueError, match="one shape"):
        adjacent_slice_difference(vol, mask[:2], [1])


def test_adjacent_difference_ratio_of_known_steps() -> None:
    """Organ 1 brightens by 0.02 per slice in the real volume and by 0.05 in the synthetic one: 2.5."""
    mask = np.zeros((6, 8, 8), dtype=np.int64)
    mask[:, 2:6, 2:6] = 1
    z = np.arange(6)[:, None, None]
    real = np.where(mask == 1, 0.3 + 0.02 * z, 0.0)
    synth = np.where(mask == 1, 0.3 + 0.05 * z, 0.0)
    out = adjacent_difference_ratio(synth, real, mask, [1, 2])
    assert out[1] == pytest.approx(2.5) and np.isnan(out[2])


def _texture(shape, rho: float, rng: np.random.Generator) -> np.ndarray:
    """An AR(1) field along z: slice k = rho * slice k-1 + sqrt(1 - rho^2) * white noise; any linear
    in-plane filter keeps corr(slice k, slice k+d) = rho^d."""
    out = np.empty(shape)
    out[0] = rng.standard_normal(shape[1:])
    for k in range(1, shape[0]):
        out[k] = rho * out[k - 1] + np.sqrt(1 - rho**2) * rng.standard_normal(shape[1:])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_texture_sticking_recovers_a_known_z_correlation(seed: int) -> None:
    """Texture with corr rho^d along z (rho 0.8: 0.64 at d = 2, 0.41 at d = 4) on top of organs
    whose brightness changes from slice to slice: the high-pass residual drops the smooth part and
    the margin the organ's edge. Measured over seeds 0-2: errors <= 0.005; bound 0.02. Shared
    texture (the same field in every slice) correlates 1 (to 1e-4: the Gaussian reaches past the
    2-pixel margin); without the margin the bright organ's edge inflates the estimate (0.95)."""
    rng = np.random.default_rng(seed)
    d, s = 24, 64
    mask = np.zeros((d, s, s), dtype=np.int64)
    mask[:, 8:56, 8:56] = 3
    z = np.arange(d)[:, None, None]
    base = np.where(mask == 3, 0.6 + 0.01 * z, 0.0)  # organ brighter than its surroundings, drifting
    vol = base + 0.02 * _texture((d, s, s), 0.8, rng)
    out = texture_sticking(vol, mask, [3, 9], offsets=(2, 4))
    assert out[2][3] == pytest.approx(0.64, abs=0.02) and out[4][3] == pytest.approx(0.8**4, abs=0.02)
    assert np.isnan(out[2][9])
    shared = base + 0.02 * rng.standard_normal((1, s, s))
    assert texture_sticking(shared, mask, [3], offsets=(2,))[2][3] == pytest.approx(1.0, abs=1e-4)
    edges = texture_sticking(vol, mask, [3], offsets=(4,), margin=0)[4][3]
    assert edges > out[4][3] + 0.1
    with pytest.raises(ValueError, match="offsets must be positive"):
        texture_sticking(vol, mask, [3], offsets=(0,))


def test_part_medians_and_drift_by_hand() -> None:
    """8 slices, organ 1 at 10 k HU in slice k: the first quarter (slices 0-1) has median 5, the last
    (6-7) 65. A synthetic volume 1 HU brighter per slice: drift +0.5 and +6.5 (medians 5.5 = (0 + 11) / 2 and
    71.5 = (66 + 77) / 2)."""
    mask = np.zeros((8, 4, 4), dtype=np.int64)
    mask[:, 1:3, 1:3] = 1
    mask[:2, 0, 0] = 2  # organ 2 only in the first quarter
    z = np.arange(8)[:, None, None].astype(float)
    real = np.broadcast_to(10.0 * z, mask.shape)
    synth = real + z
    parts = part_medians(real, mask, [1, 2])
    assert parts["first"][1] == 5.0 and parts["last"][1] == 65.0 and np.isnan(parts["last"][2])
    drift = median_drift(synth, real, mask, [1])
    assert drift["first"][1] == pytest.approx(0.5) and drift["last"][1] == pytest.approx(6.5)
    with pytest.raises(ValueError, match="fraction"):
        part_medians(real, mask, [1], fraction=0.7)


def test_orthogonal_views_put_the_top_slice_on_top(tmp_path) -> None:
    vol = np.arange(3 * 4 * 5, dtype=float).reshape(3, 4, 5)  # [D, H, W]
    sagittal, coronal = orthogonal_views(vol, row=1, column=2)
    assert sagittal.shape == (3, 4) and coronal.shape == (3, 5)
    assert sagittal[0].tolist() == vol[2, :, 2].tolist() and sagittal[-1].tolist() == vol[0, :, 2].tolist()
    assert coronal[0].tolist() == vol[2, 1, :].tolist()
    from medsynth.metrics.report import volume_views_figure

    png = volume_views_figure(
        {"real": vol / 60, "synthetic": vol[::-1] / 60}, tmp_path / "v.png", z_aspect=2.0
    )
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="differ in shape"):
        volume_views_figure({"a": vol, "b": vol[:2]}, tmp_path / "w.png")
