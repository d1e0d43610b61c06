"""Volume synthesis: geometry round trip, body class, nnU-Net export, bad input (medsynth.synthesis)."""

import json

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch

from medsynth.commands.synthesize import main
from medsynth.labels import BODY
from medsynth.models.base import SynthesisModule
from medsynth.synthesis import load_model, read_label_case, synthesize_files


class LutModel(SynthesisModule):
    """Deterministic stand-in: class k -> intensity k / 16 (so HU = 25 k - 160 under the 40/400 window)."""

    def __init__(self, image_size: int = 16, num_classes: int = 17) -> None:
        super().__init__(image_size, num_classes)
        self.save_hyperparameters()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def _generate(self, mask, *, generator=None):
        return (mask.float() / 16.0 + 0.0 * self.w).unsqueeze(1)  # [B, 1, H, W]

    def training_step(self, batch, batch_idx):
        return (self.w**2).sum() + 1.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(2, 1), batch_size=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "lut.ckpt"
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(LutModel(image_size=16))
    trainer.save_checkpoint(path)
    return path


def _labels(shape=(16, 16, 5), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, dtype=np.uint8)
    lab[2:14, 2:14, :] = BODY
    lab[4:8, 5:9, :] = 6
    lab[9:12, 3:6, 1:4] = rng.integers(1, 16)
    return lab


def _save(array, affine, path):
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def test_load_model_round_trip_and_errors(checkpoint, tmp_path):
    model = load_model(checkpoint)
    assert isinstance(model, LutModel) and model.image_size == 16
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_model(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="other.ckpt: not a medsynth model"):
        load_model(tmp_path / "other.ckpt")
    # A segmenter checkpoint is recognised, with where it belongs instead (also one written before
    # segmenters recorded their class).
    from medsynth.models import OrganSegmenter

    seg = OrganSegmenter(32, model_channels=4)
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(seg)
    trainer.save_checkpoint(tmp_path / "organ_segmenter.ckpt", weights_only=True)
    old = torch.load(tmp_path / "organ_segmenter.ckpt", weights_only=False)
    assert old.pop("medsynth_class") == "medsynth.models.segmenter.OrganSegmenter"
    torch.save(old, tmp_path / "old_segmenter.ckpt")
    for name in ("organ_segmenter.ckpt", "old_segmenter.ckpt"):
        with pytest.raises(
            ValueError, match=rf"{name} is an OrganSegmenter checkpoint.*evaluate --segmenter"
        ):
            load_model(tmp_path / name)
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        load_model(tmp_path / "junk.ckpt")


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([-1.5, 1.5, 3.0, 1.0]),  # LAS, as the phantom stores it
        np.diag([1.5, -1.5, -3.0, 1.0]),  # RPI: flipped in-plane and reversed slice order
        np.array(
            [[0, 1.5, 0, 0], [-1.5, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1.0]]
        ),  # transposed in-plane axes
    ],
    ids=["LAS", "RPI", "transposed"],
)
def test_output_keeps_input_geometry_and_maps_to_hu(checkpoint, tmp_path, affine):
    lab = _labels()
    src = _save(lab, affine, tmp_path / "case_a.nii.gz")
    out = tmp_path / "out"
    written = synthesize_files(load_model(checkpoint), [src], out, batch_size=2, progress=False)
    img = nib.load(written[0])
    assert written[0] == out / "case_a.nii.gz"
    assert img.shape == lab.shape and np.allclose(img.affine, affine)
    # Same in-plane size as the model: no resampling, so every voxel is exactly 25 * label - 160 HU.
    np.testing.assert_array_equal(np.asarray(img.dataobj), 25 * lab.astype(np.int16) - 160)


def test_body_class_from_matching_ct(checkpoint, tmp_path):
    organs = np.zeros((16, 16, 4), dtype=np.uint8)
    organs[6:9, 6:9] = 6
    hu = np.full(organs.shape, -1000.0, dtype=np.float32)
    hu[3:13, 3:13] = 40.0  # the body outline
    (tmp_path / "lab").mkdir()
    (tmp_path / "img").mkdir()
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    src = _save(organs, aff, tmp_path / "lab" / "c.nii.gz")
    _save(hu, aff, tmp_path / "img" / "c.nii.gz")
    case = read_label_case(src, tmp_path / "img" / "c.nii.gz")
    assert (case.mask == BODY).sum() == (10 * 10 - 9) * 4 and (case.mask == 6).sum() == 9 * 4
    with pytest.raises(ValueError, match="no body label"):
        read_label_case(src)
    written = synthesize_files(
        load_model(checkpoint), [src], tmp_path / "out", images=tmp_path / "img", progress=False
    )
    vol = np.asarray(nib.load(written[0]).dataobj)
    assert (vol == 25 * BODY - 160).sum() == (10 * 10 - 9) * 4


