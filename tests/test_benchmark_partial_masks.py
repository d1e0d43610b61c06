"""benchmarks/partial_masks.py: the partial masks it builds and the Dice it reports, by hand."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from partial_masks import kept_dice, partial_masks  # noqa: E402

from medsynth.labels import BODY, NUM_CLASSES  # noqa: E402


def _masks() -> torch.Tensor:
    m = torch.full((3, 8, 8), BODY, dtype=torch.long)
    m[:, 0] = 0  # background row
    m[0, 2:4, 2:4], m[0, 5:7, 5:7], m[0, 2:4, 5:7], m[0, 5:7, 2:4] = 6, 1, 2, 7  # four organs
    m[1, 2:5, 2:5] = 6  # one organ: nothing to drop
    m[2, 2:4, 2:4], m[2, 5:7, 5:7], m[2, 2:4, 6:8] = 6, 8, 3  # three organs: one dropped
    return m


def test_partial_masks_drop_half_of_each_slices_organs_to_body() -> None:
    full = _masks()
    part, removed = partial_masks(full)
    assert removed.sum(1).tolist() == [2, 0, 1]  # floor(k / 2) of k = 4, 1, 3 organs
    changed = part != full
    assert bool((part[changed] == BODY).all())  # only organ pixels become body
    for n in range(3):
        for c in range(NUM_CLASSES):
            had = bool((full[n] == c).any())
            assert bool((part[n] == c).any()) == (had and not bool(removed[n, c]))
    again, _ = partial_masks(full)
    assert torch.equal(part, again)  # a fixed choice per slice


def test_kept_dice_leaves_out_the_slices_where_an_organ_was_removed() -> None:
    full = _masks()
    part, removed = partial_masks(full)
    pred = full.clone()  # predicts every organ of the full mask, also the removed ones
    dice = kept_dice(pred, part, removed)
    for c in (1, 2, 3, 6, 7, 8):
        keep = [n for n in range(3) if not removed[n, c]]
        inter = sum(int(((pred[n] == c) & (part[n] == c)).sum()) for n in keep)
        total = sum(int((pred[n] == c).sum() + (part[n] == c).sum()) for n in keep)
        expected = 2 * inter / total if total else float("nan")
        got = float(dice[c])
        assert (got != got and expected != expected) or abs(got - expected) < 1e-12, (c, got, expected)
    # the organs removed somewhere: counted on every slice, the prediction of the full mask would
    # score below 1; left out where removed, it scores 1 (or NaN: kept nowhere)
    dropped = [c for c in range(NUM_CLASSES) if removed[:, c].any()]
    assert dropped
    for c in dropped:
        inter = int(((pred == c) & (part == c)).sum())
        assert 2 * inter / int((pred == c).sum() + (part == c).sum()) < 1.0
        got = float(dice[c])
        assert got != got or got == 1.0
