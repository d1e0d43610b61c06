"""medsynth.metrics.adjacent_slice_difference against a hand-computed example."""

import numpy as np
import pytest
import torch

from medsynth.metrics import adjacent_slice_difference


def test_adjacent_slice_difference_by_hand() -> None:
    vol = np.zeros((3, 2, 2))
    vol[0] = [[0.0, 0.1], [0.2, 0.3]]
    vol[1] = [[0.5, 0.1], [0.2, 0.0]]
    vol[2] = [[0.5, 0.4], [0.2, 0.0]]
    mask = np.array([[[1, 1], [2, 0]], [[1, 1], [2, 2]], [[0, 1], [2, 2]]])
    out = adjacent_slice_difference(vol, mask, [1, 2, 3])
    # class 1: pairs (0,1) at (0,0),(0,1): |0.5|, |0|; pair (1,2) at (0,1): |0.3|
    assert out[1] == pytest.approx((0.5 + 0.0 + 0.3) / 3)
    # class 2: pair (0,1) at (1,0): 0; pair (1,2) at (1,0),(1,1): 0, 0
    assert out[2] == pytest.approx(0.0)
    assert np.isnan(out[3])
    torch_out = adjacent_slice_difference(torch.from_numpy(vol), torch.from_numpy(mask), [1])
    assert torch_out[1] == pytest.approx(out[1])
    with pytest.raises(ValueError, match="one shape"):
        adjacent_slice_difference(vol, mask[:2], [1])
