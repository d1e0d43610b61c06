"""Preprocessing: canonical orientation, window, body class, resize (Zhuang et al., Sec. 3)."""

import nibabel as nib
import numpy as np
import pytest
from conftest import HU_TABLE, SHAPE, reorient, save_nifti

from medsynth.data.transforms import (
    PreprocessConfig,
    body_mask,
    canonicalize,
    load_case,
    preprocess_volume,
    resize_slices,
    window,
)
from medsynth.labels import BODY

NATIVE = PreprocessConfig(image_size=32)


def _display(ras: np.ndarray) -> np.ndarray:
    """Independent reference of the radiological display of a RAS+ array: ``[D, Y, X]``.

    Rows run anterior -> posterior (reverse of RAS y), columns run patient right -> left
    (reverse of RAS x), slices inferior -> superior.
    """
    return np.ascontiguousarray(np.transpose(ras[::-1, ::-1, :], (2, 1, 0)))


def test_canonical_slice_is_radiological_display(volume):
    hu, label, affine = volume
    out, aff = canonicalize(label, affine)
    assert nib.aff2axcodes(aff) == ("P", "L", "S")
    np.testing.assert_array_equal(np.moveaxis(out, 2, 0), _display(label))
    # Liver (patient right) on the image's left half, bladder (anterior) in the top half.
    d = _display(label)
    assert np.nonzero(d == 6)[2].mean() < SHAPE[0] / 2 < np.nonzero(d == 1)[2].mean()
    assert np.nonzero(d == 14)[1].mean() < SHAPE[1] / 2
    # World positions are kept: voxel (0, 0, 0) of the canonical volume is the RAS voxel (X-1, Y-1, 0).
    np.testing.assert_allclose(aff @ [0, 0, 0, 1], affine @ [SHAPE[0] - 1, SHAPE[1] - 1, 0, 1])


@pytest.mark.parametrize(
    "perm, flips",
    [
        ((0, 1, 2), (0, 1)),  # LPS storage (DICOM order) vs RAS
        ((0, 1, 2), (0,)),  # flipped left-right
        ((1, 0, 2), ()),  # transposed in-plane axes
        ((0, 1, 2), (2,)),  # reversed slice order
        ((1, 0, 2), (0, 2)),  # all at once
        ((2, 0, 1), (1,)),  # slices stored on the first axis
    ],
)
def test_orientation_invariance_from_nifti(tmp_path, volume, perm, flips):
    hu, label, affine = volume
    ref = preprocess_volume(hu, label, affine, NATIVE, "ref")
    (hu2, lab2), aff2 = reorient((hu, label), affine, perm, flips)
    img_path = save_nifti(tmp_path / "img.nii.gz", hu2, aff2)
    lab_path = save_nifti(tmp_path / "lab.nii.gz", lab2, aff2)
    got = load_case(img_path, lab_path, NATIVE)
    np.testing.assert_array_equal(got.mask, ref.mask)
    np.testing.assert_allclose(got.image, ref.image, atol=1e-6)


def test_window_closed_form():
    hu = np.array([-1000.0, -160.0, -60.0, 40.0, 100.0, 240.0, 3000.0], dtype=np.float32)
    expected = np.clip((hu.astype(np.float64) - (40.0 - 200.0)) / 400.0, 0.0, 1.0)
    np.testing.assert_allclose(window(hu), expected, atol=1e-7)
    np.testing.assert_allclose(window(hu)[[0, 1, 3, 5, 6]], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(window(np.array([0.0]), level=0.0, width=100.0), [0.5])
    with pytest.raises(ValueError, match="width"):
        window(hu, width=0.0)


def test_body_class_excludes_table_includes_gas(volume):
    hu, label, affine = volume
    out = preprocess_volume(hu, label, affine, PreprocessConfig(image_size=32), "c")
    # Compare on the canonical native grid: 28 rows are resized to 32, so use the unresized mask.
    hu_c, _ = canonicalize(hu, affine)
    lab_c, _ = canonicalize(label, affine)
    body = body_mask(hu_c)
    assert not body[hu_c == HU_TABLE].any(), "the table is outside the body"
    pocket = np.zeros(SHAPE, dtype=np.uint8)
    pocket[14:17, 17:20, :] = 1  # the bowel-gas pocket of the fixture (RAS voxels)
    pocket_c = canonicalize(pocket, affine)[0].astype(bool)
    assert (hu_c[pocket_c] == -1000.0).all() and body[pocket_c].all(), "gas inside the bowel is body"
    assert not body[0, 0, 0], "air in the corner is not body"
    # In the final mask, organs keep their ids, body = body minus organs, everything else 0.
    resized_full = resize_slices(
        hu_c, np.where(lab_c > 0, lab_c, np.where(body, BODY, 0)).astype(np.uint8), 32
    )[1]
    np.testing.assert_array_equal(out.mask, resized_full)
    assert set(np.unique(out.mask)) == {0, 1, 6, 14, BODY}


def test_body_mask_keeps_two_legs_and_drops_a_thin_line():
    hu = np.full((40, 40, 3), -1000.0, dtype=np.float32)
    hu[5:18, 10:30, :] = 0.0  # left leg
    hu[22:35, 10:30, :] = 0.0  # right leg
    hu[18:22, 10:30, 0] = 0.0  # joined in slice 0 only (the pelvis)
    hu[38, 2:38, :] = 100.0  # a thin line / cable outside
    body = body_mask(hu)
    assert body[5:35, 10:30, 0].all()
    assert body[5:18, 10:30, 1:].all() and body[22:35, 10:30, 1:].all(), "both legs are kept"
    assert not body[38].any(), "thin structures outside are dropped"


def test_resize_nearest_mask_and_antialiased_image():
    image = np.zeros((16, 16, 1), dtype=np.float32)
    image[::4, :, 0] = 1.0  # one bright row in four
    mask = np.zeros((16, 16, 1), dtype=np.uint8)
    mask[:8, :8] = 3
    mask[9, 9] = 5  # a single pixel between sample points: nearest drops it, never blends it
    img, msk = resize_slices(image, mask, 4)
    assert img.shape == msk.shape == (1, 4, 4) and img.dtype == np.float32 and msk.dtype == np.uint8
    # Antialiased: interior rows carry the local mean 1/4 (point sampling would give 0 everywhere).
    np.testing.assert_allclose(img[0, 1:3], 0.25, atol=1e-6)
    assert (img > 0.1).all()
    expected = np.zeros((1, 4, 4), dtype=np.uint8)
    expected[0, :2, :2] = 3
    np.testing.assert_array_equal(msk, expected)


def test_config_validation():
    with pytest.raises(ValueError, match="image_size"):
        PreprocessConfig(image_size=4)
    with pytest.raises(ValueError, match="window_width"):
        PreprocessConfig(window_width=0.0)
    assert PreprocessConfig(image_size=64).key() != PreprocessConfig(image_size=32).key()
