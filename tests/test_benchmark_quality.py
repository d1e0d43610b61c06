"""benchmarks/quality.py: the paper's claims it checks, on hand-made result tables; continuing a
run with --resume (what it refuses, and that a resumed run keeps the earlier rows as they were)."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.protocol import ResumeError, check_compatible, claims, previous_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from quality import main  # noqa: E402


def _row(**metrics: tuple[float, float]) -> dict:
    return {
        "metrics": {
            k.replace("_", "/", 1) if k in ("err_mean", "dice_mean") else k: {"mean": m, "sd": s}
            for k, (m, s) in metrics.items()
        }
    }


def _results(mask_err: float, mask_dice: float, edge_psnr: float, edge_fd: float, sd: float) -> dict:
    """Mask-guided vs conditional at 25 / 50 %, and the 100 % rows of two diffusion models and a GAN."""
    conditional = _row(err_mean=(0.05, sd), dice_mean=(0.80, sd), psnr=(19.0, sd), frechet_seg=(0.020, sd))
    mask = _row(err_mean=(mask_err, sd), dice_mean=(mask_dice, sd), psnr=(18.0, sd), frechet_seg=(0.030, sd))
    edge = _row(err_mean=(0.01, sd), dice_mean=(0.84, sd), psnr=(edge_psnr, sd), frechet_seg=(edge_fd, sd))
    gan = _row(err_mean=(0.01, 0.0), dice_mean=(0.82, 0.0), psnr=(19.5, 0.0), frechet_seg=(0.015, 0.0))
    return {
        "methods": {
            "conditional_ddpm": {"0.25": conditional, "0.5": conditional, "1.0": conditional},
            "mask_guided_ddpm": {"0.25": mask, "0.5": mask, "1.0": mask},
            "edge_guided_ddpm": {"1.0": edge},
            "pix2pix": {"1.0": gan},
        }
    }


def _verdicts(lines: list[str]) -> list[str]:
    return [line.split(": ", 1)[1].split(" (")[0] for line in lines]


def test_claims_hold_fail_or_tie_by_a_two_sd_margin() -> None:
    # clearly better on both (margin 2 x 0.005 = 0.01): holds; best diffusion = edge (PSNR 20, FD 0.002)
    assert _verdicts(claims(_results(0.02, 0.85, 20.0, 0.002, 0.005))) == ["holds"] * 4
    # FD 0.010 against the GAN's 0.015: ahead, but by less than the 0.01 margin
    assert _verdicts(claims(_results(0.02, 0.85, 20.0, 0.010, 0.005)))[3] == "tie"
    # clearly worse organ error (margin 0.002): does not hold, whatever the Dice; diffusion behind
    # the GAN (best diffusion PSNR 19.0, FD 0.020: the conditional DDPM's)
    assert _verdicts(claims(_results(0.09, 0.85, 19.0, 0.030, 0.001))) == ["does not hold"] * 4
    # differences of 0.005 with seed SD 0.005 (< 2 SD): ties, not verdicts (PSNR gap 0.005 dB)
    lines = claims(_results(0.045, 0.805, 19.505, 0.0150, 0.005))
    assert _verdicts(lines) == ["tie"] * 4
    # the same gaps with SD 0 (deterministic rows): decided
    assert _verdicts(claims(_results(0.045, 0.805, 19.505, 0.0149, 0.0))) == ["holds"] * 4
    assert "edge_guided_ddpm 19.5050 vs best GAN pix2pix 19.5000" in lines[2]


# ------------------------------------------------------------------------------ --resume
def _header() -> dict:
    """The header of a quality.json as run_quality writes it (NaN PSNR on the real row)."""
    return {
        "label_set": "amos",
        "budget_min": 30.0,
        "num_eval": 32,
        "seeds": [0, 1, 2, 3],
        "sampler": "ddpm",
        "num_steps": 100,
        "segmenter_sha256": "ab12",
        "real": {"psnr": {"mean": math.nan, "sd": 0.0}, "dice/mean": {"mean": 0.866, "sd": 0.0}},
        "painting": {"psnr": {"mean": 17.48, "sd": 0.0}},
        "methods": {"pix2pix": {}},
        "recipes": {
            "pix2pix": {"class": "Pix2Pix", "model_channels": 16},
            "sdm": {"class": "SDM", "image_size_hint": (64, 64)},
        },
    }


def test_an_output_with_results_is_never_overwritten(tmp_path: Path) -> None:
    assert previous_results(tmp_path, resume=False) is None  # a fresh folder
    with pytest.raises(ResumeError, match="does not exist; drop --resume"):
        previous_results(tmp_path, resume=True)
    (tmp_path / "quality.json").write_text("{not json")
    with pytest.raises(ResumeError, match="not valid JSON"):
        previous_results(tmp_path, resume=True)
    (tmp_path / "quality.json").write_text(json.dumps({"methods": {"pix2pix": {}}}))
    with pytest.raises(ResumeError, match="already holds results.*--resume"):
        previous_results(tmp_path, resume=False)
    with pytest.raises(ResumeError, match="segmenter.pt is missing"):
        previous_results(tmp_path, resume=True)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "segmenter.pt").write_bytes(b"weights")
    assert previous_results(tmp_path, resume=True) == {"methods": {"pix2pix": {}}}


def test_resume_refuses_what_would_make_rows_incomparable() -> None:
    prev = json.loads(json.dumps(_header()))  # as read back from quality.json: tuples are lists
    check_compatible(prev, _header())  # the same run: fine (NaN = NaN, (64, 64) = [64, 64])
    for key, flag, value in [
        ("budget_min", "--budget", 8.0),
        ("num_eval", "--num-eval", 64),
        ("seeds", "--seeds", [0, 1]),
        ("sampler", "--sampler", "ddim"),
        ("num_steps", "--num-steps", 25),
        ("label_set", "--label-set", "totalseg"),
    ]:
        with pytest.raises(ResumeError, match=f"{flag} "):
            check_compatible(prev, {**_header(), key: value})
    with pytest.raises(ResumeError, match="segmenter.pt is not the file"):
        check_compatible(prev, {**_header(), "segmenter_sha256": "cd34"})
    changed = _header()
    changed["recipes"]["pix2pix"]["model_channels"] = 32
    with pytest.raises(ResumeError, match="recipe of pix2pix changed"):
        check_compatible(prev, changed)
    changed = _header()  # a method not run yet may change: it has no rows to disagree with
    changed["recipes"]["sdm"]["image_size_hint"] = (32, 32)
    check_compatible(prev, changed)
    shifted = _header()
    shifted["real"]["dice/mean"]["mean"] = 0.866 + 1e-3
    with pytest.raises(ResumeError, match="real reference row changed"):
        check_compatible(prev, shifted)
    shifted["real"]["dice/mean"]["mean"] = 0.866 + 1e-9  # thread-count rounding is not a change
    check_compatible(prev, shifted)


@pytest.fixture
def keep_threads():
    """main(--threads 1) sets torch's global thread count: restore it for the tests after this one."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_a_resumed_run_keeps_the_earlier_rows_and_adds_the_new_method(
    tmp_path: Path, capsys, keep_threads
) -> None:
    """Two parts of one tiny run (Pix2Pix, then SPADE with --resume): Pix2Pix's rows, the
    reference rows and the segmenter are those of the first part, SPADE's are added, both record
    where they ran, Pix2Pix's figure row is redrawn from its checkpoint when figure.pt is gone, and
    a third call with another --budget is refused leaving the files as they were."""
    out = tmp_path / "q"
    tiny = [
        "--budget",
        "0.03",
        "--seeds",
        "1",
        "--num-eval",
        "4",
        "--segmenter-steps",
        "2",
        "--output",
        str(out),
    ]
    tiny += ["--threads", "1"]
    assert main([*tiny, "--methods", "pix2pix"]) == 0
    first = json.loads((out / "quality.json").read_text())
    assert main([*tiny, "--methods", "pix2pix"]) == 2  # the same folder again, without --resume
    assert "already holds results" in capsys.readouterr().err
    first_figure = torch.load(out / "figure.pt", weights_only=True)
    (out / "figure.pt").unlink()  # as for a part run before figure.pt existed: redrawn from the checkpoint
    assert main([*tiny, "--resume", "--methods", "pix2pix", "spade"]) == 0
    second = json.loads((out / "quality.json").read_text())
    assert list(second["methods"]) == ["pix2pix", "spade"]
    assert second["methods"]["pix2pix"] == first["methods"]["pix2pix"]  # kept, not retrained
    assert second["runs"]["pix2pix"] == first["runs"]["pix2pix"] and "cpu" in second["runs"]["spade"]
    assert second["segmenter_sha256"] == first["segmenter_sha256"]
    assert second["painting"] == first["painting"]
    trained_on = (out / "quality.md").read_text().split("Trained on: ")[1].split("\n")[0]
    assert "pix2pix" in trained_on and "spade" in trained_on, trained_on
    figure = torch.load(out / "figure.pt", weights_only=True)
    assert set(figure) == {"pix2pix", "spade"} and figure["spade"].shape[-2:] == (64, 64)
    # Pix2Pix is deterministic given the mask: the redrawn row is the first part's
    torch.testing.assert_close(figure["pix2pix"], first_figure["pix2pix"], rtol=0, atol=1e-5)
    before = (out / "quality.json").read_bytes()
    assert main([*tiny, "--budget", "0.05", "--resume", "--methods", "oasis"]) == 2
    assert "--budget" in capsys.readouterr().err
    assert (out / "quality.json").read_bytes() == before


