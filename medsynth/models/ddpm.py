"""The paper's three conditional DDPMs (Zhuang et al., Sec. 2.2, Fig. 2) over one shared base.

:class:`DiffusionModel` holds everything the variants share: the process (the Gaussian diffusion
with the hybrid loss of Improved DDPM, the paper's; or a rectified flow, ``process="rflow"``), the
EMA denoiser used for validation and generation, the optimiser, logging and the samplers. A
variant only says how to build its network and which ``model_kwargs`` carry the mask to it:

- :class:`ConditionalDDPM` (Fig. 2a): one-hot mask concatenated to x_t.
- :class:`MaskGuidedDDPM` (Fig. 2b): one-hot mask through a separate encoder branch whose
  features join the UNet's encoder and decoder at every resolution.
- :class:`EdgeGuidedDDPM` (Fig. 2c): (a) plus the encoder branch fed with the semantic edge map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medsynth.data import semantic_edges
from medsynth.data.context import ContextSpec, SliceContext
from medsynth.diffusion import build_process, check_sampler, sample
from medsynth.labels import LabelSet
from medsynth.models.base import SynthesisModule, check_batch, one_hot
from medsynth.nn.context import ContextDenoiser
from medsynth.nn.ema import EMA
from medsynth.nn.unet import DiffusionUNet
from medsynth.random import GeneratorLike, randn

__all__ = ["DiffusionModel", "ConditionalDDPM", "MaskGuidedDDPM", "EdgeGuidedDDPM"]


class DiffusionModel(SynthesisModule):
    """Shared base of the diffusion methods (the three DDPMs and SDM).

    A variant overrides :meth:`build_network` and :meth:`model_kwargs` (and optionally
    :meth:`training_model_kwargs` / :meth:`denoiser`). ``__init__`` calls ``build_network()``
    after ``save_hyperparameters()``, so the hook can read ``self.hparams`` (the base's and the
    variant's own arguments); any other state it needs must be set *before* calling
    ``super().__init__`` (SDM stores ``self._spade_hidden`` first for this reason).

    Args:
        image_size: Side of the square slices.
        num_classes: Mask classes (None: from label_set, 17 for AMOS).
        label_set: "amos", "totalseg" or a dataset.json path (medsynth.labels.get_label_set).
        model_channels: Base width of the UNet (128, Improved DDPM at 256px).
        channel_mult: Width multipliers per resolution; default by image size ((1,1,2,2,4,4) at 256).
        num_res_blocks: Res blocks per resolution (2).
        attention_resolutions: Feature sides with self-attention (16, 8).
        dropout: Res-block dropout (0).
        num_heads: Attention heads (4).
        timesteps: T (1000).
        lr: Adam learning rate (1e-4; weight decay 0).
        ema_decay: Decay of the EMA denoiser used for validation and generation (0.9999).
        noise_schedule: "linear" (the paper's, Ho et al.) or "cosine" (Improved DDPM, Eq. 17:
            less of the chain spent on near-pure noise, proposed for small images).
        prediction_type: What the denoiser predicts: "eps" (the paper's), "x0" or "v"
            (medsynth.diffusion.PREDICTION_TYPES); the loss regresses the same quantity.
        ema_warmup: Ramp the EMA decay as min(ema_decay, (1 + n) / (10 + n)) over optimiser steps n
            (False, the paper's setting; short runs need it, or the EMA is still the
            initialisation: 0.9999^2000 = 0.82).
        lr_warmup_steps: Linear learning-rate warm-up from lr / lr_warmup_steps to lr over this
            many optimiser steps (0: none, the paper's setting).
        sampler: Default sampler of ``generate``; None: the process's first, "ddpm" (the paper's
            ancestral sampling) or "euler" for ``process="rflow"``.
        num_steps: Default network evaluations of ``generate`` (None: 1000 for "ddpm"; see
            medsynth.diffusion.DEFAULT_NUM_STEPS).
        init_from: A medsynth checkpoint whose weights (network and EMA) start training, with a
            fresh optimiser and step count: fine-tuning, e.g. SDM's guidance stage. Loaded when
            fitting starts; resuming with ``ckpt_path`` then overrides it as usual.
        channels_last: Keep the denoiser's (and its EMA copy's) conv weights channels-last, the
            faster layout for convolutions on recent GPUs (False).
        compile: ``torch.compile`` the denoiser and its EMA copy, in place (state dict keys stay) (False).
        organ_dropout: Mask-ablated training (Konz et al., SegGuidedDiff, MICCAI 2024): each
            structure present in a training mask is dropped with this probability (its pixels
            become body), so ``generate()`` stays faithful to the structures a partial mask gives (0).
        process: "ddpm" (Improved DDPM, the paper's) or "rflow" (rectified flow: the same network
            predicts the velocity eps - x_0 on x_t = (1 - t) x_0 + t eps and samples with "euler" or
            "heun"; docs/methods/rectified_flow.md). ``timesteps``, ``noise_schedule`` and
            ``prediction_type`` belong to "ddpm", the four below to "rflow"; one of the other
            process's set off its default is a ValueError.
        timestep_sampling: How a flow draws training times: "logit-normal" (SD3's) or "uniform".
        logit_mean: m of the logit-normal t = sigmoid(m + s n) (0, SD3).
        logit_std: s of the logit-normal (1, SD3).
        time_shift: SD3's time shift of a flow's training times and sampling grid (1: none).
        window_level, window_width: The CT window (HU) of the [0, 1] images it learns and makes
            (the paper's 40/400; must equal the data module's, see :class:`~medsynth.models.SynthesisModule`).
        context_slices: 2.5D: the network also sees the masks of slices ``±1..±k`` (0, the
            paper's setting: slice by slice). See :mod:`medsynth.nn.context` for the encoding.
        context_previous: 2.5D: the network also sees the ``p`` slices below (0): real ones in
            training, the generated ones when a volume is made in order (inferior to superior).
        context_embed: Channels of each neighbour mask's learned embedding (4).
        context_noise: The previous slices are noise-augmented in training (Ho et al. 2022,
            Cascaded Diffusion Models) at a level drawn uniformly from 0 to this fraction of the
            chain's T steps (0.2): x_prev -> q(x_s | x_prev); the level enters the network.
        context_sample_noise: The level (fraction of T) the previous slices get when generating (0.1);
            settable on a trained model (:attr:`context_sample_noise`).
        context_drop: Probability that training hides a slice's previous slices (flagged missing)
            (0.1), so that the model also makes a slice after a gap in z, not only at a volume's start.

    Attributes:
        condition_cache: Whether ``generate()`` encodes the condition once per call instead of at
            every step (True; same outputs to float rounding; False is for benchmarks and tests).
    """

    generate_options: tuple[str, ...] = ("num_steps", "sampler")
    _base_class = True  # the variants below are the methods
    condition_cache: bool = True

    def __init__(
        self,
        image_size: int,
        num_classes: int | None = None,
        label_set: str = "amos",
        model_channels: int = 128,
        channel_mult: Sequence[int] | None = None,
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16, 8),
        dropout: float = 0.0,
        num_heads: int = 4,
        timesteps: int = 1000,
        lr: float = 1e-4,
        ema_decay: float = 0.9999,
        sampler: str | None = None,
        num_steps: int | None = None,
        init_from: str | None = None,
        organ_dropout: float = 0.0,
        noise_schedule: str = "linear",
        prediction_type: str = "eps",
        ema_warmup: bool = False,
        lr_warmup_steps: int = 0,
        channels_last: bool = False,
        compile: bool = False,
        process: str = "ddpm",
        timestep_sampling: str = "logit-normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        time_shift: float = 1.0,
        window_level: float = 40.0,
        window_width: float = 400.0,
        context_slices: int = 0,
        context_previous: int = 0,
        context_embed: int = 4,
        context_noise: float = 0.2,
        context_sample_noise: float = 0.1,
        context_drop: float = 0.1,
    ) -> None:
        super().__init__(image_size, num_classes, label_set, window_level, window_width)
        try:
            spec = ContextSpec(context_slices, context_previous)
        except ValueError as err:
            raise ValueError(f"context_slices/context_previous: {err}") from err
        if spec.enabled and process != "ddpm":
            raise ValueError(
                f"context_slices/context_previous (2.5D) need process='ddpm', got process={process!r}: "
                "the previous slices' noise augmentation uses the DDPM's q(x_s | x_0)"
            )
        if not isinstance(context_embed, int) or context_embed < 1:
            raise ValueError(f"context_embed must be a positive int, got {context_embed!r}")
        if not 0.0 <= context_noise <= 1.0:
            raise ValueError(
                f"context_noise must lie in [0, 1] (a fraction of the {timesteps} steps), got {context_noise!r}"
            )
        if not 0.0 <= context_drop < 1.0:
            raise ValueError(f"context_drop must lie in [0, 1), got {context_drop!r}")
        self.context_spec = spec if spec.enabled else None
        diffusion = build_process(
            process,
            timesteps=timesteps,
            noise_schedule=noise_schedule,
            prediction_type=prediction_type,
            timestep_sampling=timestep_sampling,
            logit_mean=logit_mean,
            logit_std=logit_std,
            time_shift=time_shift,
        )
        if sampler is not None:
            check_sampler(diffusion, sampler)
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        limit = diffusion.max_num_steps
        if num_steps is not None and (
            not isinstance(num_steps, int) or num_steps < 1 or (limit is not None and num_steps > limit)
        ):
            bound = "a positive int" if limit is None else f"an int in 1..{limit}"
            raise ValueError(f"num_steps must be None or {bound}, got {num_steps!r}")
        if not isinstance(lr_warmup_steps, int) or lr_warmup_steps < 0:
            raise ValueError(f"lr_warmup_steps must be an int >= 0, got {lr_warmup_steps!r}")
        if not 0.0 <= organ_dropout < 1.0:
            raise ValueError(f"organ_dropout must lie in [0, 1), got {organ_dropout!r}")
        self.save_hyperparameters()
        self.context_sample_noise = context_sample_noise  # validated by the property's setter
        #: The process (GaussianDiffusion or RectifiedFlow): loss, training times and samplers.
        self.diffusion = diffusion
        net = self.build_network()
        if self.context_spec is not None:  # the variant's network, with the context added to x_t
            net = ContextDenoiser(net, self.num_classes, context_slices, context_previous, context_embed)
        self.net = net
        self.ema = EMA(self.net, ema_decay, warmup=ema_warmup)
        for net in (self.net, self.ema.shadow):
            if channels_last:
                net.to(memory_format=torch.channels_last)
            if compile:
                net.compile()  # nn.Module.compile: torch.compile of forward, parameters unchanged

    # ---- what a variant defines ------------------------------------------------------------
    def build_network(self) -> nn.Module:
        """The denoiser ``net(x_t, t, **model_kwargs) -> [B, K, H, W]``: K = 2 for Improved DDPM (the
        prediction and the variance interpolation), 1 for a flow (the velocity); :meth:`unet` sets it
        from ``self.diffusion.output_channels``.

        Called once from ``DiffusionModel.__init__``, before the EMA copy is made: set whatever it
        reads other than ``self.hparams`` before ``super().__init__``. :meth:`unet` builds a
        :class:`DiffusionUNet` with this module's widths plus variant overrides (and, for a 2.5D
        model, the input channels of the context, which :class:`ContextDenoiser` then feeds).
        """
        raise NotImplementedError

    def model_kwargs(self, mask: Tensor) -> dict[str, Tensor]:
        """Conditioning passed to the network for a label map ``[B, H, W]``."""
        raise NotImplementedError

    def training_model_kwargs(self, mask: Tensor) -> dict[str, Tensor]:
        """Conditioning during training (SDM drops the mask here); default as at sampling."""
        return self.model_kwargs(mask)

    def denoiser(self, guidance_scale: float | None = None) -> nn.Module:
        """The network used for sampling: the EMA copy (SDM wraps it with guidance)."""
        return self.ema.shadow

    def sampling_model_kwargs(
        self,
        denoiser: nn.Module,
        mask: Tensor,
        context: SliceContext | None = None,
        generator: GeneratorLike = None,
    ) -> dict[str, Any]:
        """The keywords of every sampling step: :meth:`model_kwargs` (and a 2.5D model's
        :meth:`context_model_kwargs`), with the time-independent part encoded once by the denoiser's
        ``encode_condition`` (the condition cache) where it has one."""
        kwargs = self.model_kwargs(mask)
        if context is not None:
            kwargs.update(self.context_model_kwargs(context, training=False, generator=generator))
        encode = getattr(denoiser, "encode_condition", None)
        if self.condition_cache and encode is not None:
            kwargs = encode(**kwargs)
        return kwargs

    @property
    def context_sample_noise(self) -> float:
        """The level (fraction of T) a 2.5D model's previous slices get when generating.

        The ``context_sample_noise`` it was built with (0.1) until set; settable on a loaded model
        (``medsynth synthesize --context_sample_noise``), in ``[0, 1]`` (0: the clean slice; training
        showed the network the levels ``0..context_noise``).
        """
        return self._context_sample_noise

    @context_sample_noise.setter
    def context_sample_noise(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(
                f"context_sample_noise must lie in [0, 1] (a fraction of the {self.hparams.timesteps} "
                f"steps), got {value!r}"
            )
        self._context_sample_noise = float(value)

    def context_model_kwargs(
        self, context: SliceContext, training: bool, generator: GeneratorLike = None
    ) -> dict[str, Tensor]:
        """The keywords of :class:`ContextDenoiser` for a 2.5D context.

        The previous slices are noise-augmented (Ho et al. 2022): in training at a level ``s``
        drawn per slice from ``0..context_noise * T`` (and hidden with probability
        ``context_drop``), when generating at :attr:`context_sample_noise` ``* T``; level 0 is the clean
        slice, level ``s`` its ``q(x_{s-1} | x_0)`` under this model's noise schedule.
        """
        spec, hp = self.context_spec, self.hparams
        assert spec is not None
        out: dict[str, Tensor] = {}
        if spec.neighbours:
            out["context_mask"], out["context_mask_valid"] = context.masks, context.masks_valid
        if spec.previous:
            prev, valid = context.previous * 2.0 - 1.0, context.previous_valid  # [B, p, H, W], [B, p]
            b, T, device = prev.shape[0], self.diffusion.num_timesteps, prev.device
            if training:
                g = generator if isinstance(generator, torch.Generator) else None
                where = g.device if g is not None else device  # a generator draws on its own device
                top = round(hp.context_noise * T)
                level = torch.randint(0, top + 1, (b,), generator=g, device=where).to(device)  # [B]
                if hp.context_drop > 0:
                    keep = torch.rand(valid.shape, generator=g, device=where).to(device)  # [B, p]
                    valid = valid & (keep >= hp.context_drop)
            else:
                level = torch.full(
                    (b,), round(self.context_sample_noise * T), dtype=torch.long, device=device
                )
            noise = randn(prev.shape, generator, device)  # per-slice generators: per-slice noise
            noised = self.diffusion.q_sample(prev, (level - 1).clamp(min=0), noise)
            prev = torch.where((level > 0)[:, None, None, None], noised, prev)
            out["previous_image"] = prev * valid[:, :, None, None].to(prev.dtype)
            out["previous_valid"] = valid
            out["context_level"] = level.float() / T
        return out

    def unet(self, **overrides: Any) -> DiffusionUNet:
        """A :class:`DiffusionUNet` with this module's hyperparameters, plus variant overrides.

        A 2.5D model's context channels are added to ``in_channels`` (x_t's and the variant's).
        """
        hp = self.hparams
        cls = overrides.pop("cls", DiffusionUNet)
        if self.context_spec is not None:
            extra = ContextDenoiser.channels(hp.context_slices, hp.context_previous, hp.context_embed)
            overrides["in_channels"] = overrides.get("in_channels", 1) + extra
        return cls(
            image_size=self.image_size,
            out_channels=self.diffusion.output_channels(1),  # 1 image channel
            model_channels=hp.model_channels,
            channel_mult=hp.channel_mult,
            num_res_blocks=hp.num_res_blocks,
            attention_resolutions=tuple(hp.attention_resolutions),
            dropout=hp.dropout,
            num_heads=hp.num_heads,
            **overrides,
        )

    # ---- training --------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.init_from and not getattr(self, "_initialised_from", False):
            self.load_weights(self.hparams.init_from)
            self._initialised_from = True

    def load_weights(self, checkpoint: str | Path) -> None:
        """Load network and EMA weights (the whole state dict, strictly) from a medsynth checkpoint."""
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"init_from checkpoint not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
        try:
            self.load_state_dict(state["state_dict"])
        except RuntimeError as err:
            raise ValueError(f"{path}: weights do not fit this {type(self).__name__} ({err})") from err

    def _losses(
        self, net: nn.Module, batch: Mapping[str, Any], training: bool, generator=None
    ) -> dict[str, Tensor]:
        host_checked = self.consume_host_check()
        image, mask = check_batch(batch, self.num_classes, check_values=not host_checked)
        x0 = image * 2.0 - 1.0  # [B, 1, H, W] in [-1, 1]
        t = self.diffusion.sample_timesteps(x0.shape[0], self.device, generator)  # [B]
        noise = batch.get("noise")  # reflow pairs (medsynth.reflow): the noise each image was made from
        if noise is not None:
            if self.diffusion.name != "rflow":
                raise ValueError(
                    f"the batch holds reflow pairs (a 'noise' entry), which only a rectified flow trains on; "
                    f"this {type(self).__name__} has process {self.hparams.process!r}"
                )
            if tuple(noise.shape) != tuple(x0.shape):
                raise ValueError(
                    f"batch['noise'] {tuple(noise.shape)} does not match the images {tuple(x0.shape)}"
                )
            if training and self.hparams.get("organ_dropout", 0.0) > 0:
                raise ValueError(
                    "organ_dropout must be 0 on reflow pairs: each sample is the map of its full mask"
                )
            noise = noise.to(x0.device, torch.float32)
        elif generator is not None:
            noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        context = None
        if self.context_spec is not None:
            context = SliceContext.from_batch(batch, self.context_spec).to(self.device)
            context = context.check(self.context_spec, mask, self.num_classes, check_values=not host_checked)
        if training and self.hparams.get("organ_dropout", 0.0) > 0:
            if context is not None and context.masks is not None:  # the same structures in every slice
                both = torch.cat([mask[:, None], context.masks], dim=1)  # [B, 1 + 2k, H, W]
                both = drop_structures(both, self.label_set, self.hparams.organ_dropout)
                mask, context = both[:, 0], context.replace(masks=both[:, 1:])
            else:
                mask = drop_structures(mask, self.label_set, self.hparams.organ_dropout)
        kwargs = self.training_model_kwargs(mask) if training else self.model_kwargs(mask)
        if context is not None:
            kwargs.update(self.context_model_kwargs(context, training, generator))
        losses = self.diffusion.training_losses(net, x0, t, kwargs, noise)
        return {k: v.mean() for k, v in losses.items()}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        losses = self._losses(self.net, batch, training=True)
        b = batch["image"].shape[0]
        for k, v in losses.items():
            self.log(f"train/{k}", v, prog_bar=k == "loss", batch_size=b)
        return losses["loss"]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # Lightning calls this once per optimiser step (after accumulate_grad_batches batches),
        # so the EMA and its warm-up count optimiser steps, not batches.
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        # Fixed timesteps and noise per batch index, so val/loss is comparable between epochs.
        g = torch.Generator().manual_seed(batch_idx)
        losses = self._losses(self.ema.shadow, batch, training=False, generator=g)
        self.log("val/loss", losses["loss"], batch_size=batch["image"].shape[0], sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        params = list(self.net.parameters())
        fused = all(p.is_cuda for p in params) or None  # the fused kernel: one launch per step on CUDA
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=0.0, fused=fused)
        steps = self.hparams.lr_warmup_steps
        if not steps:
            return opt
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, LinearWarmup(steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- generation ------------------------------------------------------------------------
    def _generate(
        self,
        mask: Tensor,
        *,
        generator: GeneratorLike = None,
        num_steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        context: SliceContext | None = None,
    ) -> Tensor:
        b, h, w = mask.shape
        denoiser = self.denoiser(guidance_scale)
        x = sample(
            self.diffusion,
            denoiser,
            (b, 1, h, w),
            sampler=sampler or self.hparams.sampler,
            num_steps=num_steps if num_steps is not None else self.hparams.num_steps,
            model_kwargs=self.sampling_model_kwargs(denoiser, mask, context, generator),
            generator=generator,
            device=self.device,
        )  # [B, 1, H, W] in [-1, 1]
        return (x + 1.0) / 2.0


class LinearWarmup:
    """LambdaLR factor ``min(1, (step + 1) / steps)``: lr/steps at the first step, lr from step ``steps - 1``.

    A class rather than a lambda so that the scheduler's state dict records ``steps``.
    """

    def __init__(self, steps: int) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        self.steps = steps

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.steps)


def drop_structures(
    mask: Tensor, labels: LabelSet, p: float, generator: torch.Generator | None = None
) -> Tensor:
    """Relabel each structure of each mask ``[B, ...]`` as body with probability ``p`` (mask ablation).

    Background and body stay; a structure is dropped as a whole in one item (all its pixels: a
    slice ``[H, W]``, or a slice with its neighbours ``[1 + 2k, H, W]``).
    """
    b = mask.shape[0]
    drop = torch.rand((b, labels.num_classes), generator=generator, device="cpu").to(mask.device) < p
    drop[:, [0, labels.body]] = False  # [B, C]
    hit = torch.gather(drop, 1, mask.reshape(b, -1)).reshape(mask.shape)  # [B, H, W]
    return torch.where(hit, torch.full_like(mask, labels.body), mask)


class ConditionalDDPM(DiffusionModel):
    """Conditional DDPM (Zhuang et al., Fig. 2a): the one-hot mask concatenated to x_t."""

    def build_network(self) -> nn.Module:
        return self.unet(in_channels=1 + self.num_classes)

    def model_kwargs(self, mask: Tensor) -> dict[str, Tensor]:
        return {"concat": one_hot(mask, self.num_classes)}


class _BranchedDDPM(DiffusionModel):
    """A DDPM with the conditioning encoder branch (Fig. 2b/c).

    Args:
        cond_model_channels: Base width of the branch (default ``model_channels``).
        cond_num_res_blocks: Res blocks per resolution in the branch (1).
        **kwargs: As :class:`DiffusionModel`.
    """

    _base_class = True  # MaskGuidedDDPM and EdgeGuidedDDPM are the methods

    def __init__(
        self,
        image_size: int,
        num_classes: int | None = None,
        label_set: str = "amos",
        model_channels: int = 128,
        cond_model_channels: int | None = None,
        cond_num_res_blocks: int = 1,
        **kwargs: Any,
    ) -> None:
        if cond_model_channels is not None and cond_model_channels < 1:
            raise ValueError(f"cond_model_channels must be positive or None, got {cond_model_channels!r}")
        if cond_num_res_blocks < 1:
            raise ValueError(f"cond_num_res_blocks must be positive, got {cond_num_res_blocks!r}")
        self._branch = {
            "cond_model_channels": cond_model_channels,
            "cond_num_res_blocks": cond_num_res_blocks,
        }
        super().__init__(image_size, num_classes, label_set, model_channels=model_channels, **kwargs)


class MaskGuidedDDPM(_BranchedDDPM):
    """Mask-guided DDPM (Zhuang et al., Fig. 2b): the one-hot mask enters through the encoder branch."""

    def build_network(self) -> nn.Module:
        return self.unet(in_channels=1, cond_channels=self.num_classes, **self._branch)

    def model_kwargs(self, mask: Tensor) -> dict[str, Tensor]:
        return {"cond": one_hot(mask, self.num_classes)}


class EdgeGuidedDDPM(_BranchedDDPM):
    """Edge-guided DDPM (Zhuang et al., Fig. 2c): mask concatenated, semantic edges through the branch."""

    def build_network(self) -> nn.Module:
        return self.unet(in_channels=1 + self.num_classes, cond_channels=1, **self._branch)

    def model_kwargs(self, mask: Tensor) -> dict[str, Tensor]:
        return {"concat": one_hot(mask, self.num_classes), "cond": semantic_edges(mask).to(mask.device)}
