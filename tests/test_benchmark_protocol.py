"""benchmarks/protocol: the quality protocol's pieces against independent references.

The step budget on a fake clock (a known s/step gives the exact step count, checkpoints at the
exact global steps), aggregate against the statistics module, score on a hand-made batch whose
PSNR, organ errors, Dice and FD have closed forms, the organ table of another label set against
TotalSegmentator's own class map, the reference rows recomputed from the committed segmenter
against the committed quality.json, and the calibration file (its errors, and a quality.py run
that trains the step counts it implies).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.protocol import (
    TARGET_ORGANS,
    BudgetCheckpoints,
    CalibrationError,
    ResumeError,
    SegmenterFeatures,
    Settings,
    aggregate,
    calibrate,
    calibration_entry,
    check_calibration,
    check_settings,
    checkpoint_steps,
    diffusion_steps,
    eval_slices,
    load_segmenter,
    organ_hu_scorer,
    organ_table,
    phantom,
    quiet_trainer,
    rank_agreement,
    read_calibration,
    reference_rows,
    score,
    sha256,
    step_budget,
    train_method,
    trained_checkpoints,
    write_calibration,
)
from benchmarks.protocol.run import calibration_settings
from medsynth.labels import AMOS, get_label_set

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quality_30"


# ------------------------------------------------------------------------------ step budget
class FakeClock:
    """Seconds that pass only when a training step says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Toy(L.LightningModule):
    """One linear layer whose every training step takes exactly ``seconds`` on ``clock``."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        super().__init__()
        self.clock, self.seconds = clock, seconds
        self.lin = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        self.clock.now += self.seconds
        return self.lin(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class ToyData(L.LightningDataModule):
    """Eight batches of two random rows per epoch."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=2)


def test_calibration_of_a_known_step_time_gives_the_exact_step_budget() -> None:
    """A step that takes 0.25 s on the fake clock calibrates to 0.25 s/step (exact in binary),
    so 1 minute buys 60 / 0.25 = 240 steps; the warm-up steps are left out."""
    clock = FakeClock()
    sps = calibrate(Toy(clock, 0.25), ToyData(), steps=7, warmup=3, clock=clock)
    assert sps == 0.25
    assert clock.now == 0.25 * 10  # warm-up + timed steps were trained
    assert step_budget(1.0, sps) == 240
    # rounded half up (Python's round() would give 2 for 2.5), never below one step
    assert step_budget(0.05, 1.2) == 3  # 3 / 1.2 = 2.5
    assert step_budget(0.1, 0.7) == 9  # 6 / 0.7 = 8.57
    assert step_budget(0.001, 10.0) == 1
    with pytest.raises(ValueError, match="seconds_per_step"):
        step_budget(1.0, 0.0)


def test_step_budget_checkpoints_land_at_25_50_100_percent_of_the_steps(tmp_path: Path) -> None:
    """Trained for step_budget(0.05 min, 0.25 s) = 12 steps: checkpoints at global steps 3, 6 and
    12, and each file holds that global step; for 10 steps 2.5 rounds up to 3."""
    assert checkpoint_steps(10) == {0.25: 3, 0.5: 5, 1.0: 10}
    assert checkpoint_steps(400) == {0.25: 100, 0.5: 200, 1.0: 400}
    assert checkpoint_steps(2) == {0.25: 1, 0.5: 1, 1.0: 2}
    clock = FakeClock()
    steps = step_budget(0.05, 0.25)
    assert steps == 12
    torch.manual_seed(0)
    saved = train_method(Toy(clock, 0.25), "toy", ToyData(), tmp_path, steps=steps)
    assert {f: s["step"] for f, s in saved.items()} == {0.25: 3, 0.5: 6, 1.0: 12}
    for f, s in saved.items():
        assert Path(s["path"]).name == f"toy_{round(100 * f)}.ckpt"
        assert torch.load(s["path"], weights_only=False)["global_step"] == s["step"]
    assert clock.now == 12 * 0.25  # and not a step more
    # a stopped run's checkpoints are found again only for the same step budget, all of them
    found = trained_checkpoints("toy", tmp_path, steps)
    assert {f: (i["path"], i["step"]) for f, i in found.items()} == {
        f: (i["path"], i["step"]) for f, i in saved.items()
    }
    assert trained_checkpoints("toy", tmp_path, 13) is None  # another budget: 25 % would be step 3, 100 % 13
    assert trained_checkpoints("toy", tmp_path, 8) is None  # 25 % would be step 2
    Path(saved[0.5]["path"]).unlink()
    assert trained_checkpoints("toy", tmp_path, steps) is None


