"""NNUNetDataModule: nnU-Net v2 raw layout, label sets and remapping, splits, bad input."""

import json

import numpy as np
import pytest
from conftest import make_volume, save_nifti
from totalsegmentator.map_to_binary import class_map

from medsynth.data import BadCaseError, NNUNetDataModule
from medsynth.data.nnunet import validation_cases
from medsynth.data.transforms import PreprocessConfig, preprocess_volume
from medsynth.labels import CLASSES, NUM_ORGANS, TOTALSEG_TO_AMOS, get_label_set

pytestmark = pytest.mark.filterwarnings("ignore:.*has no imagesTs/labelsTs:UserWarning")

AMOS_LABELS = {c.name: c.index for c in CLASSES[: NUM_ORGANS + 1]}
TS_IDS = {name: i for i, name in class_map["total"].items()}
AMOS_TO_TS = {a: TS_IDS[ts] for ts, a in TOTALSEG_TO_AMOS.items()}


def write_dataset(root, labels: dict, cases: int, relabel=None, test_cases: int = 0):
    """An nnU-Net raw dataset of the conftest volume (case k shifted by k HU); returns (hu, label, affine)."""
    hu, lab, aff = make_volume()
    if relabel is not None:
        lab = relabel(lab)
    for split, n, (img_dir, lab_dir) in (
        ("tr", cases, ("imagesTr", "labelsTr")),
        ("ts", test_cases, ("imagesTs", "labelsTs")),
    ):
        for k in range(n):
            save_nifti(root / img_dir / f"{split}{k:03d}_0000.nii.gz", hu + k, aff)
            save_nifti(root / lab_dir / f"{split}{k:03d}.nii.gz", lab, aff)
    meta = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return hu, lab, aff


def _dm(root, tmp_path, **kw):
    kw = {"image_size": 16, "batch_size": 4, "num_workers": 0, "progress": False, **kw}
    return NNUNetDataModule(root, cache_dir=tmp_path / "cache", **kw)


def test_amos_named_dataset_gives_the_amos_pipeline(tmp_path) -> None:
    root = tmp_path / "Dataset001_A"
    hu, lab, aff = write_dataset(root, AMOS_LABELS, cases=3, test_cases=1)
    dm = _dm(root, tmp_path)
    assert dm.label_set.names() == get_label_set("amos").names() and dm.num_classes == 17
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.splits["val"]) == 1 and len(dm.splits["train"]) == 2 and len(dm.splits["test"]) == 1
    ref = preprocess_volume(hu, lab, aff, PreprocessConfig(image_size=16), "ref")
    batch = next(iter(dm.test_dataloader()))
    np.testing.assert_array_equal(batch["mask"].numpy(), ref.mask[:4])
    assert batch["case_id"][0] == "ts000"


def test_totalsegmentator_masks_trained_as_amos_classes(tmp_path) -> None:
    """TotalSegmentator ids mapped by name equal the AMOS ids of the same volume (the mapping built
    independently from the AMOS table's TotalSegmentator names)."""
    root = tmp_path / "Dataset002_TS"
    ts_labels = {"background": 0, **{n: i for n, i in TS_IDS.items()}}

    def to_ts(lab):
        out = np.zeros_like(lab)
        for a, t in AMOS_TO_TS.items():
            out[lab == a] = t
        spine = out[14:17, 8:11, :]  # unlabelled voxels inside the body outline
        spine[spine == 0] = TS_IDS["vertebrae_L1"]  # a structure AMOS has not
        return out.astype(np.uint8)

    hu, lab, aff = write_dataset(root, ts_labels, cases=2, relabel=to_ts)
    with pytest.raises(ValueError, match="remap='by_name'"):
        _dm(root, tmp_path, label_set="amos")
    assert (lab == TS_IDS["vertebrae_L1"]).sum() > 0
    dm = _dm(root, tmp_path, label_set="amos", remap="by_name")
    dm.prepare_data()
    dm.setup("fit")
    # Expected: the AMOS labels of the same volume; the vertebra voxels become body, as the AMOS
    # pipeline makes every unlabelled voxel inside the outline.
    amos_ref = make_volume()[1]
    ref = preprocess_volume(hu, amos_ref, aff, PreprocessConfig(image_size=16), "ref")
    got = dm.datasets["train"].masks[0]
    np.testing.assert_array_equal(got, ref.mask)
    native = _dm(root, tmp_path)  # the dataset's own set: 117 classes + body 118
    assert native.num_classes == 119 and native.config.body_label == 118


def test_labels_outside_the_set_name_file_and_values(tmp_path) -> None:
    root = tmp_path / "Dataset003_Bad"
    write_dataset(root, {"background": 0, "liver": 1}, cases=2)  # the files hold 1, 6 and 14
    dm = _dm(root, tmp_path)
    with pytest.raises(BadCaseError, match=r"labelsTr/tr000.nii.gz: label values outside 0..1: \[6, 14\]"):
        dm.prepare_data()
    root2 = tmp_path / "Dataset005_Missing"
    write_dataset(root2, AMOS_LABELS, cases=2)
    (root2 / "imagesTr" / "tr001_0000.nii.gz").unlink()
    with pytest.raises(BadCaseError, match="imagesTr/tr001_0000.nii.gz: file not found"):
        _dm(root2, tmp_path, num_val_cases=0).prepare_data()
    with pytest.warns(UserWarning, match="skipping bad nnU-Net case tr001"):
        skip = _dm(root2, tmp_path, num_val_cases=0, on_bad_case="skip")
        skip.prepare_data()
        skip.setup("fit")
    assert skip.datasets["train"].case_names == ["tr000"]


def test_bad_config_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _dm(tmp_path / "nope", tmp_path)
    root = tmp_path / "Dataset004"
    write_dataset(root, AMOS_LABELS, cases=2)
    with pytest.raises(ValueError, match="unknown label set 'amoss'"):
        _dm(root, tmp_path, label_set="amoss")
    with pytest.raises(ValueError, match="leaves no training case"):
        _ = _dm(root, tmp_path, num_val_cases=2).splits
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "CT", "1": "PET"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="exactly one input channel"):
        _dm(root, tmp_path)


def test_validation_split_is_deterministic_and_stable() -> None:
    ids = [f"case{i:03d}" for i in range(20)]
    val = validation_cases(ids, 2)
    assert len(val) == 2 and val == validation_cases(list(reversed(ids)), 2)
    assert val <= validation_cases(ids, 5)  # a larger split contains the smaller one
