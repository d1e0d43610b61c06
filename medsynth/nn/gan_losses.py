"""GAN losses as pure functions (Pix2Pix, SPADE, OASIS); the LightningModules weight and sum them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bce_gan_loss",
    "hinge_d_loss",
    "hinge_g_loss",
    "feature_matching_loss",
    "oasis_class_weights",
    "oasis_d_fake_loss",
    "oasis_real_loss",
    "labelmix_mask",
    "labelmix_loss",
]


def bce_gan_loss(logits: Tensor, real: bool) -> Tensor:
    """Vanilla GAN loss (Goodfellow et al.; Pix2Pix): BCE with logits against 1 (real) or 0 (fake)."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def _mean_over_scales(values: list[Tensor]) -> Tensor:
    return sum(values) / len(values)


def hinge_d_loss(logits: Tensor | list[Tensor], real: bool) -> Tensor:
    """Discriminator hinge loss (SPADE): ``mean(relu(1 - d))`` on real, ``mean(relu(1 + d))`` on fake.

    A list (one logit map per scale) gives the mean over scales.
    """
    if isinstance(logits, (list, tuple)):
        return _mean_over_scales([hinge_d_loss(x, real) for x in logits])
    return F.relu(1.0 - logits).mean() if real else F.relu(1.0 + logits).mean()


def hinge_g_loss(logits: Tensor | list[Tensor]) -> Tensor:
    """Generator hinge loss (SPADE): ``-mean(d(fake))``, averaged over scales for a list."""
    if isinstance(logits, (list, tuple)):
        return _mean_over_scales([hinge_g_loss(x) for x in logits])
    return -logits.mean()


def feature_matching_loss(fake: list[list[Tensor]], real: list[list[Tensor]]) -> Tensor:
    """pix2pixHD/SPADE feature matching: per scale, the sum over intermediate features (all
    but the last, the logits) of ``L1(f_fake, f_real.detach())``; mean over scales."""
    if len(fake) != len(real) or not fake:
        raise ValueError(
            f"fake and real need the same non-zero number of scales, got {len(fake)}, {len(real)}"
        )
    per_scale = []
    for f_scale, r_scale in zip(fake, real, strict=True):
        per_scale.append(
            sum(F.l1_loss(f, r.detach()) for f, r in zip(f_scale[:-1], r_scale[:-1], strict=True))
        )
    return _mean_over_scales(per_scale)


def oasis_class_weights(mask: Tensor, num_classes: int) -> Tensor:
    """OASIS class balancing: per-pixel weights ``[B, H, W]``.

    ``w_c = (B * H * W) / (number of classes present in the batch * count_c)``, looked up at each
    pixel's class (Schönfeld et al. 2021, Eq. 3 and the authors' ``get_class_balancing``).
    """
    counts = torch.bincount(mask.reshape(-1), minlength=num_classes).to(torch.float32)  # [N]
    present = (counts > 0).sum()
    weights = torch.where(
        counts > 0, mask.numel() / (present * counts.clamp_min(1)), torch.zeros_like(counts)
    )
    return weights[mask]  # [B, H, W]


def oasis_real_loss(logits: Tensor, mask: Tensor) -> Tensor:
    """Class-balanced (N+1)-class CE towards the real classes ``mask + 1`` (D on real, G on fake)."""
    # logits: [B, N + 1, H, W]; mask: [B, H, W] in 0..N-1
    ce = F.cross_entropy(logits.float(), mask + 1, reduction="none")  # [B, H, W]
    return (ce * oasis_class_weights(mask, logits.shape[1] - 1)).mean()


def oasis_d_fake_loss(logits: Tensor) -> Tensor:
    """Unweighted CE of D on generated images towards the fake class 0."""
    target = torch.zeros(logits.shape[0], *logits.shape[2:], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), target)


def labelmix_mask(mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """LabelMix's binary map ``[B, 1, H, W]``: one coin flip per class present in the batch, 1 = take
    the real pixel (OASIS, Sec. 3.3)."""
    num = int(mask.max()) + 1
    gen_device = generator.device if generator is not None else mask.device
    coins = torch.randint(0, 2, (num,), generator=generator, device=gen_device).to(mask.device)
    return coins[mask].unsqueeze(1).float()


def labelmix_loss(d_mixed: Tensor, d_real: Tensor, d_fake: Tensor, m: Tensor) -> Tensor:
    """``MSE(D(mixed), m * D(real) + (1 - m) * D(fake))`` on the logits (OASIS LabelMix)."""
    target = m * d_real + (1 - m) * d_fake
    return F.mse_loss(d_mixed.float(), target.float())
