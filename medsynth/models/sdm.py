"""SDM: Semantic Diffusion Model (Wang et al., arXiv:2207.00050), a baseline of Zhuang et al.

The encoder of the denoiser sees only x_t; the mask enters the middle block and every decoder
res block through SPADE group norm. Classifier-free guidance: while training the whole one-hot
map is zeroed with probability ``drop_rate``; at sampling eps = eps_u + s (eps_c - eps_u) (the
same on a flow's velocity). Process, loss, EMA and samplers are the DDPMs'
(:class:`~medsynth.models.ddpm.DiffusionModel`), ``process="rflow"`` included.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from medsynth.diffusion import ClassifierFreeGuidance
from medsynth.models.base import one_hot
from medsynth.models.ddpm import DiffusionModel
from medsynth.nn.unet import SPADEDiffusionUNet

__all__ = ["SDM"]


class SDM(DiffusionModel):
    """Semantic Diffusion Model with classifier-free guidance.

    Args:
        image_size: Side of the square slices.
        num_classes: Mask classes (None: from label_set, 17 for AMOS).
        label_set: "amos", "totalseg" or a dataset.json path (medsynth.labels.get_label_set).
        model_channels: Base width of the UNet (128, as the paper trains SDM like its DDPMs).
        drop_rate: Probability of zeroing the whole mask while training (0; SDM's recipe is to
            fine-tune with 0.2 at lr 2e-5 after training with 0 at lr 1e-4).
        guidance_scale: Default classifier-free guidance scale at sampling (1.5; 1.0 = none).
        spade_hidden: Hidden width of the SPADE modulation nets (128).
        **kwargs: As :class:`~medsynth.models.ddpm.DiffusionModel`.
    """

    generate_options = ("num_steps", "sampler", "guidance_scale")

    def __init__(
        self,
        image_size: int,
        num_classes: int | None = None,
        label_set: str = "amos",
        model_channels: int = 128,
        drop_rate: float = 0.0,
        guidance_scale: float = 1.5,
        spade_hidden: int = 128,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must lie in [0, 1), got {drop_rate!r}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale!r}")
        if spade_hidden < 1:
            raise ValueError(f"spade_hidden must be positive, got {spade_hidden!r}")
        self._spade_hidden = spade_hidden
        super().__init__(image_size, num_classes, label_set, model_channels=model_channels, **kwargs)
        # Whether the null (all-zero) condition has been trained (drop_rate > 0 at some point):
        # guidance extrapolates from it, so without it guidance means nothing. Saved in checkpoints.
        self.register_buffer("null_trained", torch.tensor(False))

    def build_network(self) -> nn.Module:
        return self.unet(
            cls=SPADEDiffusionUNet, in_channels=1, label_nc=self.num_classes, spade_hidden=self._spade_hidden
        )

    def model_kwargs(self, mask: Tensor) -> dict[str, Tensor]:
        return {"seg": one_hot(mask, self.num_classes)}

    def training_model_kwargs(self, mask: Tensor) -> dict[str, Tensor]:
        seg = one_hot(mask, self.num_classes)  # [B, K, H, W]
        if self.hparams.drop_rate > 0:
            self.null_trained.fill_(True)
            keep = (torch.rand(seg.shape[0], device=seg.device) >= self.hparams.drop_rate).to(seg.dtype)
            seg = seg * keep[:, None, None, None]  # the null condition is the all-zero map
        return {"seg": seg}

    def effective_guidance_scale(self, guidance_scale: float | None = None) -> float:
        """The scale ``generate()`` uses: ``guidance_scale``, else the default (1.5, SDM).

        The default falls back to 1.0 (no guidance) while the null condition is untrained
        (trained with drop_rate 0 only; the recipe fine-tunes with drop_rate 0.2 for guidance).
        """
        scale = float(self.hparams.guidance_scale if guidance_scale is None else guidance_scale)
        if scale != 1.0 and not bool(self.null_trained):
            if guidance_scale is None:
                rank_zero_warn(
                    "SDM: the null condition was never trained (drop_rate=0), so generate() uses "
                    f"guidance_scale=1.0 instead of the default {scale}; fine-tune with drop_rate=0.2 "
                    "(experiments/*/sdm_finetune.yaml) to use guidance"
                )
                return 1.0
            rank_zero_warn(
                f"SDM: guidance_scale={scale} with a null condition that was never trained (drop_rate=0)"
            )
        return scale

    def denoiser(self, guidance_scale: float | None = None) -> nn.Module:
        # Guidance acts on the prediction, channel 0 (eps, x_0 or v; a flow's velocity); Improved
        # DDPM's variance channel comes from the conditional pass.
        return ClassifierFreeGuidance(
            self.ema.shadow, self.effective_guidance_scale(guidance_scale), cond_key="seg", guided_channels=1
        )
