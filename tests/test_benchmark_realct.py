"""benchmarks/realct.py: its HU scores against medians computed by hand, its target check, and a
tiny end-to-end run on the shipped real-CT fixture."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import realct  # noqa: E402

from medsynth.data.nnunet import REALCT_DIR  # noqa: E402
from medsynth.labels import get_label_set  # noqa: E402
from medsynth.models import SynthesisModule  # noqa: E402
from medsynth.synthesis import load_model  # noqa: E402


def test_hu_scores_are_medians_in_hounsfield_units():
    """Real slices painted per class; the synthetic liver 0.05 brighter (20 HU on the 400 HU window),
    bone at a known value: the scores are exactly those offsets and medians."""
    ts = get_label_set("totalseg")
    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    mask[:, 1:7, 1:7] = 16  # body
    mask[:, 2:4, 2:4] = 6  # liver (AMOS)
    mask[:, 5, 5] = 8  # aorta
    ts_mask = torch.zeros_like(mask)
    ts_mask[:, 4, 1:3] = ts.by_name("vertebrae_L1").index
    real = torch.full((2, 1, 8, 8), 0.2)
    real[:, 0][mask == 6] = 0.5
    real[:, 0][ts_mask > 0] = 0.9
    synth = real.clone()
    synth[:, 0][mask == 6] += 0.05
    synth[:, 0][mask == 0] = 0.01
    batch = {"image": real, "mask": mask, "ts_mask": ts_mask}
    out = realct.hu_scorer((40.0, 400.0))(synth, batch)
    assert out["hu/liver"] == pytest.approx(20.0) and out["hu/aorta"] == pytest.approx(0.0)
    assert out["hu/air"] == pytest.approx(0.01 * 400 - 160) and np.isnan(out["hu/spleen"])
    assert out["hu/bone"] == out["hu/bone_real"] == pytest.approx(0.9 * 400 - 160)
    wide = realct.hu_scorer((0.0, 2000.0))(synth, batch)
    assert wide["hu/liver"] == pytest.approx(100.0)  # 0.05 of a 2000 HU window


def _cell(v: float) -> dict[str, float]:
    return {"mean": v, "sd": 0.0, "n": 4}


def test_targets_count_hu_dice_and_psnr():
    organs = realct.TARGET_HU
    real = {**{f"dice/{o}": _cell(0.9) for o in organs}, "dice/aorta": _cell(0.2)}
    good = {
        "psnr": _cell(21.0),
        **{f"hu/{o}": _cell(5.0) for o in organs},
        **{f"dice/{o}": _cell(0.85) for o in organs},
    }
    bad = {**good, "psnr": _cell(18.0), "hu/liver": _cell(-25.0), "dice/spleen": _cell(0.5)}
    results = {
        "real": real,
        "painting": {"psnr": _cell(19.0)},
        "methods": {"a": {"1.0": {"metrics": good}}, "b": {"1.0": {"metrics": bad}}},
    }
    a, b = realct.targets(results)
    assert (
        "5/5" in a
        and "Dice >= 0.9 x real for 4/4" in a
        and "not scorable: aorta" in a
        and "21.00 > painting" in a
    )
    assert "4/5" in b and "liver -25.0" in b and "for 3/4" in b and "18.00 <= painting" in b


def test_tiny_run_on_the_fixture(tmp_path, monkeypatch):
    """One method, one seed, seconds of training at 32x32: quality.json holds the HU metrics and the
    memorization check of every row, realct.md the tables and the target line, and the scored slices
    are the held-out slab (FRD left out here: PyRadiomics is slow; its scorer is tested in test_frd).
    ``--score-fractions 1.0`` scores the last checkpoint only; all three are still saved. With
    ``--window 0 2000`` the model is built with the data's window (a model of the paper's would be
    refused by the data) and its checkpoint records it."""
    monkeypatch.chdir(tmp_path)
    args = [
        "--source", str(REALCT_DIR), "--dataset", str(tmp_path / "ds"), "--cache", str(tmp_path / "cache"),
        "--budget", "0.02", "--seeds", "1", "--methods", "conditional_ddpm", "--image-size", "32",
        "--segmenter-steps", "2", "--num-steps", "2", "--output", str(tmp_path / "out"), "--no-frd",
        "--score-fractions", "1.0", "--window", "0", "2000",
    ]  # fmt: skip
    assert realct.main(args) == 0
    res = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert list(res["methods"]["conditional_ddpm"]) == ["1.0"]
    saved = sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("conditional_ddpm_*.ckpt"))
    assert saved == ["conditional_ddpm_100.ckpt", "conditional_ddpm_25.ckpt", "conditional_ddpm_50.ckpt"]
    assert res["window"] == [0.0, 2000.0]
    assert load_model(tmp_path / "out" / "checkpoints" / "conditional_ddpm_100.ckpt").window == (0.0, 2000.0)
    assert res["test_slab"] == [20, 34] and res["num_eval"] == 14
    for row in (res["real"], res["painting"], res["methods"]["conditional_ddpm"]["1.0"]["metrics"]):
        assert {"hu/liver", "hu/aorta", "hu/air", "hu/bone", "memorization/copy_rate"} <= set(row)
        assert "frd" not in row
    assert res["real"]["hu/liver"]["mean"] == 0.0
    # the real held-out slices against themselves: exactly the slices below the 5th percentile
    assert res["real"]["memorization/copy_rate"]["mean"] == pytest.approx(1 / 14)
    text = (tmp_path / "out" / "realct.md").read_text()
    assert "| conditional_ddpm |" in text and "median HU error <= 20" in text
    assert "copy rate" in (tmp_path / "out" / "quality.md").read_text()


def test_no_augment_reaches_the_training_data_and_the_header(tmp_path, monkeypatch):
    """``--no-augment`` trains on the stored slices: the training data module the protocol gets has
    augmentation off (on by default, as experiments/realct), and the result's header says so."""
    seen = []

    def fake_run_quality(s, methods, out, score_dm, train_dm, **kw):
        seen.append((train_dm.augmentation is not None, kw["header"]["augment"]))
        raise realct.ResumeError("stop here")

    monkeypatch.setattr(realct, "run_quality", fake_run_quality)
    base = ["--source", str(REALCT_DIR), "--dataset", str(tmp_path / "ds"), "--cache", str(tmp_path / "c"),
            "--image-size", "32", "--output", str(tmp_path / "out")]  # fmt: skip
    assert realct.main(base) == 2 and realct.main([*base, "--no-augment"]) == 2
    assert seen == [(True, True), (False, False)]


