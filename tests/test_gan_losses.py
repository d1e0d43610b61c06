"""GAN losses against hand-computed values (hinge, BCE, feature matching, OASIS weights, LabelMix)."""

import math

import numpy as np
import pytest
import torch

from medsynth.nn.gan_losses import (
    bce_gan_loss,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    labelmix_loss,
    labelmix_mask,
    oasis_class_weights,
    oasis_d_fake_loss,
    oasis_real_loss,
)


def test_hinge_losses_by_hand():
    d = torch.tensor([[-2.0, 0.5, 1.5]])
    assert hinge_d_loss(d, real=True).item() == pytest.approx((3.0 + 0.5 + 0.0) / 3)  # relu(1 - d)
    assert hinge_d_loss(d, real=False).item() == pytest.approx((0.0 + 1.5 + 2.5) / 3)  # relu(1 + d)
    assert hinge_g_loss(d).item() == pytest.approx(0.0)  # -mean(d)
    # A list of scales gives the mean over scales.
    d2 = torch.tensor([[3.0]])
    assert hinge_d_loss([d, d2], real=True).item() == pytest.approx((3.5 / 3 + 0.0) / 2)
    assert hinge_g_loss([d, d2]).item() == pytest.approx((0.0 - 3.0) / 2)


def test_bce_gan_loss_by_hand():
    d = torch.tensor([0.0, 2.0])
    real = (math.log(2.0) + math.log(1 + math.exp(-2.0))) / 2  # -log sigmoid(d)
    fake = (math.log(2.0) + math.log(1 + math.exp(2.0))) / 2  # -log(1 - sigmoid(d))
    assert bce_gan_loss(d, real=True).item() == pytest.approx(real, rel=1e-6)
    assert bce_gan_loss(d, real=False).item() == pytest.approx(fake, rel=1e-6)


def test_feature_matching_by_hand():
    # Two scales, two intermediate features each (the last entry, the logits, is ignored).
    fake = [
        [torch.ones(1, 2, 2, 2), torch.zeros(1, 1, 2, 2), torch.full((1, 1, 1, 1), 9.0)],
        [torch.full((1, 1, 2, 2), 3.0), torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)],
    ]
    real = [
        [torch.zeros(1, 2, 2, 2), torch.full((1, 1, 2, 2), -2.0), torch.zeros(1, 1, 1, 1)],
        [torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 5.0)],
    ]
    expected = ((1.0 + 2.0) + (2.0 + 0.0)) / 2
    assert feature_matching_loss(fake, real).item() == pytest.approx(expected)
    fake[0][0].requires_grad_(True)
    real[0][0].requires_grad_(True)
    feature_matching_loss(fake, real).backward()
    assert real[0][0].grad is None  # real features are detached


def test_oasis_class_weights_by_hand():
    mask = torch.tensor([[[0, 0, 0, 0], [0, 1, 1, 2]]])  # counts 5, 2, 1; 3 classes present; B*H*W = 8
    w = oasis_class_weights(mask, num_classes=5)
    expected = {0: 8 / (3 * 5), 1: 8 / (3 * 2), 2: 8 / (3 * 1)}
    ref = torch.tensor([[[expected[int(c)] for c in row] for row in mask[0]]])
    torch.testing.assert_close(w, ref)


def test_oasis_ce_losses_against_numpy():
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[[0, 0, 2], [2, 2, 2]], [[1, 0, 0], [0, 0, 2]]])  # [2, 2, 3]
    logits = torch.randn(2, 4, 2, 3, generator=g)  # N = 3 classes + fake
    lg = logits.double().numpy()
    logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
    counts = np.bincount(mask.numpy().ravel(), minlength=3)
    w_c = mask.numel() / ((counts > 0).sum() * counts)
    m = mask.numpy()
    b, i, j = np.meshgrid(range(2), range(2), range(3), indexing="ij")
    real = -(logp[b, m + 1, i, j] * w_c[m]).mean()
    fake = -logp[:, 0].mean()
    assert oasis_real_loss(logits, mask).item() == pytest.approx(real, rel=1e-5)
    assert oasis_d_fake_loss(logits).item() == pytest.approx(fake, rel=1e-5)


def test_labelmix_mask_one_coin_per_class():
    mask = torch.randint(0, 6, (3, 8, 8), generator=torch.Generator().manual_seed(1))
    m = labelmix_mask(mask, generator=torch.Generator().manual_seed(2))
    assert m.shape == (3, 1, 8, 8) and set(m.unique().tolist()) <= {0.0, 1.0}
    for c in range(6):
        values = m[:, 0][mask == c].unique()
        assert values.numel() == 1  # every pixel of a class takes the same side, in every sample
    again = labelmix_mask(mask, generator=torch.Generator().manual_seed(2))
    assert torch.equal(m, again)


def test_labelmix_loss_target_by_hand():
    m = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # [1, 1, 2, 2]
    d_real = torch.full((1, 3, 2, 2), 2.0)
    d_fake = torch.full((1, 3, 2, 2), -1.0)
    d_mixed = torch.full((1, 3, 2, 2), 0.5)
    # target = m * 2 + (1 - m) * (-1): 2 where m = 1, -1 where m = 0
    expected = ((0.5 - 2.0) ** 2 * 2 + (0.5 + 1.0) ** 2 * 2) / 4
    assert labelmix_loss(d_mixed, d_real, d_fake, m).item() == pytest.approx(expected)
