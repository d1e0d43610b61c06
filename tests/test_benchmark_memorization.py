"""benchmarks/memorization.py at a tiny size (2 training steps): its real-slice distances against
numpy, and the same numbers again from its saved checkpoints."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from memorization import main, normal_data  # noqa: E402

TINY = ["--overfit-slices", "3", "--train-cases", "2", "--depth", "3", "--test-cases", "1", "--image-size", "32",
        "--model-channels", "8", "--segmenter-steps", "1", "--num-steps", "2", "--accelerator", "cpu"]  # fmt: skip


def test_tiny_run_and_rerun_from_checkpoints(tmp_path) -> None:
    """The real test slices' nearest-training distances (pixel RMS) equal a numpy brute force over
    the normal split (float64 results of the callback; rel 1e-5 for round-off); loading the two saved checkpoints gives the same
    table (per-slice seeds), so the lead's long run can be rescored without training."""
    out = main([*TINY, "--overfit-steps", "2", "--normal-steps", "2", "--output", str(tmp_path / "a")])
    normal = out["results"]["normal (6 training slices)"]
    dm = normal_data(2, 1, 3, 32)
    dm.setup("fit")
    dm.setup("test")
    train = np.stack([x["image"][0].numpy() for x in dm.datasets["train"]]).astype(np.float64)
    test = np.stack([x["image"][0].numpy() for x in dm.datasets["test"]]).astype(np.float64)
    d = np.sqrt(((test[:, None] - train[None]) ** 2).mean(axis=(2, 3))).min(1)  # [3]
    assert normal["memorization/pixel/real_q50"] == pytest.approx(np.median(d), rel=1e-5)
    assert normal["memorization/pixel/threshold"] == pytest.approx(np.percentile(d, 5), rel=1e-5)
    assert 0.0 <= out["results"]["overfit (3 training slices)"]["memorization/feature/copy_rate"] <= 1.0
    ckpt = tmp_path / "a" / "checkpoints"
    again = main([*TINY, "--overfit-checkpoint", str(ckpt / "overfit.ckpt"), "--normal-checkpoint",
                  str(ckpt / "normal.ckpt"), "--segmenter-steps", "1", "--output", str(tmp_path / "b")])  # fmt: skip
    for name, values in out["results"].items():
        assert again["results"][name] == pytest.approx(values)
    assert (tmp_path / "b" / "memorization.md").read_text() == (
        tmp_path / "a" / "memorization.md"
    ).read_text()
