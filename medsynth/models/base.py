"""Shared base of every synthesis LightningModule: the ``generate()`` contract and batch helpers."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn

from medsynth.data.context import CONTEXT_MASK, ContextSpec, SliceContext
from medsynth.labels import NUM_CLASSES, LabelSet, get_label_set
from medsynth.nn.ema import EMA
from medsynth.precision import sampling_autocast
from medsynth.random import GeneratorLike, check_generator

__all__ = [
    "check_data_label_set",
    "check_data_window",
    "check_data_context",
    "SynthesisModule",
    "is_method",
    "check_mask",
    "one_hot",
    "check_batch",
    "averaged_module_names",
]

# SynthesisModule checks mask values on the host in on_before_batch_transfer, which is meant to
# run whatever data module feeds it; Lightning warns about every such pairing. Only that warning.
warnings.filterwarnings(
    "ignore", message=r"You have overridden `on_before_batch_transfer` in `LightningModule`"
)

# The optional generate() arguments and their meaning; a method lists those it supports.
GENERATE_OPTIONS: tuple[str, ...] = ("num_steps", "sampler", "guidance_scale")
#: Checkpoint entry naming the class that wrote it (``module.QualName``).
CHECKPOINT_CLASS_KEY = "medsynth_class"
#: Checkpoint entry holding the model's label set (:meth:`medsynth.labels.LabelSet.to_dict`).
LABEL_SET_KEY = "medsynth_label_set"


def check_mask(
    mask: Tensor, num_classes: int = NUM_CLASSES, name: str = "mask", check_values: bool = True
) -> Tensor:
    """Validate an integer label map ``[B, H, W]`` and return it as int64.

    Args:
        check_values: Also check the range of the values (one device sync for a CUDA tensor);
            False where they were checked on the host already.

    Raises:
        ValueError: naming ``name`` when the tensor has the wrong rank, dtype or values.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 3:
        raise ValueError(f"{name} must have shape [B, H, W], got {tuple(mask.shape)}")
    if mask.dtype.is_floating_point or mask.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of class ids, got dtype {mask.dtype}")
    if check_values and mask.numel():
        lo, hi = torch.stack(torch.aminmax(mask)).tolist()  # one transfer for both
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} values must lie in 0..{num_classes - 1}, got {lo}..{hi}")
    return mask.long()


