"""OASIS (Schönfeld et al., "You Only Need Adversarial Supervision for Semantic Image Synthesis", ICLR 2021)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from medsynth.models.gan import GANModule
from medsynth.nn.discriminators import OASISDiscriminator
from medsynth.nn.gan_losses import labelmix_loss, labelmix_mask, oasis_d_fake_loss, oasis_real_loss
from medsynth.nn.generators import OASISGenerator
from medsynth.nn.vgg import VGGLoss

__all__ = ["OASIS"]


class OASIS(GANModule):
    """OASIS: SPADE-style generator with 3D noise, U-Net segmentation discriminator with N + 1
    classes (fake = class 0), class-balanced cross-entropy, LabelMix, EMA generator.

    D loss: ``CE_w(D(real), mask + 1) + CE(D(fake), 0) + lambda_labelmix * LabelMix``; G loss:
    ``CE_w(D(fake), mask + 1)`` (+ optional VGG), where CE_w uses the per-batch class weights
    ``w_c = B*H*W / (present classes * count_c)``. ``generate()`` uses the EMA generator, whose
    batch-norm statistics are recomputed over ``ema_bn_batches`` training batches before every
    validation and test; ``generator`` seeds the 3D noise.

    Args:
        image_size: Slice side (the generator starts at image_size / 32, adapted below 64).
        num_classes: Mask classes N (None: from label_set, 17 for AMOS); D predicts N + 1.
        label_set: "amos", "totalseg" or a dataset.json path (medsynth.labels.get_label_set).
        model_channels: Generator base width (64; channels [16,16,16,8,4,2,1] x 64).
        disc_channels: Discriminator base width (64; encoder 128..512).
        spade_hidden: Hidden channels of each SPADE layer (128).
        z_dim: Noise channels (64).
        lambda_labelmix: LabelMix weight (10).
        lambda_vgg: VGG weight (0, OASIS's default; 10 with ``--add_vgg_loss``).
        vgg_weights: Local VGG19 weights file, needed when ``lambda_vgg > 0``.
        lr_g: Generator learning rate (1e-4).
        lr_d: Discriminator learning rate (4e-4).
        betas: Adam betas of G and D ((0, 0.999)).
        ema_decay: EMA decay of the generator (0.9999); None disables the EMA.
        ema_bn_batches: Training batches for the EMA batch-norm statistics (50, as OASIS).
        ema_warmup: Ramp the EMA decay as min(ema_decay, (1 + n) / (10 + n)) over steps n (False,
            OASIS's setting; short runs need it, see :class:`medsynth.nn.ema.EMA`).
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
        z_dim: int = 64,
        lambda_labelmix: float = 10.0,
        lambda_vgg: float = 0.0,
        vgg_weights: str | Path | None = None,
        lr_g: float = 1e-4,
        lr_d: float = 4e-4,
        betas: tuple[float, float] = (0.0, 0.999),
        ema_decay: float | None = 0.9999,
        ema_bn_batches: int = 50,
        ema_warmup: bool = False,
        window_level: float = 40.0,
        window_width: float = 400.0,
    ) -> None:
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
        for name, value in (("lambda_labelmix", lambda_labelmix), ("lambda_vgg", lambda_vgg)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.save_hyperparameters()
        self.vgg = VGGLoss(vgg_weights) if lambda_vgg > 0 else None  # fails early without weights
        self.build(
            OASISGenerator(image_size, self.num_classes, model_channels, z_dim=z_dim, hidden=spade_hidden),
            OASISDiscriminator(image_size, self.num_classes, 1, disc_channels),
            ema_decay=ema_decay,
            ema_bn_batches=ema_bn_batches,
            ema_warmup=ema_warmup,
        )
        self.loss_weights = {
            "d_real": 1.0,
            "d_fake": 1.0,
            "d_labelmix": lambda_labelmix,
            "g_adv": 1.0,
            "g_vgg": lambda_vgg,
        }

    def discriminator_losses(
        self, real: Tensor, fake: Tensor, seg: Tensor, mask: Tensor
    ) -> dict[str, Tensor]:
        d_real = self.discriminator(real)  # [B, N + 1, H, W]
        d_fake = self.discriminator(fake)
        terms = {"d_real": oasis_real_loss(d_real, mask), "d_fake": oasis_d_fake_loss(d_fake)}
        if self.loss_weights["d_labelmix"] > 0:
            m = labelmix_mask(mask).to(real.dtype)  # [B, 1, H, W], 1 = real pixel
            d_mixed = self.discriminator(m * real + (1 - m) * fake)
            terms["d_labelmix"] = labelmix_loss(d_mixed, d_real, d_fake, m)
        return terms

    def generator_losses(self, real: Tensor, fake: Tensor, seg: Tensor, mask: Tensor) -> dict[str, Tensor]:
        terms = {"g_adv": oasis_real_loss(self.discriminator(fake), mask)}
        if self.vgg is not None:
            terms["g_vgg"] = self.vgg(fake, real)
        return terms