def test_wall_clock_checkpoints_at_the_first_step_past_each_fraction(tmp_path: Path) -> None:
    """A 10 s budget, 1 s per step on the fake clock: 25 % (2.5 s) is passed after step 3, 50 %
    (5 s) is reached at step 5; 100 % is the end of training."""
    clock = FakeClock()
    cb = BudgetCheckpoints("toy", tmp_path, budget_s=10.0, clock=clock)
    quiet_trainer(max_steps=10, callbacks=[cb]).fit(Toy(clock, 1.0), datamodule=ToyData())
    assert {f: s["step"] for f, s in cb.saved.items()} == {0.25: 3, 0.5: 5, 1.0: 10}
    assert {f: s["seconds"] for f, s in cb.saved.items()} == {0.25: 3.0, 0.5: 5.0, 1.0: 10.0}
    with pytest.raises(ValueError, match="exactly one"):
        BudgetCheckpoints("toy", tmp_path, budget_s=10.0, total_steps=10)


class StubDiffusion:
    """What diffusion_steps uses of a diffusion model; each loss takes 1 s on the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.net, self.updates = clock, torch.nn.Linear(2, 1), 0
        self.ema = self

    def update(self, net: torch.nn.Module) -> None:
        self.updates += 1

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.net.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched}}

    def _losses(self, net, batch, training: bool):
        self.clock.now += 1.0
        return {"loss": net(batch["x"]).pow(2).mean()}


def test_diffusion_steps_stop_at_the_step_count_or_the_time_limit() -> None:
    """Steps cycle over the batches; a 3.5 s limit at 1 s per step stops after ceil(3.5) = 4; the
    schedule steps once per step (lr 0.5^k after k steps); EMA updated every step."""
    clock = FakeClock()
    model = StubDiffusion(clock)
    seen = []
    losses = diffusion_steps(model, [{"x": torch.ones(1, 2)}] * 3, 7, on_step=lambda k, loss: seen.append(k))
    assert len(losses) == 7 and seen == list(range(1, 8)) and model.updates == 7
    model = StubDiffusion(clock)
    assert len(diffusion_steps(model, [{"x": torch.ones(1, 2)}], 100, seconds=3.5, clock=clock)) == 4
    with pytest.raises(ValueError, match="no batch"):
        diffusion_steps(StubDiffusion(clock), [], 5)


# ------------------------------------------------------------------------------ scoring
def test_aggregate_is_the_mean_and_sample_sd_over_seeds() -> None:
    rng = np.random.default_rng(0)
    rows = [{"psnr": float(rng.normal(20, 1)), "err/liver": float(rng.random())} for _ in range(5)]
    got = aggregate(rows)
    for k in ("psnr", "err/liver"):
        vals = [r[k] for r in rows]
        assert got[k]["mean"] == pytest.approx(statistics.fmean(vals), rel=1e-12)
        assert got[k]["sd"] == pytest.approx(statistics.stdev(vals), rel=1e-12)  # ddof 1
        assert got[k]["n"] == 5
    assert aggregate([{"psnr": 3.0}]) == {"psnr": {"mean": 3.0, "sd": 0.0, "n": 1}}


def test_rank_agreement_matches_scipys_spearman_and_kendall() -> None:
    """Spearman's rho equals scipy's (ties averaged); without ties the discordant pairs follow from
    Kendall's tau, D = (1 - tau) / 2 * n(n-1)/2; rows without a finite mean of both are left out."""
    from scipy import stats

    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(3, 9))
        a = rng.normal(size=n)
        b = a * rng.uniform(-1, 1) + rng.normal(size=n)
        if trial % 2:  # ties in both metrics
            a, b = np.round(a), np.round(b, 1)
        rows = {f"m{i}": {"fd": {"mean": float(a[i])}, "frd": {"mean": float(b[i])}} for i in range(n)}
        rows["real"] = {"fd": {"mean": 0.01}, "frd": {"mean": float("nan")}}
        got = rank_agreement(rows, "fd", "frd")
        want = stats.spearmanr(a, b).statistic
        if np.isnan(want):
            assert math.isnan(got["rho"])
        else:
            assert got["rho"] == pytest.approx(want, abs=1e-12)
        assert got["pairs"] == n * (n - 1) // 2 and "real" not in got["order_a"]
        if len(set(a)) == n and len(set(b)) == n:
            tau = stats.kendalltau(a, b).statistic
            assert got["discordant"] == round((1 - tau) / 2 * got["pairs"])
        assert [rows[k]["fd"]["mean"] for k in got["order_a"]] == sorted(a.tolist())
    two = {"x": {"fd": {"mean": 1.0}, "frd": {"mean": 2.0}}, "y": {"fd": {"mean": 2.0}, "frd": {"mean": 1.0}}}
    assert rank_agreement(two, "fd", "frd") is None


