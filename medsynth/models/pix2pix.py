"""Pix2Pix (Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks", CVPR 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medsynth.models.gan import GANModule
from medsynth.nn.discriminators import PatchDiscriminator
from medsynth.nn.gan_losses import bce_gan_loss
from medsynth.nn.generators import UNetGenerator, unet_depth

__all__ = ["Pix2Pix"]


class Pix2Pix(GANModule):
    """Pix2Pix: U-Net generator from the one-hot mask, 70x70 PatchGAN on concat(mask, image).

    Losses: vanilla GAN (BCE with logits) + ``lambda_l1`` x L1(fake, real); the discriminator
    loss is halved (``0.5 * (d_real + d_fake)``). Adam with betas (0.5, 0.999); the learning
    rate 5e-4 is the one Zhuang et al. used for this task (the Pix2Pix default is 2e-4).

    Args:
        image_size: Slice side, a power of two (the U-Net has ``log2(image_size)`` levels).
        num_classes: Mask classes (None: from label_set, 17 for AMOS).
        label_set: "amos", "totalseg" or a dataset.json path (medsynth.labels.get_label_set).
        model_channels: Generator base width ngf (64).
        disc_channels: Discriminator base width ndf (64).
        n_layers_d: PatchGAN normalised convs (3: 70x70 patches); capped at
            ``log2(image_size) - 2`` so that a small image still leaves a patch map.
        lambda_l1: Weight of the L1 term (100).
        dropout: Decoder dropout (0.5; it is the generator's only noise).
        lr: Adam learning rate of G and D (5e-4).
        betas: Adam betas (0.5, 0.999).
        window_level, window_width: The CT window (HU) of the [0, 1] images it learns and makes
            (the paper's 40/400; must equal the data module's, see :class:`~medsynth.models.SynthesisModule`).
    """

    def __init__(
        self,
        image_size: int,
        num_classes: int | None = None,
        label_set: str = "amos",
        model_channels: int = 64,
        disc_channels: int = 64,
        n_layers_d: int = 3,
        lambda_l1: float = 100.0,
        dropout: float = 0.5,
        lr: float = 5e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        window_level: float = 40.0,
        window_width: float = 400.0,
    ) -> None:
        super().__init__(
            image_size,
            num_classes,
            label_set,
            lr_g=lr,
            lr_d=lr,
            betas_g=betas,
            betas_d=betas,
            window_level=window_level,
            window_width=window_width,
        )
        if lambda_l1 < 0:
            raise ValueError(f"lambda_l1 must be >= 0, got {lambda_l1}")
        if n_layers_d < 1:
            raise ValueError(f"n_layers_d must be >= 1, got {n_layers_d}")
        self.save_hyperparameters()
        depth = unet_depth(image_size)
        self.build(
            UNetGenerator(self.num_classes, 1, model_channels, depth=depth, dropout=dropout),
            PatchDiscriminator(
                self.num_classes + 1,
                disc_channels,
                min(n_layers_d, max(1, depth - 2)),
                norm="batch",
                padding=1,
            ),
        )
        self.loss_weights = {"d_real": 0.5, "d_fake": 0.5, "g_gan": 1.0, "g_l1": lambda_l1}

    def discriminate(self, seg: Tensor, image: Tensor) -> Tensor:
        return self.discriminator(torch.cat([seg, image.to(seg.dtype)], dim=1))  # [B, 1, h, w]

    def discriminator_losses(
        self, real: Tensor, fake: Tensor, seg: Tensor, mask: Tensor
    ) -> dict[str, Tensor]:
        return {
            "d_real": bce_gan_loss(self.discriminate(seg, real), True),
            "d_fake": bce_gan_loss(self.discriminate(seg, fake), False),
        }

    def generator_losses(self, real: Tensor, fake: Tensor, seg: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return {"g_gan": bce_gan_loss(self.discriminate(seg, fake), True), "g_l1": F.l1_loss(fake, real)}
