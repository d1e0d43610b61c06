"""medsynth.io: case names, NIfTI discovery, atomic writes (a failed write keeps the old file)."""

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import make_volume, save_nifti

from medsynth import io


def test_case_names() -> None:
    assert io.nifti_stem("a/amos_0001.nii.gz") == "amos_0001" and io.nifti_stem("b.nii") == "b"
    assert io.nifti_stem("c_0000.nii.gz") == "c_0000"  # a label file keeps its name
    assert io.case_name("c_0000.nii.gz") == "c" and io.case_name("c_0000.nii") == "c"
    assert io.case_name("d.nii.gz") == "d" and io.case_name("e_0000.txt") == "e_0000"
    assert io.is_nifti("x.nii.gz") and io.is_nifti("x.nii") and not io.is_nifti("x.gz")


def test_nifti_inputs_and_find_image(tmp_path) -> None:
    hu, lab, aff = make_volume()
    for name in ("b.nii.gz", "a.nii"):
        save_nifti(tmp_path / "in" / name, lab, aff)
    (tmp_path / "in" / "notes.txt").write_text("")
    assert [p.name for p in io.nifti_inputs(tmp_path / "in")] == ["a.nii", "b.nii.gz"]
    assert io.nifti_inputs(tmp_path / "in" / "a.nii") == [tmp_path / "in" / "a.nii"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"--input .*empty: no \.nii or \.nii\.gz files"):
        io.nifti_inputs(tmp_path / "empty", "--input")
    with pytest.raises(ValueError, match="path not found: .*nothere"):
        io.nifti_inputs(tmp_path / "nothere")
    # AMOS layout (same name) first, then nnU-Net's first channel
    images = tmp_path / "imagesTr"
    save_nifti(images / "c_0000.nii.gz", hu, aff)
    assert io.find_image(tmp_path / "labelsTr" / "c.nii.gz", images) == images / "c_0000.nii.gz"
    save_nifti(images / "c.nii.gz", hu, aff)
    assert io.find_image(tmp_path / "labelsTr" / "c.nii.gz", images) == images / "c.nii.gz"
    with pytest.raises(ValueError, match=r"z.nii.gz: no matching CT image .*z_0000.nii.gz"):
        io.find_image(tmp_path / "z.nii.gz", images)


def test_atomic_writes_round_trip_and_keep_the_old_file_on_failure(tmp_path) -> None:
    _, lab, aff = make_volume()
    path = io.save_nifti(tmp_path / "sub" / "v.nii.gz", lab, aff)
    back = nib.load(path)
    np.testing.assert_array_equal(np.asarray(back.dataobj), lab)
    np.testing.assert_allclose(back.affine, aff)
    assert back.get_data_dtype() == np.uint8 and path.read_bytes()[:2] == b"\x1f\x8b"  # gzip, as named
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        with io.atomic_path(path) as tmp:
            tmp.write_bytes(b"half a volume")
            raise RuntimeError("disk full")
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["v.nii.gz"]
    meta = io.write_json(tmp_path / "dataset.json", {"numTraining": 2})
    assert json.loads(meta.read_text()) == {"numTraining": 2}
    copy = io.copy_file(path, tmp_path / "copy.nii.gz")
    assert copy.read_bytes() == before
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left
