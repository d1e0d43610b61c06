"""AMOS22 layout: index, CT-only, validation of bad cases, the slice cache."""

import logging
import warnings

import numpy as np
import pytest
import torch

from medsynth.data import AMOSDataModule, BadCaseError
from medsynth.data import cache as cache_module
from medsynth.data.amos import index_amos
from medsynth.data.cache import SliceCache
from medsynth.data.transforms import PreprocessConfig, load_case

# Most tests use the default limits (val and test overlap); the split tests below check the warning.
pytestmark = pytest.mark.filterwarnings("ignore:AMOS22 val and test share:UserWarning")


def _dm(root, cache_dir, **kw):
    kw = {"image_size": 32, "batch_size": 4, "num_workers": 0, "progress": False, **kw}
    return AMOSDataModule(root, cache_dir=cache_dir, **kw)


def test_index_ct_only_and_splits(amos_root, tmp_path, caplog):
    root = amos_root(num_train=3, num_val=3, mri=(507, 512))
    with caplog.at_level(logging.INFO, logger="medsynth.data.amos"):
        index = index_amos(root)
    assert [c.case_id for c in index["training"]] == ["amos_0001", "amos_0002", "amos_0003"]
    assert [c.number for c in index["validation"]] == [4, 5, 6]
    assert "2 MRI cases" in caplog.text
    dm = _dm(root, tmp_path / "cache", max_val_cases=1, max_test_cases=2)
    assert [c.case_id for c in dm.splits["test"]] == ["amos_0004", "amos_0005"]
    assert [c.case_id for c in dm.splits["val"]] == ["amos_0006"]
    assert all(c.number <= 500 for s in dm.splits.values() for c in s)


def _ids(dm, split):
    return [c.case_id for c in dm.splits[split]]


def test_val_follows_test_disjoint(amos_root, tmp_path):
    """test = the first max_test_cases of `validation`, val = the next max_val_cases: disjoint."""
    root = amos_root(num_train=1, num_val=5)  # validation: amos_0002 .. amos_0006
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        dm = _dm(root, tmp_path / "c", max_test_cases=3, max_val_cases=2)
        assert _ids(dm, "test") == ["amos_0002", "amos_0003", "amos_0004"]
        assert _ids(dm, "val") == ["amos_0005", "amos_0006"]
        # max_val_cases=None: every case after the test cases.
        dm = _dm(root, tmp_path / "c", max_test_cases=2)
        assert _ids(dm, "test") == ["amos_0002", "amos_0003"]
        assert _ids(dm, "val") == ["amos_0004", "amos_0005", "amos_0006"]
        # More than enough: val takes only the next max_val_cases, deterministically.
        dm = _dm(root, tmp_path / "c", max_test_cases=1, max_val_cases=2)
        assert _ids(dm, "val") == ["amos_0003", "amos_0004"]
        assert _ids(_dm(root, tmp_path / "c", max_test_cases=1, max_val_cases=2), "val") == _ids(dm, "val")
        dm.prepare_data()
        dm.setup("fit")
        dm.setup("test")
    assert dm.datasets["val"].case_names == ["amos_0003", "amos_0004"]
    assert dm.datasets["test"].case_names == ["amos_0002"]
    assert not set(dm.datasets["val"].case_names) & set(dm.datasets["test"].case_names)


