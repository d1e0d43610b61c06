"""benchmarks/frd_stability.py at a tiny size: its pools, and subsets of the whole pool giving the
FRD of the whole pools computed directly from the images."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from frd_stability import main, pools, summarize  # noqa: E402

from medsynth.metrics import frd  # noqa: E402

pytest.importorskip("frd_score")


def test_pools_and_whole_pool_subsets_equal_direct_frd(tmp_path) -> None:
    """N = the pool size draws every slice (in another order): SD 0 and the FRD of ``frd()`` on
    the images, up to the round-off of summing the rows in another order (measured 1e-8; bound
    1e-6). The pools: noise of SD 0.02 where no clipping
    happens, other cases than the reference, one painted value per class."""
    result = main(["--cases", "1", "--depth", "4", "--image-size", "32", "--sizes", "2", "4",
                   "--repeats", "2", "--output", str(tmp_path)])  # fmt: skip
    p = pools(cases=1, depth=4, image_size=32)
    real, noisy = p["real"], p["noise 8 HU"]
    assert {k: tuple(v.shape) for k, v in p.items()} == dict.fromkeys(p, (4, 1, 32, 32))
    inside = (real > 0.1) & (real < 0.9)
    assert float((noisy - real)[inside].std()) == pytest.approx(0.02, rel=0.1)
    assert not torch.equal(p["real, other cases"], real)
    assert len(torch.unique(p["class-mean painting"])) <= 17
    for name, comp in result["comparisons"].items():
        want = frd(real, p[name])
        whole = comp["subsets"][4]
        assert whole["sd"] == pytest.approx(0.0, abs=1e-6) and whole["mean"] == pytest.approx(want, abs=1e-6)
        assert comp["whole"] == pytest.approx(want, abs=1e-6)
    assert (tmp_path / "frd_stability.md").read_text().count("| noise 8 HU |") == 2
    s = summarize({4: [1.0, 2.0, 4.0]})[4]
    assert s == {"mean": 7 / 3, "sd": float(np.std([1.0, 2.0, 4.0], ddof=1)), "min": 1.0, "max": 4.0}
    with pytest.raises(SystemExit):
        main(["--cases", "1", "--depth", "4", "--sizes", "5", "--output", str(tmp_path)])
