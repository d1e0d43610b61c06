"""Memorization check: nearest neighbours against a numpy float64 brute force, the copy rate on
known copies / held-out slices / unrelated images, and the segmenter's bottleneck features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.data import PhantomDataModule
from medsynth.metrics.memorization import (
    NearestNeighbors,
    memorization_summary,
    nearest_neighbors,
    pixel_vectors,
)
from medsynth.models import OrganSegmenter


def _numpy_nn(q: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.sqrt(((q[:, None, :].astype(np.float64) - r[None].astype(np.float64)) ** 2).sum(-1))  # [Q, R]
    return d.min(1), d.argmin(1)  # argmin: the first of equal minima


def test_nearest_neighbors_match_numpy_bruteforce() -> None:
    """Distances to 1e-9 (float64 expansion |q|²+|r|²-2q·r vs direct differences: measured
    2.5e-12 here, largest for the query 6e-4 from its neighbour) and identical indices, whatever the chunking; a duplicated reference row keeps
    its first index."""
    rng = np.random.default_rng(1)
    q = rng.random((13, 37)).astype(np.float32)
    r = rng.random((50, 37)).astype(np.float32)
    r[31] = r[7]  # a tie: both rows at the same distance from every query
    q[2] = r[7] + 1e-4  # its nearest row is the tie
    want_d, want_i = _numpy_nn(q, r)
    assert want_i[2] == 7
    for chunk in (1, 7, 1000):
        d, i = nearest_neighbors(torch.from_numpy(q), torch.from_numpy(r), chunk_size=chunk)
        np.testing.assert_allclose(d.numpy(), want_d, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(i.numpy(), want_i)
    nn = NearestNeighbors(torch.from_numpy(q), chunk_size=4)
    for part in (r[:20], r[20:21], r[21:]):  # streamed: rows numbered across updates
        nn.update(torch.from_numpy(part))
    np.testing.assert_allclose(nn.distances.numpy(), want_d, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(nn.indices.numpy(), want_i)
    assert nn.num_reference == 50


def test_pixel_vectors_give_rms_differences() -> None:
    a = torch.rand(2, 1, 6, 5, dtype=torch.float64)
    b = a.clone()
    b[1] += 0.1  # every pixel 0.1 brighter: RMS difference 0.1 = 40 HU
    d, i = nearest_neighbors(pixel_vectors(b[1:]), pixel_vectors(a))
    assert i.item() == 1 and d.item() == pytest.approx(0.1, abs=1e-7)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="queries"):
        NearestNeighbors(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="chunk_size"):
        NearestNeighbors(torch.zeros(2, 3), chunk_size=0)
    nn = NearestNeighbors(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="no reference rows"):
        _ = nn.distances
    with pytest.raises(ValueError, match=r"reference must have shape \[R, 3\]"):
        nn.update(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="images"):
        pixel_vectors(torch.zeros(2, 6, 5))
    with pytest.raises(ValueError, match="percentile"):
        memorization_summary([1.0], [1.0], percentile=0.0)


def test_summary_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    s, r = rng.random(40), rng.random(55) + 0.2
    out = memorization_summary(s, r)
    thr = np.percentile(r, 5)
    assert out["threshold"] == thr and out["copy_rate"] == np.mean(s < thr)
    assert out["synthetic_q50"] == np.median(s) and out["real_q95"] == np.quantile(r, 0.95)


@pytest.fixture(scope="module")
def phantom_slices() -> dict[str, torch.Tensor]:
    """6 train, 6 held-out (val) and 6 real test phantom cases of 8 slices at 32x32."""
    dm = PhantomDataModule(
        num_train_cases=6, num_val_cases=6, num_test_cases=6, depth=8, image_size=32, seed=0
    )
    dm.setup("fit")
    dm.setup("test")
    return {s: torch.stack([x["image"] for x in dm.datasets[s]]) for s in ("train", "val", "test")}


def test_copy_rate_fires_on_copies_only(phantom_slices) -> None:
    """Threshold: the 5th percentile of the real test slices' nearest-training distances (about
    0.07 RMS, 28 HU, on this phantom).

    - training slices + Gaussian noise of SD 1e-3 (0.4 HU): all copies (distance ~1e-3,
      70x below the threshold): rate 1.0;
    - held-out real slices of other cases: 0.06-0.15 over phantom seeds 0-4 (48 slices of 6
      cases; 5 % by construction for exchangeable sets, more here as slices of one case move
      together), so the bound is 0.25;
    - uniform noise images, nothing like CT: 0.
    """
    train, val, test = phantom_slices["train"], phantom_slices["val"], phantom_slices["test"]
    ref = pixel_vectors(train)
    real_d, _ = nearest_neighbors(pixel_vectors(test), ref)
    g = torch.Generator().manual_seed(0)
    copies = train + 1e-3 * torch.randn(train.shape, generator=g)
    d_copy, idx = nearest_neighbors(pixel_vectors(copies), ref)
    assert torch.equal(idx, torch.arange(len(train)))  # each copy finds its own original
    assert memorization_summary(d_copy, real_d)["copy_rate"] == 1.0
    held_out = memorization_summary(nearest_neighbors(pixel_vectors(val), ref)[0], real_d)
    assert held_out["copy_rate"] <= 0.25
    unrelated = torch.rand(test.shape, generator=g)
    assert (
        memorization_summary(nearest_neighbors(pixel_vectors(unrelated), ref)[0], real_d)["copy_rate"] == 0.0
    )


def test_bottleneck_features_equal_the_forward_pass_activation() -> None:
    """``bottleneck_features`` runs only the encoder; it must equal the mean over pixels of the
    deepest encoder block's output inside the full forward pass (a hook), to float32 round-off."""
    torch.manual_seed(0)
    seg = OrganSegmenter(32, model_channels=4).train()  # train mode: the method switches to eval
    x = torch.rand(3, 1, 32, 32)
    seen = []
    handle = seg.net.down_4.register_forward_hook(lambda m, i, o: seen.append(o.mean(dim=(2, 3))))
    seg.segment(x)
    handle.remove()
    feats = seg.bottleneck_features(x)
    assert feats.shape == (3, 32) and seg.training  # 8c features; the mode is restored
    torch.testing.assert_close(feats, seen[0], rtol=1e-6, atol=1e-6)


