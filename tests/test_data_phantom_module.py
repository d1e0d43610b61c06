"""PhantomDataModule: batch contract, determinism, distinct splits, same path and orientation as AMOS."""

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import reorient, save_nifti

from medsynth.data import PhantomDataModule
from medsynth.data.datamodule import phantom_case_seed
from medsynth.data.phantom import make_phantom_case
from medsynth.data.transforms import PreprocessConfig, load_case, preprocess_volume
from medsynth.labels import BODY

SMALL = {"num_train_cases": 2, "num_val_cases": 1, "num_test_cases": 1, "depth": 16, "image_size": 32}


@pytest.fixture(scope="module")
def dm():
    dm = PhantomDataModule(**SMALL, batch_size=5)
    dm.setup(None)
    return dm


def test_batch_contract(dm):
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [32, 16, 16]
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "mask", "case_id", "slice_index"}
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (5, 1, 32, 32)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (5, 32, 32)
    assert batch["slice_index"].dtype == torch.int64 and batch["slice_index"].shape == (5,)
    assert isinstance(batch["case_id"], list) and all(isinstance(c, str) for c in batch["case_id"])
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert 0 <= batch["mask"].min() and batch["mask"].max() <= BODY
    val = next(iter(dm.val_dataloader()))
    assert val["case_id"][0] == "phantom_val_0000" and val["slice_index"].tolist() == [0, 1, 2, 3, 4]


def test_same_data_as_direct_preprocessing(dm):
    """Slices equal the phantom volume run through preprocess_volume (the AMOS path)."""
    case = make_phantom_case(phantom_case_seed(0, "test", 0), depth=16, size=32)
    ref = preprocess_volume(case.image, case.label, case.affine, PreprocessConfig(image_size=32))
    ds = dm.datasets["test"]
    got = np.stack([ds[k]["image"][0].numpy() for k in range(16)])
    np.testing.assert_array_equal(got, ref.image)
    np.testing.assert_array_equal(np.stack([ds[k]["mask"].numpy() for k in range(16)]), ref.mask)


def test_deterministic_per_seed_distinct_across_seeds_and_splits(dm):
    again = PhantomDataModule(**SMALL)
    again.setup("fit")
    np.testing.assert_array_equal(again.datasets["train"].images[1], dm.datasets["train"].images[1])
    other = PhantomDataModule(**SMALL, seed=1)
    other.setup("fit")
    assert np.abs(other.datasets["train"].images[0] - dm.datasets["train"].images[0]).mean() > 0.01
    seeds = {phantom_case_seed(0, s, i) for s in ("train", "val", "test") for i in range(50)}
    assert len(seeds) == 150
    volumes = [dm.datasets["train"].images[0], dm.datasets["train"].images[1]]
    volumes += [dm.datasets["val"].images[0], dm.datasets["test"].images[0]]
    for i in range(4):
        for j in range(i):
            assert not np.array_equal(volumes[i], volumes[j])


def test_levels_show_different_organ_sets(dm):
    masks = dm.datasets["train"].masks[0]  # [D, S, S], slice 0 = pelvis
    sets = [frozenset(np.unique(m).tolist()) - {0, BODY} for m in masks]
    assert len(set(sets)) >= 5
    assert not any({6, 14} <= s for s in sets), "liver and bladder never on one slice"
    assert 14 in sets[1] or 14 in sets[2], "bladder low"
    assert any(6 in s for s in sets[-5:]), "liver high"


def test_phantom_display_orientation_and_nifti_agreement(tmp_path):
    """Phantom and AMOS files agree: the liver on the image left (patient right), spine at the bottom,
    and the phantom written as NIfTI in LPS order decodes to the same slices."""
    case = make_phantom_case(5, depth=32, size=64)
    ref = preprocess_volume(case.image, case.label, case.affine, PreprocessConfig(image_size=64))

    def centre(organ):
        k = int(np.argmax((ref.mask == organ).sum(axis=(1, 2))))  # the slice where it is largest
        rows, cols = np.nonzero(ref.mask[k] == organ)
        return rows.mean(), cols.mean()

    assert centre(6)[1] < 32 < centre(1)[1], "liver (patient right) on the image left, spleen right"
    assert centre(2)[1] < 32 < centre(3)[1], "right kidney on the image left, left kidney right"
    assert centre(2)[0] > 32 and centre(7)[0] < centre(2)[0], "kidneys posterior (low), stomach anterior"
    assert nib.aff2axcodes(case.affine) == ("R", "A", "S")
    (hu, lab), aff = reorient(
        (np.round(case.image).astype(np.int16), case.label), case.affine, (1, 0, 2), (0, 1)
    )
    config = PreprocessConfig(image_size=64)
    got = load_case(
        save_nifti(tmp_path / "i.nii.gz", hu, aff), save_nifti(tmp_path / "l.nii.gz", lab, aff), config
    )
    np.testing.assert_array_equal(got.mask, ref.mask)
    np.testing.assert_allclose(got.image, ref.image, atol=1.0 / 400 + 1e-6)  # int16 rounding: <= 0.5 HU


def test_fit_smoke_with_lightning():
    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            return ((batch["image"] - self.w) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = PhantomDataModule(num_train_cases=1, num_val_cases=0, num_test_cases=0, depth=4, image_size=16)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(Tiny(), datamodule=dm)
    assert trainer.global_step == 2


def test_argument_validation():
    with pytest.raises(ValueError, match="num_train_cases"):
        PhantomDataModule(num_train_cases=-1)
    with pytest.raises(ValueError, match="depth"):
        PhantomDataModule(depth=0)
    with pytest.raises(ValueError, match="image_size"):
        PhantomDataModule(image_size=4)
    with pytest.raises(ValueError, match="num_test_cases"):
        PhantomDataModule(num_test_cases=0, depth=2, image_size=16).setup("test")