def test_organ_hu_scorer_matches_numpy_on_whole_hu_values() -> None:
    """Per organ: the median error equals numpy's medians of the HU values (whole HU, inside the
    window), the IQRs numpy's linear quartiles; an organ absent from the masks is NaN and left out
    of the largest error."""
    level, width = 50.0, 350.0
    rng = np.random.default_rng(5)
    mask = torch.from_numpy(rng.choice([0, 1, 6, 7], size=(3, 12, 12), p=[0.4, 0.2, 0.3, 0.1]))
    real_hu = rng.integers(-100, 200, size=(3, 12, 12)).astype(np.float64)
    fake_hu = real_hu + rng.integers(-20, 30, size=(3, 12, 12))
    fake_hu = np.clip(fake_hu, level - width / 2, level + width / 2)

    def window_units(hu: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((hu - (level - width / 2)) / width)[:, None].float()

    organs = {"liver": 6, "spleen": 1, "stomach": 7, "aorta": 8}
    got = organ_hu_scorer((level, width), organs)(
        window_units(fake_hu), {"image": window_units(real_hu), "mask": mask}
    )
    m = mask.numpy()
    errors = []
    for name, c in organs.items():
        if not (m == c).any():
            assert math.isnan(got[f"hu/{name}"]) and math.isnan(got[f"hu_iqr/{name}"])
            continue
        want = float(np.median(fake_hu[m == c]) - np.median(real_hu[m == c]))
        assert got[f"hu/{name}"] == pytest.approx(want, abs=1e-9)
        for key, hu in (("hu_iqr", fake_hu), ("hu_iqr_real", real_hu)):
            q1, q3 = np.percentile(hu[m == c], [25, 75])
            assert got[f"{key}/{name}"] == pytest.approx(q3 - q1, abs=1e-9)
        errors.append(abs(want))
    assert got["hu/abs_max"] == pytest.approx(max(errors), abs=1e-9)
    with pytest.raises(ValueError, match="width"):
        organ_hu_scorer((40.0, 0.0))


class StubFeatures:
    """A segmenter that returns given labels and features."""

    def __init__(self, labels: torch.Tensor, feats: torch.Tensor, label_set=AMOS) -> None:
        self.labels, self.feats, self.label_set = labels, feats, label_set

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.labels, self.feats


def _hand_made(liver: int, spleen: int, body: int):
    """Two 16x16 slices: background left half, body right half, a liver and a spleen block;
    real intensities constant per class, synthetic off by +0.1 in the liver, -0.05 in the spleen,
    +0.02 in the background."""
    mask = torch.zeros(2, 16, 16, dtype=torch.long)
    mask[:, :, 8:] = body
    mask[:, 0:8, 8:12] = liver  # 32 pixels per slice
    mask[0, 8:16, 12:16] = spleen  # 32 pixels, first slice only
    level = {0: 0.0, body: 0.5, liver: 0.6, spleen: 0.7}
    real = torch.zeros(2, 1, 16, 16)
    synth = torch.zeros(2, 1, 16, 16)
    for c, v in level.items():
        real[:, 0][mask == c] = v
        synth[:, 0][mask == c] = v + {0: 0.02, liver: 0.1, spleen: -0.05}.get(c, 0.0)
    return mask, real, synth


def _closed_form_psnr() -> float:
    """Mean over the two slices of 10 log10(1 / MSE): 128 background pixels off by 0.02, 32 liver
    pixels by 0.1, and 32 spleen pixels by 0.05 on the first slice."""
    mse0 = (128 * 0.02**2 + 32 * 0.1**2 + 32 * 0.05**2) / 256
    mse1 = (128 * 0.02**2 + 32 * 0.1**2) / 256
    return (10 * math.log10(1 / mse0) + 10 * math.log10(1 / mse1)) / 2


@pytest.mark.parametrize("label_set", ["amos", "totalseg"])
def test_score_on_a_hand_made_batch_matches_the_closed_forms(label_set: str) -> None:
    """PSNR from the per-slice MSE; organ errors 0.1 and 0.05 (their max and mean); Dice 1 for the
    liver and 2*16 / (16 + 32) = 2/3 for the spleen half found; FD of features shifted by c in one
    dimension = c^2. With the TotalSegmentator set the organ table comes from organ_table and the
    ids run past AMOS's 17 classes (aorta 52)."""
    labels = get_label_set(label_set)
    organs = organ_table(labels)
    mask, real, synth = _hand_made(organs["liver"], organs["spleen"], labels.body)
    pred = mask.clone()
    pred[0, 8:16, 14:16] = labels.body  # half of the spleen missed
    real_feats = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)).double()
    feats = real_feats + torch.tensor([0.3, 0.0, 0.0], dtype=torch.float64)
    got = score(synth, {"image": real, "mask": mask}, StubFeatures(pred, feats, labels), real_feats, organs)
    assert got["psnr"] == pytest.approx(_closed_form_psnr(), rel=1e-5)
    assert got["background"] == pytest.approx(0.02, abs=1e-7)
    assert got["err/liver"] == pytest.approx(0.1, abs=1e-7)
    assert got["err/spleen"] == pytest.approx(0.05, abs=1e-7)
    for absent in ("right_kidney", "left_kidney", "stomach", "aorta"):
        assert math.isnan(got[f"err/{absent}"]) and math.isnan(got[f"dice/{absent}"])
    assert got["err/max"] == pytest.approx(0.1, abs=1e-7)
    assert got["err/mean"] == pytest.approx(0.075, abs=1e-7)
    assert got["dice/liver"] == 1.0 and got["dice/spleen"] == pytest.approx(2 / 3)
    assert got["dice/mean"] == pytest.approx(5 / 6) and got["dice/all_organs"] == pytest.approx(5 / 6)
    assert got["frechet_seg"] == pytest.approx(0.09, abs=1e-6)
    assert got["ssim"] < 1.0
    same = score(
        real, {"image": real, "mask": mask}, StubFeatures(mask, real_feats, labels), real_feats, organs
    )
    assert same["ssim"] == pytest.approx(1.0) and same["err/max"] == 0.0 and same["dice/mean"] == 1.0


