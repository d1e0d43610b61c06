"""The real-data path on medsynth's real-CT fixture (one patient, LAS, HU, TotalSegmentator labels).

Every expectation is computed independently of the pipeline: from the fixture's raw voxels with
plain numpy (orientation by transposes and flips, the window by its formula), from the fixture's
own id -> name table (the remap), or from hand-made volumes (the z split, organ_slab).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_volume, save_nifti

from medsynth.cli import main as cli_main
from medsynth.data import NNUNetDataModule
from medsynth.data.nnunet import organ_slab, read_label_names, realct_files
from medsynth.data.transforms import AIR_HU, PreprocessConfig, load_case
from medsynth.io import DatasetPair, write_nnunet_dataset
from medsynth.labels import get_label_set

CT, LABELS, NAMES = realct_files()
PAIR = DatasetPair(CT, LABELS, "realct")
TABLE = {int(r["id"]): r["structure"] for r in csv.DictReader(NAMES.open())}
RAW_CT = np.asanyarray(nib.load(str(PAIR.image)).dataobj)  # [X, Y, Z] int16, LAS
RAW_LAB = np.asanyarray(nib.load(str(PAIR.label)).dataobj)
TS = get_label_set("totalseg")


def _las_to_display(volume: np.ndarray) -> np.ndarray:
    """Independent reference of the radiological display ``[D, rows, cols]`` of a LAS array.

    LAS: axis 0 runs toward the patient's left, axis 1 toward anterior, axis 2 toward superior.
    Display rows run anterior -> posterior (axis 1 reversed), columns run right -> left (axis 0).
    """
    return np.ascontiguousarray(np.transpose(volume[:, ::-1, :], (2, 1, 0)))


@pytest.fixture(scope="module")
def native():
    """The fixture through the training pipeline at its own size (no resize), TotalSegmentator ids
    as stored (file max 118, body 119)."""
    config = PreprocessConfig(image_size=RAW_CT.shape[0], max_label=118, body_label=119)
    return load_case(PAIR.image, PAIR.label, config, "realct")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "Dataset700_RealCT"
    write_nnunet_dataset([PAIR], root, NAMES)
    return root


def test_fixture_is_what_its_readme_says():
    img = nib.load(str(PAIR.image))
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
    assert img.get_data_dtype() == np.int16 and RAW_CT.shape == (128, 128, 80)
    np.testing.assert_allclose(img.header.get_zooms(), (2.8125, 2.8125, 2.5))
    assert RAW_CT.min() == -2048 and 118 in RAW_LAB and 117 not in RAW_LAB  # older numbering
    assert TABLE[118] == "costal_cartilages" and TABLE[5] == "liver"


def test_las_storage_becomes_the_radiological_display(native):
    """Slices come out as a viewer shows them: the stored labels, reoriented by hand, equal the
    pipeline's wherever the pipeline kept a label (body is added on top of 0 only)."""
    ref = _las_to_display(RAW_LAB)
    labelled = native.mask <= 118
    np.testing.assert_array_equal(native.mask[labelled], ref[labelled])
    assert np.array_equal(ref > 0, (native.mask > 0) & (native.mask <= 118))
    liver_cols = np.nonzero(native.mask == 5)[2]
    spleen_cols = np.nonzero(native.mask == 1)[2]
    assert liver_cols.mean() < 64 < spleen_cols.mean()  # patient right on the image left
    spine_rows = np.nonzero(native.mask == 31)[1]  # vertebra L1 behind the organs: bottom half
    assert spine_rows.mean() > 64


def test_window_is_the_papers_formula_and_padding_is_air(native):
    ref = _las_to_display(RAW_CT).astype(np.float64)
    expected = np.clip((np.maximum(ref, AIR_HU) + 160.0) / 400.0, 0.0, 1.0)
    np.testing.assert_allclose(native.image, expected, atol=1e-6)
    # A window reaching below -1024 HU sees the scan circle's -2048 as air, not as a darker value.
    wide = PreprocessConfig(
        image_size=128, max_label=118, body_label=119, window_level=-500.0, window_width=2000.0
    )
    case = load_case(PAIR.image, PAIR.label, wide, "realct")
    padding = ref == -2048
    air = (ref > -1030) & (ref < -1018)  # air outside the body, about -1024 HU
    assert padding.sum() > 1000
    np.testing.assert_allclose(case.image[padding], (AIR_HU + 1500.0) / 2000.0, atol=1e-6)
    assert abs(float(np.median(case.image[air])) - float(np.median(case.image[padding]))) < 0.005