def test_val_falls_back_to_first_cases_with_warning(amos_root, tmp_path):
    root = amos_root(num_train=1, num_val=4)  # validation: amos_0002 .. amos_0005
    # Only 1 case after the 3 test cases, 2 wanted: val = the first 2 (overlapping test).
    with pytest.warns(UserWarning, match=r"share 2 of the 2 val cases.*4 CT cases"):
        dm = _dm(root, tmp_path / "c", max_test_cases=3, max_val_cases=2)
        assert _ids(dm, "test") == ["amos_0002", "amos_0003", "amos_0004"]
        assert _ids(dm, "val") == ["amos_0002", "amos_0003"]
    # No case after the test cases, max_val_cases=None: val = all of them.
    with pytest.warns(UserWarning, match="share 4 of the 4 val cases"):
        dm = _dm(root, tmp_path / "c", max_test_cases=4)
        assert _ids(dm, "val") == _ids(dm, "test")
    # max_test_cases=None: test = all, val = the first max_val_cases (as before), with a warning.
    with pytest.warns(UserWarning, match=r"share 1 of the 1 val cases.*max_test_cases=None"):
        dm = _dm(root, tmp_path / "c", max_val_cases=1)
        assert _ids(dm, "test") == ["amos_0002", "amos_0003", "amos_0004", "amos_0005"]
        assert _ids(dm, "val") == ["amos_0002"]
    # No val or no test case: nothing shared, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert _ids(_dm(root, tmp_path / "c", max_val_cases=0), "val") == []
        dm = _dm(root, tmp_path / "c", max_test_cases=0, max_val_cases=2)
        assert _ids(dm, "test") == [] and _ids(dm, "val") == ["amos_0002", "amos_0003"]


def test_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "no_such_amos"
    with pytest.raises(FileNotFoundError, match="no_such_amos"):
        _dm(missing, tmp_path / "cache").prepare_data()


def test_argument_validation(tmp_path):
    with pytest.raises(ValueError, match="on_bad_case"):
        _dm(tmp_path, tmp_path, on_bad_case="ignore")
    with pytest.raises(ValueError, match="max_test_cases"):
        _dm(tmp_path, tmp_path, max_test_cases=-1)


BAD_KINDS = {
    "unreadable": "unreadable",
    "shape": "shape",
    "label_range": "label values outside",
    "nan": "non-finite",
    "geometry": "geometry",
    "missing": "not found",
}


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_bad_case_raise_names_file_and_problem(amos_root, tmp_path, kind):
    root = amos_root(num_train=2, num_val=1, corrupt={2: kind})
    dm = _dm(root, tmp_path / "cache")
    with pytest.raises(BadCaseError, match=BAD_KINDS[kind]) as err:
        dm.prepare_data()
    assert "amos_0002.nii.gz" in str(err.value)
    # A second run (entry cached as bad) still refuses.
    with pytest.raises(BadCaseError, match="amos_0002"):
        _dm(root, tmp_path / "cache").prepare_data()


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_bad_case_skip_warns_and_drops(amos_root, tmp_path, kind):
    root = amos_root(num_train=2, num_val=1, corrupt={2: kind})
    dm = _dm(root, tmp_path / "cache", on_bad_case="skip")
    with pytest.warns(UserWarning, match=f"amos_0002.*{BAD_KINDS[kind]}"):
        dm.prepare_data()
    dm.setup("fit")
    assert dm.datasets["train"].case_names == ["amos_0001"]
    assert dm.datasets["val"].case_names == ["amos_0003"]