def test_score_keys_for_the_default_organ_table() -> None:
    """Today's metric keys of quality.json, in order (the committed file's painting row)."""
    mask, real, synth = _hand_made(6, 1, 16)
    got = score(
        synth, {"image": real, "mask": mask}, StubFeatures(mask, torch.zeros(4, 2)), torch.zeros(4, 2)
    )
    committed = json.loads((RESULTS / "quality.json").read_text())
    assert list(got) == list(committed["painting"])
    with pytest.raises(ValueError, match="outside the label set"):
        score(
            synth,
            {"image": real, "mask": mask},
            StubFeatures(mask, torch.zeros(4, 2)),
            torch.zeros(4, 2),
            {"x": 17},
        )


def test_organ_table_maps_the_target_organs_by_name() -> None:
    """AMOS ids stay as they are; in the TotalSegmentator set each organ gets the id of
    TotalSegmentator's own class map."""
    from totalsegmentator.map_to_binary import class_map

    assert organ_table(AMOS) == TARGET_ORGANS
    ids = {name: int(i) for i, name in class_map["total"].items()}
    names = {
        "liver": "liver",
        "spleen": "spleen",
        "right_kidney": "kidney_right",
        "left_kidney": "kidney_left",
        "stomach": "stomach",
        "aorta": "aorta",
    }
    assert organ_table(get_label_set("totalseg")) == {k: ids[v] for k, v in names.items()}


