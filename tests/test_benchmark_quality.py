"""benchmarks/quality.py: the paper's claims it checks, on hand-made result tables."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from quality import claims  # noqa: E402


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