def test_cache_round_trip_equals_direct_decoding(amos_root, tmp_path):
    root = amos_root(num_train=2, num_val=1)
    dm = _dm(root, tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    ds = dm.datasets["train"]
    assert isinstance(ds.images[0], np.memmap), "slices are read through memory maps"
    assert not ds._images[0].flags.owndata and not ds._images[0].flags.writeable
    config = PreprocessConfig(image_size=32)
    for n, case in enumerate(dm.splits["train"]):
        direct = load_case(case.image, case.label, config, case.case_id)
        depth = len(direct.image)
        items = [ds[n * depth + k] for k in range(depth)]
        got_img = torch.stack([it["image"][0] for it in items]).numpy()
        got_msk = torch.stack([it["mask"] for it in items]).numpy()
        np.testing.assert_array_equal(got_img, direct.image.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(got_img, direct.image, atol=2**-11)
        np.testing.assert_array_equal(got_msk, direct.mask)
        assert [it["case_id"] for it in items] == [case.case_id] * depth
        assert [int(it["slice_index"]) for it in items] == list(range(depth))


def test_batch_contract_from_cache(amos_root, tmp_path):
    dm = _dm(amos_root(num_train=2, num_val=1), tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "mask", "case_id", "slice_index"}
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 1, 32, 32)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (4, 32, 32)
    assert batch["slice_index"].dtype == torch.int64 and isinstance(batch["case_id"], list)
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert 0 <= batch["mask"].min() and batch["mask"].max() <= 16


def test_cache_key_changes_with_preprocessing(amos_root, tmp_path):
    a = SliceCache(tmp_path, PreprocessConfig(image_size=32))
    assert a.root == SliceCache(tmp_path, PreprocessConfig(image_size=32)).root
    assert a.root != SliceCache(tmp_path, PreprocessConfig(image_size=64)).root
    assert a.root != SliceCache(tmp_path, PreprocessConfig(image_size=32, window_width=350.0)).root
    root = amos_root(num_train=1, num_val=1)
    _dm(root, tmp_path / "c").prepare_data()
    _dm(root, tmp_path / "c", image_size=16).prepare_data()
    dm = _dm(root, tmp_path / "c", image_size=16)
    dm.setup("fit")
    assert dm.datasets["train"][0]["image"].shape == (1, 16, 16)
    assert len(list((tmp_path / "c").glob("slices-*"))) == 2


def test_edited_file_is_rebuilt(amos_root, tmp_path):
    root = amos_root(num_train=1, num_val=1)
    dm = _dm(root, tmp_path / "c")
    dm.prepare_data()
    img = root / "imagesTr" / "amos_0001.nii.gz"
    import nibabel as nib

    vol = nib.load(str(img))
    edited = np.full(vol.shape, 1000.0, dtype=np.float32)
    edited[:2] = -1000.0  # still CT in HU: some air
    nib.save(nib.Nifti1Image(edited, vol.affine), str(img))
    dm = _dm(root, tmp_path / "c")
    dm.prepare_data()
    dm.setup("fit")
    assert float(dm.datasets["train"][0]["image"].median()) == 1.0  # 1000 HU: the window's top


def test_interrupted_build_is_not_complete(amos_root, tmp_path, monkeypatch):
    root = amos_root(num_train=3, num_val=1)
    calls = {"n": 0}
    real_save = np.save

    def crashing_save(path, arr, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # second case, after its image.npy: a crash mid-entry
            raise KeyboardInterrupt
        return real_save(path, arr, *a, **k)

    monkeypatch.setattr(cache_module.np, "save", crashing_save)
    dm = _dm(root, tmp_path / "c")
    with pytest.raises(KeyboardInterrupt):
        dm.prepare_data()
    monkeypatch.setattr(cache_module.np, "save", real_save)
    cases = dm.splits["train"]
    from medsynth.data.cache import files_fingerprint

    done = [dm.cache.has(c.case_id, files_fingerprint(c.image, c.label)) for c in cases]
    assert done == [True, False, False]
    assert not list(dm.cache.root.glob(".tmp-*")), "the half-written entry is removed"
    # A build killed outright leaves its temporary folder: it is never taken for an entry.
    second = cases[1]
    left = dm.cache.root / f".tmp-{second.case_id}-999-dead"
    left.mkdir()
    (left / "meta.json").write_text("{}")
    assert not dm.cache.has(second.case_id, files_fingerprint(second.image, second.label))
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        _dm(root, tmp_path / "c").setup("fit")
    # A later run resumes: only the missing entries are built.
    built = []
    real_write = dm.cache.write
    dm2 = _dm(root, tmp_path / "c")
    monkeypatch.setattr(
        dm2.cache, "write", lambda cid, *a, **k: built.append(cid) or real_write(cid, *a, **k)
    )
    dm2.prepare_data()
    assert built == ["amos_0002", "amos_0003", "amos_0004"]
    dm2.setup("fit")
    assert len(dm2.datasets["train"]) == 3 * 8


def test_setup_without_warnings_on_good_data(amos_root, tmp_path):
    root = amos_root(num_train=1, num_val=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        dm = _dm(root, tmp_path / "c", max_test_cases=1, max_val_cases=1)
        dm.prepare_data()
        dm.setup("test")
    assert dm.datasets["test"].case_names == ["amos_0002"]