@pytest.mark.parametrize("fractions", [["0.3", "1.0"], ["0.5"]])
def test_score_fractions_outside_the_saved_checkpoints_are_refused(fractions, capsys):
    """Only the saved checkpoints (25, 50, 100 %) can be scored, and the last one always is: a CLI
    error naming the flag, and the protocol's Settings refuse them too."""
    with pytest.raises(SystemExit) as e:
        realct.parse_args(["--score-fractions", *fractions])
    assert e.value.code == 2 and "--score-fractions" in capsys.readouterr().err
    with pytest.raises(ValueError, match="include 1.0"):
        realct.Settings(score_fractions=tuple(map(float, fractions)))
    assert realct.Settings(score_fractions=(0.5, 1.0)).score_fractions == (0.5, 1.0)


class _Flat(SynthesisModule):
    """A TotalSegmentator-labelled stand-in that paints every pixel 0.55 (60 HU on the 40/400 window)."""

    def __init__(self, image_size: int = 32) -> None:
        super().__init__(image_size, label_set="totalseg")
        self.save_hyperparameters()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def _generate(self, mask, *, generator=None, **_):
        return torch.full((mask.shape[0], 1, *mask.shape[-2:]), 0.55) + 0.0 * self.w  # [B, 1, H, W]


def test_unseen_reports_errors_against_the_training_case_and_the_slab(tmp_path):
    """``--unseen`` on the fixture with a model that paints 60 HU everywhere: each structure's error
    is 60 minus its real median (clipped to the window) over the training slices (slab +- 4 left
    out) and over the held-out slab, both recomputed here from the dataset's files by name."""
    import lightning as L
    import nibabel as nib

    ckpt = tmp_path / "flat.ckpt"
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(_Flat())
    trainer.save_checkpoint(ckpt, weights_only=True)
    out = tmp_path / "unseen"
    args = ["--source", str(REALCT_DIR), "--dataset", str(tmp_path / "ds"), "--unseen", str(ckpt),
            "--variants", "1", "--seeds", "1", "--num-steps", "1", "--output", str(out)]  # fmt: skip
    assert realct.main(args) == 0
    summary = json.loads((out / "unseen.json").read_text())["summary"]
    ds = tmp_path / "ds"
    hu = np.asarray(nib.load(ds / "imagesTr" / "realct_0000.nii.gz").dataobj).astype(np.float64)
    lab = np.asarray(nib.load(ds / "labelsTr" / "realct.nii.gz").dataobj)
    names = json.loads((ds / "dataset.json").read_text())["labels"]  # nnU-Net v2: name -> id
    lo, hi = realct.REALCT_TEST_SLAB
    train_z = [z for z in range(hu.shape[2]) if z < lo - 4 or z >= hi + 4]
    for organ in ("liver", "spleen", "aorta"):
        s = summary[organ]
        for z, ref, error in (
            (train_z, s["reference_hu"], s["mean"]),
            (list(range(lo, hi)), s["slab_reference_hu"], s["slab_error"]["mean"]),
        ):
            want = float(np.median(hu[:, :, z][lab[:, :, z] == names[organ]]))
            assert ref == pytest.approx(want), organ
            assert error == pytest.approx(60.0 - min(max(want, -160.0), 240.0), abs=1e-3), organ
    assert "held-out slab's real median HU" in (out / "unseen.md").read_text()
