"""FRD v1 (medsynth.metrics.frd) against the frd-score package run directly on the same files,
its normalisation against a float64 numpy/scipy formula, and the missing-package error."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import tiny_phantom

from medsynth.data.geometry import window_to_hu
from medsynth.metrics.frd import FRD_INSTALL, check_frd_available, frd, frd_from_features, radiomics_features

sitk = pytest.importorskip("SimpleITK")
frd_package = pytest.importorskip("frd_score")


@pytest.fixture(scope="module")
def slice_sets() -> tuple[torch.Tensor, torch.Tensor]:
    """Two different 32x32 phantom cases, 12 slices each (train case vs test case)."""
    dm = tiny_phantom(depth=12)
    dm.setup("fit")
    dm.setup("test")
    a = torch.stack([dm.datasets["train"][i]["image"] for i in range(12)])  # [12, 1, 32, 32]
    b = torch.stack([dm.datasets["test"][i]["image"] for i in range(12)])
    return a, b


def _write(folder, arrays, suffix: str) -> None:
    folder.mkdir()
    for i, arr in enumerate(arrays):  # [H, W]
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(folder / f"{i:03d}.{suffix}"))


def test_frd_equals_package_on_nifti_files(slice_sets, tmp_path) -> None:
    """The slices in HU, written as float32 NIfTI files, through ``frd_score.compute_frd``.

    Features are identical (same PyRadiomics extractor, same image); what differs is the
    distance code (scipy ``sqrtm`` in the package, eigenvalues here) and float32 vs float64
    statistics: measured 2.5e-8 apart on 16 slices, so 1e-6 is the bound.
    """
    a, b = slice_sets
    for name, x in (("a", a), ("b", b)):
        _write(tmp_path / name, window_to_hu(x[:, 0].numpy()).astype(np.float32), "nii.gz")
    want = frd_package.compute_frd([str(tmp_path / "a"), str(tmp_path / "b")], num_workers=1)
    got = frd(a, b)  # [0, 1] slices, mapped to HU with the default window 40 / 400
    assert np.isfinite(want) and got == pytest.approx(want, abs=1e-6)
    # the reference set normalises: swapping the sets changes the value
    assert abs(frd(b, a) - got) > 1e-3


def test_frd_equals_package_on_png_files(slice_sets, tmp_path) -> None:
    """The package's usual input: 8-bit PNGs. Fed the same 0-255 values (``window=None``), the
    result is the package's (bound 1e-6 as above)."""
    a, b = slice_sets
    u8 = {n: np.round(x[:, 0].numpy() * 255).astype(np.uint8) for n, x in (("a", a), ("b", b))}
    for name, arr in u8.items():
        _write(tmp_path / name, arr, "png")
    want = frd_package.compute_frd([str(tmp_path / "a"), str(tmp_path / "b")], num_workers=1)
    as_float = {n: torch.from_numpy(v.astype(np.float32))[:, None] for n, v in u8.items()}
    assert frd(as_float["a"], as_float["b"], window=None) == pytest.approx(want, abs=1e-6)


def test_features_equal_package_per_file(slice_sets, tmp_path) -> None:
    """One slice's feature vector equals the package's ``process_image_mask_pair`` on its file,
    exactly; the window maps [0, 1] to HU as ``window_to_hu``."""
    from frd_score import frd as pkg

    a, _ = slice_sets
    hu = window_to_hu(a[3:4].numpy(), 20.0, 350.0).astype(np.float32)  # [1, 1, H, W]
    path = tmp_path / "s.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(hu[0, 0]), str(path))
    extractor = pkg.get_feature_extractor(frd_version="v1", image_dim=2)
    values, _, count = pkg.process_image_mask_pair((str(path), None), feature_extractor=extractor)
    ours = radiomics_features(a[3:4], window=(20.0, 350.0))
    assert ours.shape == (1, count) and count == 398
    np.testing.assert_array_equal(ours[0], np.asarray(values, np.float64))
    np.testing.assert_array_equal(radiomics_features(torch.from_numpy(hu), window=None), ours)


def _reference_frd(ref: np.ndarray, oth: np.ndarray) -> float:
    """The v1 statistics written out: z-score by the reference set, drop non-finite columns,
    ln of the Fréchet distance with scipy's sqrtm, all float64."""
    mu, sd = ref.mean(0), ref.std(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r, o = (ref - mu) / sd, (oth - mu) / sd
    keep = np.isfinite(r).all(0) & np.isfinite(o).all(0)
    r, o = r[:, keep], o[:, keep]
    c1, c2 = np.cov(r, rowvar=False), np.cov(o, rowvar=False)
    d2 = (
        np.sum((r.mean(0) - o.mean(0)) ** 2)
        + np.trace(c1 + c2)
        - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2).real)
    )
    return float(np.log(d2))


def test_frd_from_features_nan_rows_and_constant_columns() -> None:
    """Rows with a NaN feature leave their set (with a warning); a column constant over the
    reference set leaves both. ``frd_from_features`` z-scores in float32 as frd-score does, the
    reference here is float64 throughout: measured 4e-8 apart, so the bound is 1e-6."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(30, 5)).astype(np.float32).astype(np.float64)
    oth = (rng.normal(size=(25, 5)) * 1.5 + 0.3).astype(np.float32).astype(np.float64)
    ref[:, 2] = 7.0  # constant in the reference
    ref_nan, oth_nan = ref.copy(), oth.copy()
    ref_nan[4, 1] = np.nan
    oth_nan[[0, 9], 3] = np.nan
    with pytest.warns(UserWarning, match="NaN features"):
        got = frd_from_features(ref_nan, oth_nan)
    want = _reference_frd(np.delete(ref, 4, 0), np.delete(oth, [0, 9], 0))
    assert got == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="feature counts differ"):
        frd_from_features(ref, oth[:, :4])
    with pytest.raises(ValueError, match="at least 2"):
        frd_from_features(ref[:1], oth)


def test_missing_package_names_the_install_command(monkeypatch) -> None:
    from medsynth.callbacks import SynthesisMetrics

    monkeypatch.setitem(sys.modules, "frd_score", None)  # import frd_score -> ImportError
    with pytest.raises(ImportError, match="medsynth\\[frd\\]") as err:
        check_frd_available()
    assert "frd-score" in str(err.value) and FRD_INSTALL in str(err.value)
    with pytest.raises(ImportError, match="frd-score"):
        SynthesisMetrics(metrics=("psnr", "frd"))  # at construction, before any sampling


def test_bad_input_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"images must have shape \[N, 1, H, W\]"):
        radiomics_features(torch.zeros(2, 32, 32))
    with pytest.raises(ValueError, match="float"):
        radiomics_features(torch.zeros(2, 1, 32, 32, dtype=torch.long))


def test_protocol_frd_scorer_equals_frd_on_the_same_slices(slice_sets) -> None:
    """benchmarks.protocol.frd_scorer gives medsynth.metrics.frd.frd(real, synthetic) on a wider
    window as well; the real slices against themselves (ln 0 = -inf in FRD v1) score NaN."""
    from benchmarks.protocol import frd_scorer

    real, synth = slice_sets[0][:6], slice_sets[1][:6]  # few slices: PyRadiomics takes ~1 s each
    window = (0.0, 2000.0)
    scorer = frd_scorer(window)
    batch = {"image": real}
    assert scorer(synth, batch)["frd"] == pytest.approx(frd(real, synth, window), rel=1e-9)
    assert np.isnan(scorer(real, batch)["frd"])
