"""Label sets in the models: every method follows label_set, checkpoints carry it, synthesis and
fitting refuse masks or data of another set; mask-ablated training (organ_dropout)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY, TINY_SIZE, tiny_model, tiny_trainer

import medsynth.models
from medsynth.data import PhantomDataModule
from medsynth.labels import get_label_set
from medsynth.models import ConditionalDDPM
from medsynth.models.base import is_method
from medsynth.models.ddpm import drop_structures
from medsynth.synthesis import load_model, synthesize_files

METHODS = [
    getattr(medsynth.models, n) for n in medsynth.models.__all__ if is_method(getattr(medsynth.models, n))
]


@pytest.mark.parametrize("cls", METHODS, ids=[c.__name__ for c in METHODS])
def test_every_method_follows_its_label_set(cls) -> None:
    model = tiny_model(cls, label_set="totalseg")
    assert model.num_classes == 119 and model.label_set.body == 118
    mask = torch.full((1, TINY_SIZE, TINY_SIZE), 118, dtype=torch.long)
    mask[:, 8:16, 8:16] = 5  # liver in TotalSegmentator ids
    out = model.generate(mask, generator=torch.Generator().manual_seed(0), **TINY[cls.__name__]["options"])
    assert out.shape == (1, 1, TINY_SIZE, TINY_SIZE)
    with pytest.raises(ValueError, match=r"0\.\.118"):
        model.generate(mask + 1, **TINY[cls.__name__]["options"])
    with pytest.raises(ValueError, match="num_classes=17 disagrees with label_set='totalseg'"):
        tiny_model(cls, label_set="totalseg", num_classes=17)
    with pytest.raises(ValueError, match="unknown label set"):
        tiny_model(cls, label_set="nope")


def _dataset_json(tmp_path):
    path = tmp_path / "ds" / "dataset.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2}}))
    return path


def test_checkpoint_keeps_the_label_set_without_its_file(tmp_path) -> None:
    path = _dataset_json(tmp_path)
    model = tiny_model(ConditionalDDPM, label_set=str(path))
    assert model.label_set.names() == ("background", "liver", "tumour", "body")
    trainer = tiny_trainer(max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    path.unlink()  # the dataset.json is gone; the checkpoint's record is enough
    loaded = load_model(tmp_path / "m.ckpt")
    assert loaded.label_set == model.label_set and loaded.num_classes == 4


def test_synthesize_refuses_masks_of_another_label_set(tmp_path, capsys) -> None:
    model = tiny_model(ConditionalDDPM)  # AMOS: ids 0..16
    trainer = tiny_trainer(max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    lab = np.full((TINY_SIZE, TINY_SIZE, 2), 16, np.uint8)
    lab[4:9, 4:9] = 52  # a TotalSegmentator id (vertebrae) in an AMOS model's input
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "ts_mask.nii.gz")
    with pytest.raises(
        ValueError, match=r"ts_mask.nii.gz: label values \[52\] do not fit the label set 'amos'"
    ):
        synthesize_files(load_model(tmp_path / "m.ckpt"), [tmp_path / "ts_mask.nii.gz"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fit_refuses_data_of_another_label_set() -> None:
    model = tiny_model(ConditionalDDPM)
    dm = PhantomDataModule(
        num_train_cases=1,
        num_val_cases=0,
        num_test_cases=0,
        depth=2,
        image_size=TINY_SIZE,
        label_set="totalseg",
    )
    with pytest.raises(ValueError, match="label set 'totalseg' .* is not the model's 'amos'"):
        tiny_trainer(max_steps=1, limit_val_batches=0).fit(model, dm)


def test_drop_structures_rate_and_what_it_keeps() -> None:
    """Each structure of each slice is dropped whole with probability p: over 400 slices with three
    organs, the dropped share is p within 4 binomial SDs; background and body never change."""
    labels = get_label_set("amos")
    mask = torch.full((400, 8, 8), 16)
    mask[:, :2] = 0
    mask[:, 2:4, :4], mask[:, 4:6, :4], mask[:, 6:, :] = 6, 1, 3
    out = drop_structures(mask, labels, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(out[mask == 0], mask[mask == 0]) and (out[mask == 16] == 16).all()
    for organ in (6, 1, 3):
        per_slice = (out == organ).flatten(1).any(1)  # slices that kept the organ
        kept = (out == organ).flatten(1).sum(1)
        full = (mask == organ).flatten(1).sum(1)
        assert set(kept.tolist()) <= {0, int(full[0])}  # all or nothing per slice
        share = 1 - per_slice.float().mean().item()
        assert abs(share - 0.3) < 4 * (0.3 * 0.7 / 400) ** 0.5
    assert torch.equal(drop_structures(mask, labels, 0.0), mask)


def test_organ_dropout_is_validated() -> None:
    with pytest.raises(ValueError, match="organ_dropout"):
        tiny_model(ConditionalDDPM, organ_dropout=1.0)


def test_load_model_reads_a_checkpoint_written_by_medsynth_fit(tmp_path, monkeypatch) -> None:
    """A LightningCLI-built model re-instantiates through jsonargparse on load (its hparams carry
    the instantiator): load_model must not pass the recorded table where the parser wants a name."""
    from pathlib import Path

    from medsynth.cli import lightning_cli

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    cli = lightning_cli(
        ["--config", str(root / "experiments/phantom/mask_guided_ddpm.yaml"),
         "--model.init_args.model_channels", "8", "--data.init_args.image_size", "32"],
        run=False,
    )  # fmt: skip
    assert "_instantiator" in cli.model.hparams
    cli.trainer.strategy.connect(cli.model)
    cli.trainer.save_checkpoint(tmp_path / "cli.ckpt")
    loaded = load_model(tmp_path / "cli.ckpt")
    assert type(loaded).__name__ == "MaskGuidedDDPM" and loaded.label_set.name == "amos"
    assert loaded.hparams.noise_schedule == "cosine"  # the phantom recipe came along


def test_totalsegmentator_dice_by_name_in_another_label_set(tmp_path) -> None:
    """TotalSegmentator ids map onto a dataset.json set by name (liver -> 1), structures the set
    lacks become background; the AMOS default is unchanged (liver 5 -> 6)."""
    from totalsegmentator.map_to_binary import class_map

    from medsynth.metrics import TotalSegmentatorScorer

    ts = {n: i for i, n in class_map["total"].items()}
    seg = np.zeros((4, 4, 2), np.int64)
    seg[0], seg[1], seg[2] = ts["liver"], ts["vertebrae_L1"], ts["spleen"]
    ct = nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4))
    custom = TotalSegmentatorScorer(segment_fn=lambda _: seg, label_set=str(_dataset_json(tmp_path)))
    out = custom.segment(ct)
    assert (out[0] == 1).all() and (out[1] == 0).all() and (out[2] == 0).all() and (out[3] == 0).all()
    assert custom.roi_subset == ["liver"]
    amos = TotalSegmentatorScorer(segment_fn=lambda _: seg).segment(ct)
    assert (amos[0] == 6).all() and (amos[1] == 0).all() and (amos[2] == 1).all()