def test_body_class_leaves_out_the_table(native):
    """The table is bright (>-500 HU) below the patient's back; it stays background, while the
    body outline (fat, lungs, bowel gas) is body or a structure."""
    ref = _las_to_display(RAW_CT)
    lowest_body_row = np.nonzero(native.mask.any(axis=(0, 2)))[0].max()
    below = ref[:, lowest_body_row + 1 :, :]
    assert (below > -500).sum() > 500  # the table is in the image, under the body
    assert not native.mask[:, lowest_body_row + 1 :, :].any()
    lungs = [i for i, n in TABLE.items() if n.startswith("lung_")]
    assert np.isin(native.mask, lungs).sum() > 0 and (native.mask == 119).sum() > 0.1 * native.mask.size


def test_remap_by_name_to_totalsegmentator_and_amos(dataset, tmp_path):
    """The file's ids become the training set's through the names in structures.csv: costal
    cartilages 118 -> today's 117, liver 5 -> 5 (TotalSegmentator) and -> 6 (AMOS), and every
    structure AMOS has not becomes body."""
    raw = _las_to_display(RAW_LAB)
    for label_set in ("totalseg", "amos"):
        target = get_label_set(label_set)
        with pytest.raises(ValueError, match="remap='by_name'"):
            NNUNetDataModule(dataset, label_set=label_set, cache_dir=tmp_path)
        dm = NNUNetDataModule(
            dataset, label_set=label_set, remap="by_name", cache_dir=tmp_path, image_size=128,
            num_workers=0, num_val_cases=0, progress=False,
        )  # fmt: skip
        dm.prepare_data()
        dm.setup("fit")
        got = dm.datasets["train"].masks[0]
        names = {c.name: c.index for c in target.classes} | {
            c.totalseg: c.index for c in target.classes if c.totalseg
        }
        for file_id in np.unique(raw[raw > 0]):
            want = names.get(TABLE[int(file_id)], target.body)
            assert np.all(got[raw == file_id] == want), (label_set, TABLE[int(file_id)])
    assert get_label_set("totalseg").by_name("costal_cartilages").index == 117