def one_hot(mask: Tensor, num_classes: int = NUM_CLASSES, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[B, H, W]`` int64 -> ``[B, num_classes, H, W]`` one-hot."""
    return F.one_hot(mask.long(), num_classes).permute(0, 3, 1, 2).to(dtype)


def check_batch(
    batch: Mapping[str, Any], num_classes: int = NUM_CLASSES, check_values: bool = True
) -> tuple[Tensor, Tensor]:
    """Return ``(image [B,1,H,W] float, mask [B,H,W] int64)`` from a batch dict, validating both.

    ``check_values=False`` skips the mask's value range (checked on the host before the transfer).
    """
    for key in ("image", "mask"):
        if key not in batch:
            raise KeyError(f"batch has no {key!r} entry (keys: {sorted(batch)})")
    image, mask = batch["image"], check_mask(batch["mask"], num_classes, "batch['mask']", check_values)
    if image.dim() != 4 or image.shape[1] != 1:
        raise ValueError(f"batch['image'] must have shape [B, 1, H, W], got {tuple(image.shape)}")
    if image.shape[0] != mask.shape[0] or image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(
            f"batch['image'] {tuple(image.shape)} and batch['mask'] {tuple(mask.shape)} do not match"
        )
    return image.float(), mask


def is_method(cls: Any) -> bool:
    """Whether ``cls`` is a concrete synthesis method: a SynthesisModule subclass not marked as a base.

    A class is a base when its own body sets ``_base_class = True``; subclasses are methods again.
    """
    return (
        isinstance(cls, type)
        and issubclass(cls, SynthesisModule)
        and bool(not cls.__dict__.get("_base_class"))
    )


def check_data_label_set(model: Any, datamodule: Any) -> None:
    """Raise a ValueError, before any training, when the data's label set is not the model's.

    Data modules that know their label set expose it as ``label_set`` (a
    :class:`~medsynth.labels.LabelSet`); others (AMOS22) are AMOS's.
    """
    if datamodule is None:
        return
    data = getattr(datamodule, "label_set", None)
    data = data if isinstance(data, LabelSet) else get_label_set("amos")
    if data.names() != model.label_set.names():
        raise ValueError(
            f"the data's label set {data.name!r} ({data.num_classes} classes) is not the model's "
            f"{model.label_set.name!r} ({model.num_classes}); set --model.init_args.label_set to the "
            f"data's (or remap the data with NNUNetDataModule(remap=...))"
        )


def check_data_window(model: Any, datamodule: Any) -> None:
    """Raise a ValueError, before any training, when the data's CT window is not the model's.

    Data modules expose theirs as ``window`` (``(level, width)`` in HU); others are the paper's.
    """
    if datamodule is None:
        return
    data = tuple(float(v) for v in getattr(datamodule, "window", (40.0, 400.0)))
    if data != tuple(model.window):
        raise ValueError(
            f"the data's CT window (level {data[0]:g}, width {data[1]:g} HU) is not the model's "
            f"(level {model.window[0]:g}, width {model.window[1]:g}); set --model.init_args.window_level/"
            "window_width to the data's (the CLI links them from --data.init_args.window_level/window_width)"
        )


def check_data_context(model: Any, datamodule: Any) -> None:
    """Raise a ValueError, before any training, when the data's 2.5D context is not the model's.

    Data modules expose theirs as ``context`` (a :class:`~medsynth.data.context.ContextSpec` or
    None). A 2D model on data with context is refused too: it would ignore it, but Lightning's
    logger refuses a model and data module whose shared hyperparameters differ, less clearly.
    """
    spec = getattr(model, "context_spec", None) or ContextSpec()
    if datamodule is None:
        return
    data = getattr(datamodule, "context", None) or ContextSpec()
    if data != spec and not spec.enabled:
        raise ValueError(
            f"the data module gives 2.5D context (context_slices={data.neighbours}, context_previous="
            f"{data.previous}) but the model is 2D; drop --data.init_args.context_slices/context_previous "
            "or give the model the same context"
        )
    if data != spec:
        raise ValueError(
            f"the model is 2.5D with context_slices={spec.neighbours}, context_previous={spec.previous}, but "
            f"the data module gives context_slices={data.neighbours}, context_previous={data.previous}; set "
            "--data.init_args.context_slices/context_previous to the model's (experiments/*/_context.yaml sets both)"
        )


class SynthesisModule(L.LightningModule):
    """Base of all mask-to-CT methods.

    Subclasses implement :meth:`_generate` and declare in ``generate_options`` which of
    ``num_steps``, ``sampler`` and ``guidance_scale`` they accept; any other optional argument
    passed as non-None is a ValueError naming it.

    Args:
        image_size: Side of the square slices the model is trained on.
        num_classes: Number of mask classes; None (the default) follows ``label_set`` (17 for
            AMOS: background, 15 organs, body). A value that disagrees with it is a ValueError.
        label_set: The classes of the masks: ``"amos"`` (default), ``"totalseg"``, or a
            dataset.json path (:func:`medsynth.labels.get_label_set`). Checkpoints record the
            whole table, so a model loads without the file.
        window_level, window_width: The CT window in HU that maps its [0, 1] images to HU
            (the paper's level 40, width 400). It must equal the data module's (checked when
            fitting starts); :meth:`to_hu` and volume synthesis use it to return HU.
    """

    generate_options: tuple[str, ...] = ()
    #: The 2.5D context ``generate()`` needs (None: a 2D model, slice by slice); set by the methods
    #: that offer it (the diffusion models' ``context_slices`` / ``context_previous``).
    context_spec: ContextSpec | None = None
    #: Set to True in the body of a shared base (this class, DiffusionModel, GANModule): not a
    #: method of its own, so the contract suite (tests/test_contract.py) skips it. Not inherited.
    _base_class: bool = True

    def __init__(
        self,
        image_size: int,
        num_classes: int | None = None,
        label_set: str = "amos",
        window_level: float = 40.0,
        window_width: float = 400.0,
    ) -> None:
        super().__init__()
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
        labels = get_label_set(LabelSet.from_dict(label_set) if isinstance(label_set, dict) else label_set)
        if num_classes is None:
            num_classes = labels.num_classes
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 or None, got {num_classes!r}")
        if num_classes != labels.num_classes:
            raise ValueError(
                f"num_classes={num_classes} disagrees with label_set={labels.name!r}, which has "
                f"{labels.num_classes} classes; leave num_classes out (it follows from label_set)"
            )
        if not window_width > 0:
            raise ValueError(f"window_width must be > 0 HU, got {window_width!r}")
        self.image_size = image_size
        self.num_classes = num_classes
        self.label_set = labels
        self.window = (float(window_level), float(window_width))
        self._host_checked = False  # set by on_before_batch_transfer, consumed by the step

    @torch.no_grad()
    def generate(
        self,
        mask: Tensor,
        *,
        num_steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        generator: GeneratorLike = None,
        context: SliceContext | None = None,
    ) -> Tensor:
        """Synthesize CT slices from label maps.

        Args:
            mask: int64 ``[B, H, W]`` with values in ``0..num_classes-1``.
            num_steps: Network evaluations (diffusion models only; None = the method's default).
            sampler: Sampler name (diffusion models only).
            guidance_scale: Classifier-free guidance scale (guided models only).
            generator: Seeds all randomness of the method; ignored where there is none. A
                sequence of ``B`` generators seeds each slice on its own, so a slice's output does
                not depend on the batch it is generated in.
            context: A 2.5D model's context of each slice (its neighbours' masks, the previous
                slices: :class:`~medsynth.data.context.SliceContext`); required by a model with a
                ``context_spec``, None for any other. Whole volumes are easier made with
                :func:`medsynth.synthesis.generate_volumes`, which builds it.

        Returns:
            float32 ``[B, 1, H, W]`` in [0, 1] (window level 40, width 400).
        """
        given = {"num_steps": num_steps, "sampler": sampler, "guidance_scale": guidance_scale}
        for name, value in given.items():
            if value is not None and name not in self.generate_options:
                raise ValueError(
                    f"{type(self).__name__}.generate() does not take {name}={value!r}; "
                    f"it accepts only None for {name}"
                )
        if num_steps is not None and (not isinstance(num_steps, int) or num_steps < 1):
            raise ValueError(f"num_steps must be a positive int or None, got {num_steps!r}")
        mask = check_mask(mask, self.num_classes).to(self.device)
        self.check_size(mask)
        check_generator(generator, mask.shape[0])
        context = self._check_context(mask, context)
        was_training = self.training
        self.eval()
        try:
            kwargs = {k: v for k, v in given.items() if k in self.generate_options}
            if context is not None:
                kwargs["context"] = context
            out = self._generate(mask, generator=generator, **kwargs)  # [B, 1, H, W]
        finally:
            self.train(was_training)
        return out.float().clamp(0.0, 1.0)

    def _generate(self, mask: Tensor, *, generator: GeneratorLike = None, **kwargs: Any) -> Tensor:
        raise NotImplementedError

    def _check_context(self, mask: Tensor, context: SliceContext | None) -> SliceContext | None:
        """``context`` validated against this model's ``context_spec`` and on its device."""
        spec, name = self.context_spec, type(self).__name__
        if spec is None:
            if context is not None:
                raise ValueError(
                    f"{name}.generate() got context, but this model was trained slice by slice (no 2.5D "
                    "context); pass context=None"
                )
            return None
        if context is None:
            raise ValueError(
                f"this {name} is a 2.5D model: generate() needs context=SliceContext(...) with {spec.describe()} "
                f"of every slice (context_slices={spec.neighbours}, context_previous={spec.previous}); "
                "medsynth.synthesis.generate_volumes / synthesize_volume build it from whole label volumes, "
                "medsynth.data.context.volume_context from your own slices"
            )
        if not isinstance(context, SliceContext):
            raise TypeError(
                f"context must be a medsynth.data.context.SliceContext, got {type(context).__name__}"
            )
        return context.check(spec, mask, self.num_classes).to(self.device)

    def autocast(self, precision: str | int | None = None) -> AbstractContextManager:
        """Context for ``generate()`` at ``precision`` on this model's device.

        ``"bf16"`` (or Lightning's ``"bf16-mixed"``) autocasts to bfloat16; ``None``/``"32"`` is fp32
        (and turns an enclosing autocast off): ``with model.autocast("bf16"): model.generate(mask)``.
        """
        return sampling_autocast(precision, self.device)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Check the mask values on the host, before the batch reaches the device, so that the step
        # needs no device sync for it (check_batch(..., check_values=False) after consume_host_check).
        if isinstance(batch, Mapping) and isinstance(batch.get("mask"), Tensor):
            check_mask(batch["mask"], self.num_classes, "batch['mask']")
            context = batch.get(CONTEXT_MASK)  # a 2.5D batch's neighbour masks: [B, 2k, H, W]
            if isinstance(context, Tensor) and context.numel():
                check_mask(context.flatten(0, 1), self.num_classes, f"batch[{CONTEXT_MASK!r}]")
            self._host_checked = True
        return batch

    def consume_host_check(self) -> bool:
        """Whether the current batch's mask values were checked on the host (once per batch)."""
        checked, self._host_checked = self._host_checked, False
        return checked

    def check_size(self, mask: Tensor) -> None:
        """Raise a ValueError unless ``mask [B, H, W]`` has the model's ``image_size`` x ``image_size``."""
        if tuple(mask.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"mask size {tuple(mask.shape[-2:])} does not match image_size={self.image_size} of this model"
            )

    def generate_kwargs(self, **options: Any) -> dict[str, Any]:
        """The subset of ``options`` (num_steps, sampler, guidance_scale) this method's generate() accepts.

        For callers that hold one set of options for several methods (a GAN takes none of them).
        """
        return {k: v for k, v in options.items() if k in self.generate_options}

    def to_hu(self, images: Tensor) -> Tensor:
        """``[0, 1]`` images of this model -> Hounsfield units (float64), through its window."""
        level, width = self.window
        return images.double() * width + (level - width / 2.0)

    def on_fit_start(self) -> None:
        check_data_label_set(self, getattr(self.trainer, "datamodule", None))
        check_data_window(self, getattr(self.trainer, "datamodule", None))
        check_data_context(self, getattr(self.trainer, "datamodule", None))
        # seed_everything gives every DDP process the same seed, so each would draw the same
        # timesteps, noise and dropout for its (different) images. Offset the RNG by the rank.
        if self.trainer.world_size > 1:
            torch.manual_seed((torch.initial_seed() + 1_000_003 * self.global_rank) % 2**63)
        self._quiet_eval_mode_notice()

    def on_train_start(self) -> None:
        self._end_quiet_eval_mode_notice()

    _eval_notice_filter: warnings.catch_warnings | None = None

    def _quiet_eval_mode_notice(self) -> None:
        """Filter Lightning's fit-start notice about modules in eval mode when the EMA copies
        (:func:`averaged_module_names`) are the only such modules.

        Lightning checks the modes between ``on_fit_start`` and ``on_train_start`` and warns
        "Found N module(s) in eval mode at the start of training". The filter matches that notice
        with exactly this N, and only while those hooks run (a ``warnings.catch_warnings`` entered
        here and left in ``on_train_start``); any other module left in eval mode, or an EMA copy
        put in train mode, leaves the notice as Lightning writes it.
        """
        self._end_quiet_eval_mode_notice()  # one left open by an interrupted fit
        in_eval = {name for name, module in self.named_modules() if not module.training}
        if not in_eval or in_eval != averaged_module_names(self):
            return
        self._eval_notice_filter = warnings.catch_warnings()
        self._eval_notice_filter.__enter__()
        notice = f"Found {len(in_eval)} module(s) in eval mode at the start of training"
        warnings.filterwarnings("ignore", message=re.escape(notice), category=PossibleUserWarning)

    def _end_quiet_eval_mode_notice(self) -> None:
        quiet = self._eval_notice_filter
        if quiet is not None:
            self._eval_notice_filter = None
            quiet.__exit__(None, None, None)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lets medsynth.synthesis.load_model rebuild the right class from a checkpoint alone,
        # with its label set even where the dataset.json that defined it is not at hand.
        checkpoint[CHECKPOINT_CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint[LABEL_SET_KEY] = self.label_set.to_dict()

    # Validation/test loops must exist so that callbacks (medsynth.callbacks) can run on them;
    # subclasses may add a loss of their own.
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        return None

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        return None

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        # A 2.5D model takes its context from the batch (the real neighbours: teacher forcing).
        context = SliceContext.from_batch(batch, self.context_spec) if self.context_spec else None
        return self.generate(batch["mask"], context=context)


def averaged_module_names(module: nn.Module) -> set[str]:
    """Names (as in ``module.named_modules()``) of every :class:`~medsynth.nn.ema.EMA` in ``module``
    and of its averaged copy's submodules: the modules kept in eval mode by design."""
    names = set()
    for name, ema in module.named_modules():
        if isinstance(ema, EMA):
            names.update(".".join(p for p in (name, sub) if p) for sub, _ in ema.named_modules())
    return names
