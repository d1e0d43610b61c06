"""benchmarks/frd_stability.py at a tiny size: its pools, and subsets of the whole pool giving the
FRD of the whole pools. PyRadiomics is replaced by a few cheap per-slice statistics here (it is
checked against frd-score in tests/test_frd.py): this tests the benchmark's own logic."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import frd_stability  # noqa: E402
from frd_stability import main, pools, summarize  # noqa: E402

from medsynth.metrics import frd_from_features  # noqa: E402


def cheap_features(images: torch.Tensor, window=None) -> np.ndarray:
    """Mean, SD, quartiles and gradient energy of each slice, float64 ``[N, 6]``."""
    x = images[:, 0].double()
    flat = x.flatten(1)
    grad = (x[:, 1:] - x[:, :-1]).pow(2).flatten(1).mean(1)
    q = torch.quantile(flat, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=1).T
    return torch.cat([flat.mean(1, keepdim=True), flat.std(1, keepdim=True), q, grad[:, None]], 1).numpy()


def test_pools_and_whole_pool_subsets(tmp_path, monkeypatch) -> None:
    """N = the pool size draws every slice (in another order): SD 0 and the FRD of the whole
    pools, up to the round-off of the float32 z-scoring over rows in another order (measured
    8e-9; bound 1e-6). The pools:
    noise of SD 0.02 where no clipping happens, other cases than the reference, one painted value
    per class."""
    monkeypatch.setattr(frd_stability, "radiomics_features", cheap_features)
    result = main(["--cases", "1", "--depth", "8", "--image-size", "32", "--sizes", "4", "8",
                   "--repeats", "3", "--output", str(tmp_path)])  # fmt: skip
    p = pools(cases=1, depth=8, image_size=32)
    real, noisy = p["real"], p["noise 8 HU"]
    assert {k: tuple(v.shape) for k, v in p.items()} == dict.fromkeys(p, (8, 1, 32, 32))
    inside = (real > 0.1) & (real < 0.9)
    assert float((noisy - real)[inside].std()) == pytest.approx(0.02, rel=0.1)
    assert not torch.equal(p["real, other cases"], real)
    assert len(torch.unique(p["class-mean painting"])) <= 17
    for name, comp in result["comparisons"].items():
        want = frd_from_features(cheap_features(real), cheap_features(p[name]))
        whole = comp["subsets"][8]
        assert whole["sd"] == pytest.approx(0.0, abs=1e-6) and whole["mean"] == pytest.approx(want, abs=1e-6)
        assert comp["whole"] == pytest.approx(want, abs=1e-6)
        assert comp["subsets"][4]["sd"] > 0  # 4 of 8 slices: the draws differ
    assert (tmp_path / "frd_stability.md").read_text().count("| noise 8 HU |") == 2
    s = summarize({4: [1.0, 2.0, 4.0]})[4]
    assert s == {"mean": 7 / 3, "sd": float(np.std([1.0, 2.0, 4.0], ddof=1)), "min": 1.0, "max": 4.0}
    with pytest.raises(SystemExit):
        main(["--cases", "1", "--depth", "4", "--sizes", "5", "--output", str(tmp_path)])