def test_training_slices_of_an_augmenting_data_module_are_the_stored_ones() -> None:
    """Copies are judged against the training slices as stored: a data module that augments its
    training batches (random flips / affine) gives the callback the un-augmented dataset, whose
    items equal those of the same data module without augmentation."""
    from medsynth.callbacks import SynthesisMetrics

    kw = {"num_train_cases": 2, "num_val_cases": 1, "num_test_cases": 1, "depth": 4, "image_size": 32}
    plain, augmented = PhantomDataModule(**kw), PhantomDataModule(**kw, augment=True)
    for dm in (plain, augmented):
        dm.setup("fit")
    torch.manual_seed(0)
    assert not all(
        torch.equal(a["image"], b["image"])
        for a, b in zip(augmented.train_dataloader().dataset, plain.train_dataloader().dataset)
    )  # the loader's items are augmented
    source = SynthesisMetrics(metrics=("memorization",))._training_slices(augmented)
    reference = plain.train_dataloader().dataset
    assert len(source) == len(reference) == 8
    for a, b in zip(source, reference):
        assert torch.equal(a["image"], b["image"])


def test_protocol_memorization_scorer_matches_the_brute_force(phantom_slices) -> None:
    """benchmarks.protocol.memorization_scorer: the copy rate and medians recomputed with the
    numpy brute force; real test slices score the 5th-percentile rule's own 1/N-ish rate, copies
    of training slices score 1."""
    from benchmarks.protocol import memorization_scorer

    train, test = phantom_slices["train"], phantom_slices["test"]
    scorer = memorization_scorer(train)
    batch = {"image": test}
    flat = lambda x: x.double().flatten(1).numpy() / np.sqrt(32 * 32)  # noqa: E731
    d_real, _ = _numpy_nn(flat(test), flat(train))
    thr = np.percentile(d_real, 5.0)
    synth = test.flip(-1)  # some other images
    d_syn, _ = _numpy_nn(flat(synth), flat(train))
    got = scorer(synth, batch)
    assert got["memorization/threshold"] == pytest.approx(thr, rel=1e-9)
    assert got["memorization/copy_rate"] == pytest.approx(float(np.mean(d_syn < thr)))
    assert got["memorization/synthetic_q50"] == pytest.approx(float(np.median(d_syn)), rel=1e-9)
    assert got["memorization/real_q50"] == pytest.approx(float(np.median(d_real)), rel=1e-9)
    copies = train[: len(test)]
    assert scorer(copies, batch)["memorization/copy_rate"] == 1.0