def test_nnunet_export(checkpoint, tmp_path):
    srcs = [_save(_labels(seed=i), np.eye(4), tmp_path / f"amos_{i:04d}.nii.gz") for i in (1, 2)]
    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), "--input", str(tmp_path), "--output", str(out),
                 "--nnunet", "Dataset501_Synth", "--no_progress"]) == 0  # fmt: skip
    ds = out / "Dataset501_Synth"
    meta = json.loads((ds / "dataset.json").read_text())
    assert (
        meta["channel_names"] == {"0": "CT"} and meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    )
    assert meta["labels"]["background"] == 0 and meta["labels"]["liver"] == 6 and len(meta["labels"]) == 16
    for src in srcs:
        name = src.name.removesuffix(".nii.gz")
        assert (ds / "imagesTr" / f"{name}_0000.nii.gz").is_file()
        lab = np.asarray(nib.load(ds / "labelsTr" / f"{name}.nii.gz").dataobj)
        np.testing.assert_array_equal(
            lab, np.where(_labels(seed=int(name[-1])) == BODY, 0, _labels(seed=int(name[-1])))
        )
    assert not list(out.glob(".*partial*"))


def test_bad_input_writes_nothing(checkpoint, tmp_path, capsys):
    good = _save(_labels(), np.eye(4), tmp_path / "good.nii.gz")
    bad = _save(np.full((16, 16, 2), 20, np.uint8), np.eye(4), tmp_path / "bad.nii.gz")
    out = tmp_path / "out"
    with pytest.raises(
        ValueError, match=r"bad.nii.gz: label values \[20\] do not fit the label set .amos. \(ids 0..16"
    ):
        synthesize_files(load_model(checkpoint), [good, bad], out, progress=False)
    assert not out.exists() or not any(out.iterdir())
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    rc = main(
        ["--checkpoint", str(checkpoint), "--input", str(tmp_path / "broken.nii.gz"), "--output", str(out)]
    )
    assert rc == 2 and "broken.nii.gz" in capsys.readouterr().err
    floats = _save(np.full((4, 4, 2), 1.5, np.float32), np.eye(4), tmp_path / "floats.nii.gz")
    with pytest.raises(ValueError, match="floats.nii.gz: labels must be integers"):
        read_label_case(floats)
    with pytest.raises(ValueError, match="Dataset123_Name"):
        synthesize_files(load_model(checkpoint), [good], out, nnunet="mydata", progress=False)


class NoiseModel(LutModel):
    """Class intensity plus noise drawn from the given generator(s): shows how slices are seeded."""

    def _generate(self, mask, *, generator=None):
        gens = generator if isinstance(generator, (list, tuple)) else [generator] * mask.shape[0]
        noise = torch.stack([torch.rand(mask.shape[1:], generator=g) for g in gens])  # [B, H, W]
        return (mask.float() / 16.0 + 0.05 * noise + 0.0 * self.w).unsqueeze(1)


def test_coherent_volumes_share_the_noise_along_z(tmp_path):
    """Slices with the same mask come out identical in coherent mode (adjacent-slice difference 0
    inside the liver, computed directly), and differ by the noise otherwise (uniform noise of
    amplitude 0.05: E|u - v| = 0.05 / 3)."""
    from medsynth.metrics import adjacent_slice_difference

    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    model = NoiseModel(image_size=16)
    trainer.fit(model)
    trainer.save_checkpoint(tmp_path / "noise.ckpt")
    lab = _labels(shape=(16, 16, 6))
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    src = _save(lab, affine, tmp_path / "c.nii.gz")
    loaded = load_model(tmp_path / "noise.ckpt")
    case = read_label_case(src)
    from medsynth.synthesis import synthesize_volume

    diffs = {}
    for coherent in (False, True):
        hu = synthesize_volume(loaded, case, batch_size=4, progress=False, coherent=coherent)  # [X, Y, Z]
        vol, mask = np.moveaxis(hu, 2, 0), np.moveaxis(lab, 2, 0)  # [Z, X, Y]
        diffs[coherent] = adjacent_slice_difference(vol / 400.0, mask, [6])[6]  # window units
    assert diffs[True] == pytest.approx(0.0, abs=1e-6)
    assert diffs[False] == pytest.approx(0.05 / 3, rel=0.25)
    # Batch size does not change a coherent volume either.
    a = synthesize_volume(loaded, case, batch_size=1, progress=False, coherent=True)
    b = synthesize_volume(loaded, case, batch_size=6, progress=False, coherent=True)
    np.testing.assert_array_equal(a, b)


def test_load_model_reads_a_checkpoint_that_records_paths(checkpoint, tmp_path):
    """A model trained on an nnU-Net data module keeps its data module's hyperparameters, Path
    objects among them (``root``, ``cache_dir``); torch's weights-only loader refuses those, so
    such a checkpoint used to fail in load_model. It loads, with the same weights."""
    from pathlib import Path, PurePosixPath

    ckpt = torch.load(checkpoint, weights_only=False)
    ckpt["datamodule_hyper_parameters"] = {
        "root": Path("datasets/Dataset700_RealCT"),
        "p": PurePosixPath("x"),
    }
    torch.save(ckpt, tmp_path / "with_paths.ckpt")
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        torch.load(tmp_path / "with_paths.ckpt", weights_only=True)
    model = load_model(tmp_path / "with_paths.ckpt")
    for (name, a), b in zip(load_model(checkpoint).state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
