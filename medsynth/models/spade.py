"""SPADE (Park et al., "Semantic Image Synthesis with Spatially-Adaptive Normalization", CVPR 2019)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from medsynth.models.gan import GANModule
from medsynth.nn.discriminators import MultiscaleDiscriminator
from medsynth.nn.gan_losses import feature_matching_loss, hinge_d_loss, hinge_g_loss
from medsynth.nn.generators import SPADEGenerator
from medsynth.nn.vgg import VGGLoss

__all__ = ["SPADE"]


class SPADE(GANModule):
    """SPADE generator, multiscale PatchGAN on concat(mask, image), hinge loss, feature matching
    and VGG19 perceptual loss, TTUR.

    The published setting uses the VGG loss (``lambda_vgg=10``) with ImageNet VGG19 weights,
    which medsynth never downloads: pass ``vgg_weights`` (a local torchvision VGG19 state dict,
    see :data:`medsynth.nn.vgg.VGG_WEIGHTS_HELP`) or set ``lambda_vgg=0``; the default without a
    weights file is a ValueError at construction.

    Args:
        image_size: Slice side (the generator starts at image_size / 32, adapted below 64).
        num_classes: Mask classes (None: from label_set, 17 for AMOS).
        label_set: "amos", "totalseg" or a dataset.json path (medsynth.labels.get_label_set).
        model_channels: Generator base width ngf (64).
        disc_channels: Discriminator base width ndf (64).
        spade_hidden: Hidden channels of each SPADE layer (128).
        num_d: Discriminator scales (2).
        n_layers_d: Normalised convs per scale (3; SPADE's ``n_layers_D=4``).
        lambda_feat: Feature-matching weight (10).
        lambda_vgg: VGG perceptual-loss weight (10; 0 disables it and needs no weights).
        vgg_weights: Local VGG19 weights file.
        lr: Base learning rate (5e-4 for this task, Zhuang et al.).
        ttur: Two time-scale update rule: G at lr / 2, D at lr * 2 (SPADE's default); without
            it both use lr.
        betas: Adam betas of G and D ((0, 0.9), SPADE's TTUR setting).
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
        spade_hidden: int = 128,
        num_d: int = 2,
        n_layers_d: int = 3,
        lambda_feat: float = 10.0,
        lambda_vgg: float = 10.0,
        vgg_weights: str | Path | None = None,
        lr: float = 5e-4,
        ttur: bool = True,
        betas: tuple[float, float] = (0.0, 0.9),
        window_level: float = 40.0,
        window_width: float = 400.0,
    ) -> None:
        lr_g, lr_d = (lr / 2, lr * 2) if ttur else (lr, lr)
        super().__init__(
            image_size,
            num_classes,
            label_set,
            lr_g=lr_g,
            lr_d=lr_d,
            betas_g=betas,
            betas_d=betas,
            window_level=window_level,
            window_width=window_width,
        )
        for name, value in (("lambda_feat", lambda_feat), ("lambda_vgg", lambda_vgg)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.save_hyperparameters()
        self.vgg = VGGLoss(vgg_weights) if lambda_vgg > 0 else None  # fails early without weights
        self.build(
            SPADEGenerator(image_size, self.num_classes, model_channels, hidden=spade_hidden),
            MultiscaleDiscriminator(self.num_classes + 1, disc_channels, n_layers_d, num_d),
        )
        self.loss_weights = {
            "d_real": 1.0,
            "d_fake": 1.0,
            "g_gan": 1.0,
            "g_feat": lambda_feat,
            "g_vgg": lambda_vgg,
        }

    def discriminate(
        self, seg: Tensor, fake: Tensor, real: Tensor
    ) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
        """One pass over concat(fake, real) along the batch; per-scale features of each half."""
        x = torch.cat([seg, fake.to(seg.dtype)], 1), torch.cat([seg, real.to(seg.dtype)], 1)
        out = self.discriminator(torch.cat(x, dim=0))  # per scale, per layer [2B, C, h, w]
        b = seg.shape[0]
        return [[f[:b] for f in s] for s in out], [[f[b:] for f in s] for s in out]

    def discriminator_losses(
        self, real: Tensor, fake: Tensor, seg: Tensor, mask: Tensor
    ) -> dict[str, Tensor]:
        d_fake, d_real = self.discriminate(seg, fake, real)
        return {
            "d_real": hinge_d_loss([s[-1] for s in d_real], True),
            "d_fake": hinge_d_loss([s[-1] for s in d_fake], False),
        }

    def generator_losses(self, real: Tensor, fake: Tensor, seg: Tensor, mask: Tensor) -> dict[str, Tensor]:
        d_fake, d_real = self.discriminate(seg, fake, real)
        terms = {"g_gan": hinge_g_loss([s[-1] for s in d_fake])}
        if self.loss_weights["g_feat"] > 0:
            terms["g_feat"] = feature_matching_loss(d_fake, d_real)
        if self.vgg is not None:
            terms["g_vgg"] = self.vgg(fake, real)
        return terms
