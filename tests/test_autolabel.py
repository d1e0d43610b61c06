"""medsynth label: an injected segmenter, resumability, and the dataset read back by NNUNetDataModule."""

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import HU_LIVER, HU_SPLEEN, make_volume, save_nifti
from totalsegmentator.map_to_binary import class_map

from medsynth.autolabel import label_folder
from medsynth.commands.label import main
from medsynth.data import NNUNetDataModule

pytestmark = pytest.mark.filterwarnings("ignore:.*has no imagesTs/labelsTs:UserWarning")

TS = {n: i for i, n in class_map["total"].items()}


def fake_totalsegmentator(ct) -> np.ndarray:
    """Stand-in: liver and spleen by their phantom HU (TotalSegmentator ids 5 and 1)."""
    hu = np.asanyarray(ct.dataobj)
    seg = np.zeros(hu.shape, np.uint8)
    seg[np.abs(hu - HU_LIVER) < 5] = TS["liver"]
    seg[np.abs(hu - HU_SPLEEN) < 5] = TS["spleen"]
    return seg


def write_cts(folder, n):
    hu, lab, aff = make_volume()
    for k in range(n):
        save_nifti(folder / f"ct{k}.nii.gz", hu, aff)
    return lab


def test_label_folder_writes_a_dataset_that_trains_as_amos(tmp_path) -> None:
    lab = write_cts(tmp_path / "ct", 2)
    out = tmp_path / "Dataset600_Auto"
    assert label_folder(tmp_path / "ct", out, segment_fn=fake_totalsegmentator, progress=False) == [
        "ct0",
        "ct1",
    ]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["labels"]["liver"] == TS["liver"] and len(meta["labels"]) == 118
    seg = np.asarray(nib.load(out / "labelsTr" / "ct0.nii.gz").dataobj)
    np.testing.assert_array_equal(seg == TS["liver"], lab == 6)  # the phantom's liver, found by HU
    assert (out / "imagesTr" / "ct1_0000.nii.gz").is_file()
    dm = NNUNetDataModule(
        out,
        label_set="amos",
        remap="by_name",
        image_size=16,
        cache_dir=tmp_path / "c",
        progress=False,
        num_workers=0,
    )
    dm.prepare_data()
    dm.setup("fit")
    masks = dm.datasets["train"].masks[0]
    assert set(np.unique(masks)) == {0, 1, 6, 16}  # spleen, liver, body in AMOS ids


def test_label_is_resumable_and_leaves_no_partial_case(tmp_path) -> None:
    write_cts(tmp_path / "ct", 3)
    out = tmp_path / "Dataset601"
    calls = []

    def flaky(ct):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return fake_totalsegmentator(ct)

    with pytest.raises(RuntimeError, match="interrupted"):
        label_folder(tmp_path / "ct", out, segment_fn=flaky, progress=False)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["ct0.nii.gz"]
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 1
    seen = []

    def counting(ct):
        seen.append(1)
        return fake_totalsegmentator(ct)

    # The rerun segments only the two missing cases; ct0 is skipped.
    assert label_folder(tmp_path / "ct", out, segment_fn=counting, progress=False) == ["ct1", "ct2"]
    assert len(seen) == 2
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["ct0.nii.gz", "ct1.nii.gz", "ct2.nii.gz"]
    assert not [p for p in out.rglob(".*")]  # no partial file anywhere
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 3


def test_label_errors_before_any_work(tmp_path, capsys) -> None:
    write_cts(tmp_path / "ct", 1)
    (tmp_path / "ct" / "bad.nii.gz").write_bytes(b"not nifti")
    out = tmp_path / "Dataset602"
    assert (
        main(["--input", str(tmp_path / "ct"), "--output", str(out), "--weights", str(tmp_path / "w")]) == 2
    )
    err = capsys.readouterr().err
    assert (
        "TotalSegmentator weights not found" in err
        and "--weights" in err
        and "totalseg_download_weights" in err
    )
    with pytest.raises(ValueError, match="bad.nii.gz: cannot read"):
        label_folder(tmp_path / "ct", out, segment_fn=fake_totalsegmentator, progress=False)
    assert not (out / "labelsTr").exists() or not any((out / "labelsTr").iterdir())
    with pytest.raises(ValueError, match="not TotalSegmentator"):
        label_folder(tmp_path / "ct", out, roi_subset=["livr"], segment_fn=fake_totalsegmentator)