def test_z_split_holds_out_a_slab_with_a_gap(dataset, tmp_path):
    dm = NNUNetDataModule(
        dataset, label_set="totalseg", remap="by_name", cache_dir=tmp_path, image_size=32,
        test_slab=(20, 34), slab_gap=4, num_workers=0, progress=False,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    index = lambda split: [int(dm.datasets[split][i]["slice_index"]) for i in range(len(dm.datasets[split]))]  # noqa: E731
    assert index("test") == index("val") == list(range(20, 34))
    assert index("train") == [*range(0, 16), *range(38, 80)]
    full = load_case(PAIR.image, PAIR.label, dm.config, "realct")
    np.testing.assert_array_equal(dm.datasets["test"][3]["mask"].numpy(), full.mask[23])
    ids = [
        TS.by_name(n).index
        for n in ("liver", "spleen", "kidney_right", "kidney_left", "stomach", "pancreas", "aorta")
    ]
    held = np.stack([dm.datasets["test"][i]["mask"].numpy() for i in range(14)])
    assert all((held == i).any() for i in ids)  # the slab shows every organ the protocol scores
    for bad, match in (((30, 20), "0 <= start < stop"), ((70, 90), "past the 80 slices")):
        dm = NNUNetDataModule(
            dataset, label_set="totalseg", remap="by_name", cache_dir=tmp_path, image_size=32,
            test_slab=bad, num_workers=0, progress=False,
        ) if bad[0] < bad[1] else None  # fmt: skip
        with pytest.raises(ValueError, match=match):
            if dm is None:
                NNUNetDataModule(dataset, label_set="totalseg", remap="by_name", test_slab=bad)
            else:
                dm.prepare_data()
                dm.setup("test")
    with pytest.raises(ValueError, match="leaves no training slice"):
        dm = NNUNetDataModule(
            dataset, label_set="totalseg", remap="by_name", cache_dir=tmp_path, image_size=32,
            test_slab=(2, 78), slab_gap=4, num_workers=0, progress=False,
        )  # fmt: skip
        dm.prepare_data()
        dm.setup("fit")


def test_organ_slab_is_the_shortest_window():
    """Hand-made: organ 1 (one pixel each) on slices 2, 3 and 9, organ 2 on slice 6: the shortest
    window with both is 3..6 (4 slices), not 6..9; with 2 pixels of each required it is 2..6."""
    mask = np.zeros((12, 4, 4), np.uint8)
    mask[2, 0, 0] = mask[3, 0, 0] = mask[9, 0, 0] = 1
    mask[6, 1, 1] = mask[6, 2, 2] = 2
    assert organ_slab(mask, [1, 2]) == (3, 7)
    assert organ_slab(mask, [1, 2], min_pixels=2) == (2, 7)
    with pytest.raises(ValueError, match=r"\[3\]"):
        organ_slab(mask, [1, 3])


def test_dataset_command_and_its_refusals(tmp_path, capsys):
    out = tmp_path / "Dataset701_X"
    args = ["dataset", "--images", str(PAIR.image), "--labels", str(PAIR.label), "--output", str(out)]
    # Today's TotalSegmentator table does not number these labels (118 is costal cartilages here).
    assert cli_main([*args, "--names", "totalseg"]) == 2
    err = capsys.readouterr().err
    assert "labels.nii.gz" in err and "[118]" in err and "--names" in err
    assert not out.exists()  # nothing written
    assert cli_main([*args, "--names", str(NAMES), "--case", "p1"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"]["costal_cartilages"] == 118 and meta["labels"]["background"] == 0
    assert (out / "imagesTr" / "p1_0000.nii.gz").read_bytes() == PAIR.image.read_bytes()
    assert cli_main([*args, "--names", str(NAMES)]) == 2  # refuses to overwrite
    assert "not empty" in capsys.readouterr().err


def test_bad_inputs_are_named(tmp_path):
    hu, lab, aff = make_volume()
    names = tmp_path / "names.csv"
    names.write_text("id,structure\n1,spleen\n6,liver\n14,urinary_bladder\n")
    good = DatasetPair(
        save_nifti(tmp_path / "ct.nii.gz", hu, aff), save_nifti(tmp_path / "lab.nii.gz", lab, aff), "c"
    )
    # Ids with gaps are renumbered 1..N, keeping the names.
    root = write_nnunet_dataset([good], tmp_path / "D1", names)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "spleen": 1, "liver": 2, "urinary_bladder": 3}
    stored = np.asanyarray(nib.load(str(root / "labelsTr" / "c.nii.gz")).dataobj)
    np.testing.assert_array_equal(stored, np.select([lab == 1, lab == 6, lab == 14], [1, 2, 3], 0))
    eight_bit = save_nifti(tmp_path / "ct8.nii.gz", np.clip(hu + 1000, 0, 255).astype(np.uint8), aff)
    shifted = aff.copy()
    shifted[0, 3] += 5.0
    cases = {
        "no air": DatasetPair(eight_bit, good.label, "c"),
        "grid": DatasetPair(good.image, save_nifti(tmp_path / "lab_moved.nii.gz", lab, shifted), "c"),
        "shape": DatasetPair(good.image, save_nifti(tmp_path / "lab_cut.nii.gz", lab[:, :, :-1], aff), "c"),
        r"ids \[6\]": DatasetPair(good.image, good.label, "c"),
    }
    for match, pair in cases.items():
        table = names if "ids" not in match else _table(tmp_path, "1,spleen\n14,urinary_bladder\n")
        with pytest.raises(ValueError, match=match):
            write_nnunet_dataset([pair], tmp_path / "D2", table)
        assert not (tmp_path / "D2").exists()
    for text, match in (
        ("idx,name\n1,a\n", "'id' column"),
        ("id,name\n1,a\n1,b\n", "twice"),
        ("id,name\nx,a\n", "not an integer"),
    ):
        with pytest.raises(ValueError, match=match):
            read_label_names(_table(tmp_path, text, header=False))


def _table(tmp_path, rows: str, header: bool = True):
    path = tmp_path / f"t{abs(hash(rows))}.csv"
    path.write_text(("id,structure\n" if header else "") + rows)
    return path


def test_dataset_json_declaring_other_ids_names_the_fix(tmp_path):
    """A dataset.json that declares today's TotalSegmentator ids while the volume holds the older
    118: the case is refused naming the file, the values and how to rebuild the dataset."""
    root = tmp_path / "Dataset702_Y"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / "realct_0000.nii.gz").write_bytes(PAIR.image.read_bytes())
    (root / "labelsTr" / "realct.nii.gz").write_bytes(PAIR.label.read_bytes())
    labels = {"background": 0, **{c.name: c.index for c in TS.classes[1:] if c.index != TS.body}}
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": labels, "file_ending": ".nii.gz"})
    )
    dm = NNUNetDataModule(
        root, cache_dir=tmp_path / "c", image_size=32, num_val_cases=0, num_workers=0, progress=False
    )
    with pytest.raises(Exception, match=r"realct.nii.gz.*\[118\].*medsynth dataset --names"):
        dm.prepare_data()