def test_memorization_and_hu_flags_add_their_metrics_to_every_row(tmp_path: Path, keep_threads) -> None:
    """``--memorization``: every row (references and the method) holds the copy rate, the real
    held-out slices score 1/N by construction (only their nearest one lies below their own 5th
    percentile), and quality.md gains the distribution table. ``--hu``: the organ medians in HU,
    0 for the real slices against themselves, and quality.md's HU table."""
    out = tmp_path / "q"
    tiny = ["--budget", "0.03", "--seeds", "1", "--num-eval", "4", "--segmenter-steps", "2"]
    assert (
        main(
            [*tiny, "--threads", "1", "--methods", "pix2pix", "--memorization", "--hu", "--output", str(out)]
        )
        == 0
    )
    res = json.loads((out / "quality.json").read_text())
    for row in (res["real"], res["painting"], res["methods"]["pix2pix"]["1.0"]["metrics"]):
        assert 0.0 <= row["memorization/copy_rate"]["mean"] <= 1.0
    assert res["real"]["memorization/copy_rate"]["mean"] == 0.25
    assert "| copy rate |" in (out / "quality.md").read_text()
    assert res["real"]["hu/liver"]["mean"] == 0.0 and res["real"]["hu/abs_max"]["mean"] == 0.0
    pix = res["methods"]["pix2pix"]["1.0"]["metrics"]
    assert (
        math.isfinite(pix["hu/liver"]["mean"])
        and pix["hu_iqr_real/liver"] == res["real"]["hu_iqr_real/liver"]
    )
    assert "Organ statistics in HU" in (out / "quality.md").read_text()