def test_reference_rows_from_the_committed_segmenter_equal_the_committed_numbers() -> None:
    """The real-slice and class-mean-painting rows of benchmarks/results/quality_30, recomputed
    from its segmenter.pt on its 32 test slices: every metric as committed. Measured: identical to
    the last bit at 1 and 2 torch threads; rel 1e-12 leaves room for another BLAS's summation order
    only. The segmenter-feature FD is the exception: its features are float32 convolutions whose
    CPU kernels differ between processor models (another 2-core AMD EPYC gave the FDs with relative
    differences of 1.6e-8 and 1.7e-9, every other metric to the last bit), so it gets rel 1e-6, a few
    float32 ulps."""
    committed = json.loads((RESULTS / "quality.json").read_text())
    seg_file = RESULTS / "checkpoints" / "segmenter.pt"
    assert sha256(seg_file) == committed["segmenter_sha256"]
    dm = phantom()
    batch = eval_slices(dm, committed["num_eval"])
    features = SegmenterFeatures(load_segmenter(seg_file))
    _, real_row, paint_row = reference_rows(dm, batch, features)
    for name, row in (("real", real_row), ("painting", paint_row)):
        assert set(row) == set(committed[name])
        for k, v in row.items():
            want = committed[name][k]["mean"]
            rel = 1e-6 if k == "frechet_seg" else 1e-12
            assert (math.isnan(v) and math.isnan(want)) or v == pytest.approx(want, rel=rel, abs=0), (
                name,
                k,
            )
    # a data module that augments its training slices (the real-CT recipe) gives the same rows: the
    # real-slice FD and the painting's class means use the training slices as stored, not the
    # loader's random flips and affines
    from medsynth.data.augment import SliceAugmentation

    dm.augmentation = SliceAugmentation()
    _, real_aug, paint_aug = reference_rows(dm, batch, features)
    assert real_aug["frechet_seg"] == real_row["frechet_seg"]
    for k, v in paint_aug.items():
        assert (math.isnan(v) and math.isnan(paint_row[k])) or v == pytest.approx(paint_row[k], rel=1e-12), k


# ------------------------------------------------------------------------------ calibration file
def test_calibration_file_round_trip_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    assert read_calibration(path) == {}  # not there yet: everything is to be timed
    entry = calibration_entry("pix2pix", {"class": "Pix2Pix", "image_size": (64, 64)}, 0.5, 30, 5)
    write_calibration(path, {"pix2pix": entry})
    back = read_calibration(path)
    assert back["pix2pix"]["seconds_per_step"] == 0.5 and back["pix2pix"]["settings"]["image_size"] == [
        64,
        64,
    ]
    assert {"date", "cpu", "threads"} <= set(back["pix2pix"])
    check_calibration(path, back["pix2pix"], {"class": "Pix2Pix", "image_size": (64, 64)})
    with pytest.raises(
        CalibrationError, match=r"cal\.json: pix2pix was timed with other settings.*image_size"
    ):
        check_calibration(path, back["pix2pix"], {"class": "Pix2Pix", "image_size": (32, 32)})
    path.write_text("{oops")
    with pytest.raises(CalibrationError, match=r"--calibration .*cal\.json: cannot read it as JSON"):
        read_calibration(path)
    path.write_text(json.dumps({"methods": {}}))
    with pytest.raises(CalibrationError, match="not a calibration file"):
        read_calibration(path)
    path.write_text(json.dumps({"version": 1, "methods": {"sdm": {"seconds_per_step": 0}}}))
    with pytest.raises(CalibrationError, match="sdm has no positive seconds_per_step"):
        read_calibration(path)