def test_augmentation_moves_image_and_mask_together():
    """Flip only: exactly the column flip. Any draw: the mask still labels the image it came with
    (an image painted with mask / 16 keeps that relation away from class edges, since the image is
    interpolated bilinearly and the mask by nearest neighbour); the same torch seed gives the same
    draw, another seed another."""
    import torch

    from medsynth.data.augment import AugmentedSlices, SliceAugmentation

    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[4:20, 6:14], mask[12:28, 18:30] = 5, 11
    item = {"image": (mask.float() / 16)[None], "mask": mask, "case_id": "c", "slice_index": torch.tensor(0)}
    flip = AugmentedSlices([item], SliceAugmentation(flip=1.0, prob=0.0), 32)[0]
    torch.testing.assert_close(flip["mask"], mask.flip(-1))
    torch.testing.assert_close(flip["image"], item["image"].flip(-1))
    aug = AugmentedSlices([item], SliceAugmentation(rotate_deg=20, scale=0.2, translate=0.1), 32)
    torch.manual_seed(3)
    a = aug[0]
    interior = (
        torch.nn.functional.max_pool2d(a["mask"][None, None].float(), 3, 1, 1)[0, 0]
        == -torch.nn.functional.max_pool2d(-a["mask"][None, None].float(), 3, 1, 1)[0, 0]
    )
    assert not torch.equal(a["mask"], mask) and interior.sum() > 500
    torch.testing.assert_close(a["image"][0][interior] * 16, a["mask"][interior].float(), atol=1e-4, rtol=0)
    torch.manual_seed(3)
    torch.testing.assert_close(aug[0]["image"], a["image"])
    assert not torch.equal(aug[0]["image"], a["image"])  # the next draw differs


def test_window_reaches_the_model_and_a_mismatch_is_refused(tmp_path, monkeypatch):
    """The CLI gives the model the data module's window; a model with another window than its data
    stops before training, naming both; to_hu is the window's inverse."""
    import torch
    from conftest import tiny_model, tiny_phantom, tiny_trainer

    from medsynth.cli import lightning_cli
    from medsynth.models import ConditionalDDPM

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model:\n  class_path: medsynth.models.ConditionalDDPM\n  init_args: {model_channels: 8, channel_mult: [1, 2], "
        "num_res_blocks: 1, attention_resolutions: []}\n"
        "data:\n  class_path: medsynth.data.PhantomDataModule\n  init_args: {image_size: 32, depth: 2, num_train_cases: 1, "
        "num_val_cases: 0, num_test_cases: 0, window_level: 0, window_width: 2000}\n"
        "trainer: {logger: false, enable_checkpointing: false, max_steps: 1}\n"
    )
    cli = lightning_cli(["--config", str(cfg)], run=False)
    assert cli.model.window == (0.0, 2000.0) == cli.datamodule.window
    model = tiny_model(ConditionalDDPM)
    with pytest.raises(ValueError, match=r"level 0, width 2000.*level 40, width 400"):
        tiny_trainer(max_steps=1).fit(model, tiny_phantom(window_level=0.0, window_width=2000.0))
    x = torch.tensor([0.0, 0.25, 1.0])
    assert cli.model.to_hu(x).tolist() == [-1000.0, -500.0, 1000.0]
    assert model.to_hu(x).tolist() == [-160.0, -60.0, 240.0]


def test_demo_on_the_real_fixture(tmp_path):
    """``medsynth demo --data realct`` (quick settings) runs end to end on the shipped fixture: the
    report is written and the test split it scored is the held-out slab of experiments/realct."""
    import yaml

    from medsynth.commands.demo import main as demo_main
    from medsynth.data.nnunet import REALCT_TEST_SLAB
    from medsynth.demo import DemoConfig, demo_datamodule

    base = yaml.safe_load((Path(__file__).parents[1] / "experiments" / "realct" / "_base.yaml").read_text())
    assert tuple(base["data"]["init_args"]["test_slab"]) == REALCT_TEST_SLAB
    out = tmp_path / "demo"
    assert demo_main(["--quick", "--data", "realct", "--output", str(out), "--accelerator", "cpu"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["config"]["data"] == "realct" and np.isfinite(summary["test"]["test/psnr"])
    for name in (
        "report.md",
        "report.png",
        "checkpoints/mask_guided_ddpm.ckpt",
        "data/Dataset700_RealCT/dataset.json",
    ):
        assert (out / name).is_file(), name
    dm = demo_datamodule(DemoConfig(data="realct", image_size=32), out)
    dm.prepare_data()
    dm.setup("test")
    test = dm.datasets["test"]
    assert [int(test[i]["slice_index"]) for i in range(len(test))] == list(range(*REALCT_TEST_SLAB))