def test_a_resumed_run_keeps_its_kind_of_budget() -> None:
    """Wall clock and step budgets do not mix in one table; nor do two calibrations of one method."""
    head = {
        "label_set": "amos",
        "budget_min": 1.0,
        "num_eval": 4,
        "seeds": [0],
        "sampler": "ddpm",
        "num_steps": 9,
    }
    cal = {"pix2pix": {"seconds_per_step": 0.5}}
    check_settings({**head, "calibration": cal}, {**head, "calibration": {}})
    with pytest.raises(ResumeError, match="earlier part ran with --calibration.*this one without"):
        check_settings({**head, "calibration": cal}, head)
    with pytest.raises(ResumeError, match="earlier part ran without --calibration"):
        check_settings(head, {**head, "calibration": cal})
    with pytest.raises(ResumeError, match="gives pix2pix 0.6 s/step, the earlier part used 0.5"):
        check_settings(
            {**head, "calibration": cal}, {**head, "calibration": {"pix2pix": {"seconds_per_step": 0.6}}}
        )


@pytest.fixture
def keep_threads():
    """main(--threads 1) sets torch's global thread count: restore it for the tests after this one."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_quality_with_a_calibration_trains_the_steps_it_implies(tmp_path: Path, capsys, keep_threads) -> None:
    """Pix2Pix at 0.5 s/step in the calibration file and --budget 0.05 (3 s): 6 steps whatever the
    machine's load, checkpoints at 2 (1.5 rounded up), 3 and 6, recorded with the file's entry;
    a resumed part without --calibration, or a file timed with other settings, is refused before
    any training, leaving what was written as it was. An entry's note reaches quality.md."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality import main

    cal = tmp_path / "cal.json"
    s = Settings(label_set="amos", gpu=False)
    write_calibration(
        cal,
        {
            "pix2pix": {
                **calibration_entry("pix2pix", calibration_settings("pix2pix", s, phantom()), 0.5, 30, 5),
                "note": "s/step set by hand",
            }
        },
    )
    out = tmp_path / "q"
    tiny = ["--budget", "0.05", "--seeds", "1", "--num-eval", "4", "--segmenter-steps", "2", "--threads", "1"]
    assert main([*tiny, "--output", str(out), "--calibration", str(cal), "--methods", "pix2pix"]) == 0
    result = json.loads((out / "quality.json").read_text())
    assert {f: e["step"] for f, e in result["methods"]["pix2pix"].items()} == {"0.25": 2, "0.5": 3, "1.0": 6}
    assert result["calibration"]["pix2pix"]["steps"] == 6
    assert result["calibration"]["pix2pix"]["seconds_per_step"] == 0.5
    assert "pix2pix: 6 steps at 0.5 s/step" in (out / "quality.md").read_text()
    assert "threads; s/step set by hand)" in (out / "quality.md").read_text()  # the entry's note
    before = (out / "quality.json").read_bytes()
    assert main([*tiny, "--output", str(out), "--resume", "--methods", "pix2pix", "spade"]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert (out / "quality.json").read_bytes() == before
    assert not (out / "checkpoints" / "spade_100.ckpt").exists()
    # a file whose entry timed another recipe: refused, naming the file, before anything is written
    other = tmp_path / "other.json"
    entry = calibration_entry("pix2pix", {"class": "Pix2Pix", "model_channels": 64}, 0.5, 30, 5)
    write_calibration(other, {"pix2pix": entry})
    fresh = tmp_path / "fresh"
    assert main([*tiny, "--output", str(fresh), "--calibration", str(other), "--methods", "pix2pix"]) == 2
    err = capsys.readouterr().err
    assert "other.json: pix2pix was timed with other settings" in err and "model_channels" in err
    assert not fresh.exists()


def test_calibrate_only_times_and_records_without_training(tmp_path: Path, keep_threads) -> None:
    """--calibrate-only writes an entry per method with the settings quality.py will check, a
    positive s/step and where it was timed, creates no --output, and keeps the entries already
    in the file as they were."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality import main

    cal = tmp_path / "sub" / "cal.json"
    kept = calibration_entry("spade", {"class": "SPADE"}, 9.0, 30, 5)
    write_calibration(cal, {"spade": kept})
    out = tmp_path / "q"
    args = ["--calibration", str(cal), "--calibrate-only", "--calibration-steps", "1", "--threads", "1"]
    assert main([*args, "--methods", "pix2pix", "--output", str(out)]) == 0
    entries = read_calibration(cal)
    assert entries["spade"] == kept
    entry = entries["pix2pix"]
    assert entry["settings"] == json.loads(json.dumps(calibration_settings("pix2pix", Settings(), phantom())))
    assert entry["seconds_per_step"] > 0 and entry["timed_steps"] == 1 and entry["threads"] == 1
    assert not out.exists()


def test_the_protocol_runs_on_an_nnunet_dataset_with_totalsegmentator_labels(tmp_path: Path) -> None:
    """A user's data: an nnU-Net dataset labelled with TotalSegmentator ids. The methods train on
    its own labels ('totalseg'), the segmenter and the scores use the AMOS labels remapped by name,
    with the organ table of the scoring set. The training class means equal numpy's per-class means
    of the cached training slices; Pix2Pix trains the 4 steps its calibration entry implies; the
    result has the phantom's metric keys, the painting row of the richer labels and the title."""
    from conftest import make_volume, save_nifti
    from totalsegmentator.map_to_binary import class_map

    from benchmarks.protocol import run_quality, training_class_means
    from medsynth.data import NNUNetDataModule
    from medsynth.labels import CLASSES

    ts_ids = {name: int(i) for i, name in class_map["total"].items()}
    hu, lab, aff = make_volume()  # AMOS ids: liver, spleen, bladder
    ts = np.zeros_like(lab)
    for c in CLASSES:
        if c.totalseg is not None:
            ts[lab == c.index] = ts_ids[c.totalseg]
    root = tmp_path / "Dataset004_TS"
    for split, n in (("Tr", 3), ("Ts", 1)):
        for k in range(n):
            save_nifti(root / f"images{split}" / f"{split.lower()}{k:03d}_0000.nii.gz", hu + k, aff)
            save_nifti(root / f"labels{split}" / f"{split.lower()}{k:03d}.nii.gz", ts, aff)
    labels = {"background": 0, **ts_ids}
    meta = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 3, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    kw = {"image_size": 32, "batch_size": 4, "num_workers": 0, "progress": False, "cache_dir": tmp_path / "c"}
    score_dm = NNUNetDataModule(root, label_set="amos", remap="by_name", **kw)
    train_dm = NNUNetDataModule(root, label_set="totalseg", **kw)

    s = Settings(budget_min=0.04, seeds=1, num_eval=4, label_set="totalseg", segmenter_steps=2)
    s.calibration = tmp_path / "cal.json"
    entry = calibration_entry("pix2pix", calibration_settings("pix2pix", s, train_dm), 0.6, 30, 5)
    write_calibration(s.calibration, {"pix2pix": entry})
    header = {"dataset": "nnU-Net CT 32x32"}
    result = run_quality(
        s, ["pix2pix"], tmp_path / "q", score_dm, train_dm, header=header, log=lambda t: None
    )

    train = train_dm.datasets["train"]
    images, masks = np.concatenate(train.images), np.concatenate(train.masks)  # [S, H, W] each
    means = training_class_means(train_dm).numpy()
    for c in np.unique(masks):
        assert means[c] == pytest.approx(float(images[masks == c].astype(np.float64).mean()), rel=1e-9)
    assert np.isnan(means[[c for c in range(len(means)) if c not in set(np.unique(masks))]]).all()
    assert {f: e["step"] for f, e in result["methods"]["pix2pix"].items()} == {"0.25": 1, "0.5": 2, "1.0": 4}
    committed = json.loads((RESULTS / "quality.json").read_text())
    assert list(result["methods"]["pix2pix"]["1.0"]["metrics"]) == list(committed["painting"])
    assert set(result["real"]) == set(committed["real"]) and "painting_rich" in result
    assert result["label_set"] == "totalseg" and result["dataset"] == header["dataset"]
    assert (
        (tmp_path / "q" / "quality.md").read_text().startswith("nnU-Net CT 32x32, trained on totalseg labels")
    )
