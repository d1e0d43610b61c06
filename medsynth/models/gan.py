"""One LightningModule base for the GAN baselines (Pix2Pix, SPADE, OASIS).

Manual optimisation: each training step generates once, updates the discriminator on the
detached fake, then the generator through the updated discriminator (Pix2Pix's order). The
methods differ only in the networks they build and in two hooks returning dicts of named loss
terms; the base weights the terms with ``loss_weights``, sums them and logs every term under
``train/<name>`` and the totals under ``train/d_loss`` and ``train/g_loss``.

Steps count iterations: Lightning counts every optimiser step of a manually optimised module in
``trainer.global_step``, so a G/D pair would count twice (``max_steps=60`` giving 30 iterations).
Here only the generator's step counts, so ``max_steps``, ``val_check_interval``,
``every_n_train_steps``, checkpoint names (``step=N``) and the logged step all count
generator/discriminator iterations, one per batch.

Images are [0, 1] outside and [-1, 1] (tanh) inside. Multi-GPU: run with Lightning's
``Trainer(strategy="ddp", sync_batchnorm=True)`` to turn the batch norms (in SPADE/OASIS's SPADE
layers, Pix2Pix's U-Net and PatchGAN) into SyncBatchNorm; nothing here depends on it. bf16:
``precision="bf16-mixed"`` works for all three (the cross-entropy and MSE terms run in float32).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from medsynth.models.base import SynthesisModule, check_batch, check_mask, one_hot
from medsynth.nn.ema import EMA
from medsynth.random import GeneratorLike

__all__ = ["GANModule"]


def _step_uncounted(optimizer: Any) -> None:
    """``optimizer.step()`` without advancing Lightning's optimiser-step counter (``global_step``).

    Under manual optimisation Lightning wraps each optimiser in a ``LightningOptimizer`` whose
    ``_on_before_step``/``_on_after_step`` hooks count the step (and time it for the profiler);
    they are swapped for no-ops around this one call. The step itself still goes through the
    strategy and precision plugin (gradient scaling, DDP).
    """
    before, after = getattr(optimizer, "_on_before_step", None), getattr(optimizer, "_on_after_step", None)
    if before is None or after is None:  # a plain torch optimiser (no trainer): nothing counts
        optimizer.step()
        return
    optimizer._on_before_step = optimizer._on_after_step = _no_op
    try:
        optimizer.step()
    finally:
        optimizer._on_before_step, optimizer._on_after_step = before, after


def _no_op() -> None:
    return None


class GANModule(SynthesisModule):
    """Base of the GAN baselines.

    Subclasses call ``super().__init__`` then :meth:`build` with their networks, set
    ``loss_weights`` and implement :meth:`discriminator_losses` and :meth:`generator_losses`.
    Generators take ``(seg, generator=None)`` and return ``[B, 1, H, W]`` in [-1, 1].

    Args:
        image_size: Side of the square slices.
        num_classes: Mask classes (None: from label_set, 17 for AMOS).
        label_set: "amos", "totalseg" or a dataset.json path (medsynth.labels.get_label_set).
        lr_g, lr_d: Adam learning rates of the generator and discriminator.
        betas_g, betas_d: Adam betas.
        window_level, window_width: The CT window (HU) of the [0, 1] images it learns and makes
            (the paper's 40/400; must equal the data module's, see :class:`~medsynth.models.SynthesisModule`).
    """

    automatic_optimization = False
    generate_options: tuple[str, ...] = ()
    loss_weights: dict[str, float] = {}
    _base_class = True  # Pix2Pix, SPADE and OASIS are the methods

    def __init__(
        self,
        image_size: int,
        num_classes: int | None = None,
        label_set: str = "amos",
        *,
        lr_g: float,
        lr_d: float,
        betas_g: tuple[float, float],
        betas_d: tuple[float, float],
        window_level: float = 40.0,
        window_width: float = 400.0,
    ) -> None:
        super().__init__(image_size, num_classes, label_set, window_level, window_width)
        for name, lr in (("lr_g", lr_g), ("lr_d", lr_d)):
            if not lr > 0:
                raise ValueError(f"{name} must be positive, got {lr!r}")
        for name, betas in (("betas_g", betas_g), ("betas_d", betas_d)):
            if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
                raise ValueError(f"{name} must be two numbers in [0, 1), got {betas!r}")
        self.lr_g, self.lr_d = lr_g, lr_d
        self.betas_g, self.betas_d = tuple(betas_g), tuple(betas_d)
        self.ema: EMA | None = None

    def build(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        ema_decay: float | None = None,
        ema_bn_batches: int = 0,
        ema_warmup: bool = False,
    ) -> None:
        """Register the networks.

        Args:
            generator: Maps ``(seg, generator=None)`` to ``[B, 1, H, W]`` in [-1, 1].
            discriminator: The method's discriminator.
            ema_decay: Keep an EMA copy of the generator (used by ``generate()``); None: none.
            ema_bn_batches: Before each validation/test, recompute the EMA generator's batch-norm
                statistics over this many training batches (OASIS); 0: keep them as copied.
            ema_warmup: Ramp the EMA decay as min(decay, (1 + n) / (10 + n)) over generator steps n.
        """
        if ema_bn_batches < 0:
            raise ValueError(f"ema_bn_batches must be >= 0, got {ema_bn_batches}")
        self.generator = generator
        self.discriminator = discriminator
        self.ema = EMA(generator, ema_decay, warmup=ema_warmup) if ema_decay is not None else None
        self.ema_bn_batches = ema_bn_batches

    # --- hooks -----------------------------------------------------------------------------------
    def discriminator_losses(
        self, real: Tensor, fake: Tensor, seg: Tensor, mask: Tensor
    ) -> dict[str, Tensor]:
        """Named D loss terms; ``real``/``fake`` ``[B, 1, H, W]`` in [-1, 1], fake detached."""
        raise NotImplementedError

    def generator_losses(self, real: Tensor, fake: Tensor, seg: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Named G loss terms; gradients flow into ``fake``."""
        raise NotImplementedError

    # --- helpers ---------------------------------------------------------------------------------
    def weighted_sum(self, terms: Mapping[str, Tensor]) -> Tensor:
        """``sum_k loss_weights[k] * terms[k]`` (a term without a weight is an error)."""
        unknown = sorted(set(terms) - set(self.loss_weights))
        if unknown:
            raise KeyError(f"loss terms {unknown} have no weight in {type(self).__name__}.loss_weights")
        return sum(self.loss_weights[k] * v for k, v in terms.items())

    def sampling_generator(self) -> nn.Module:
        """The network used by ``generate()``: the EMA copy when there is one."""
        return self.ema.shadow if self.ema is not None else self.generator

    # --- Lightning -------------------------------------------------------------------------------
    def forward(self, mask: Tensor, generator: GeneratorLike = None) -> Tensor:
        """Mask ``[B, H, W]`` -> image ``[B, 1, H, W]`` in [-1, 1] from the training generator."""
        return self.generator(one_hot(mask, self.num_classes), generator=generator)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        # values checked on the host before the transfer (no device sync) when under a Trainer
        image, mask = check_batch(batch, self.num_classes, check_values=not self.consume_host_check())
        self.check_size(mask)
        real = image * 2 - 1  # [B, 1, H, W] in [-1, 1]
        seg = one_hot(mask, self.num_classes, dtype=real.dtype)  # [B, N, H, W]
        opt_g, opt_d = self.optimizers()
        fake = self.generator(seg)  # [B, 1, H, W]; its graph is kept for the G step

        self.toggle_optimizer(opt_d)
        d_terms = self.discriminator_losses(real, fake.detach(), seg, mask)
        d_loss = self.weighted_sum(d_terms)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        _step_uncounted(opt_d)  # global_step counts one per G/D iteration (the G step)
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        g_terms = self.generator_losses(real, fake, seg, mask)
        g_loss = self.weighted_sum(g_terms)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        if self.ema is not None:
            self.ema.update(self.generator)

        logs = {f"train/{k}": v.detach().float() for k, v in {**d_terms, **g_terms}.items()}
        self.log_dict(logs, batch_size=mask.shape[0])
        totals = {"train/d_loss": d_loss.detach().float(), "train/g_loss": g_loss.detach().float()}
        self.log_dict(totals, prog_bar=True, batch_size=mask.shape[0])

    @torch.no_grad()
    def recompute_ema_batch_norm(self, batches: Iterable[Mapping[str, Any]], num_batches: int) -> int:
        """Re-estimate the EMA generator's batch-norm statistics (OASIS, Schönfeld et al. 2021).

        The averaged weights never ran forward, so the running statistics copied from the
        trained generator do not match them; run the EMA generator in train mode, without
        gradients, over ``num_batches`` batches and store the exact average of their batch
        statistics (momentum None). Returns the number of batches used.
        """
        if self.ema is None:
            return 0
        net = self.ema.shadow
        norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms or num_batches < 1:
            return 0
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        used = 0
        net.train()
        try:
            for batch in batches:
                if used >= num_batches:
                    break
                mask = check_mask(batch["mask"], self.num_classes).to(self.device)
                net(one_hot(mask, self.num_classes))
                used += 1
        finally:
            net.eval()
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
        return used

    def _training_batches(self) -> Iterable[Mapping[str, Any]] | None:
        """A loader of training batches with its own iterator, for the batch-norm recompute.

        The fit loop's loader is never iterated here: with persistent workers a second ``iter()``
        on it would reset the workers the loop is drawing from, mid-epoch. Instead a new
        single-process DataLoader shares its dataset and batch sampler (so each DDP rank keeps its
        shard), or, outside fitting, the data module builds a new training loader.
        """
        from torch.utils.data import DataLoader

        trainer = self._trainer
        if trainer is None:
            return None
        live = trainer.train_dataloader  # a DataLoader, a CombinedLoader of them, or None
        flat = getattr(live, "flattened", [live])
        source = next((d for d in flat if isinstance(d, DataLoader)), None)
        if source is not None:
            if source.batch_sampler is not None:
                return DataLoader(
                    source.dataset, batch_sampler=source.batch_sampler, collate_fn=source.collate_fn
                )
            return DataLoader(source.dataset, batch_size=source.batch_size, collate_fn=source.collate_fn)
        if trainer.datamodule is not None:
            try:
                return trainer.datamodule.train_dataloader()
            except Exception:  # noqa: BLE001 - a data module without a training split
                return None
        return None

    def _refresh_ema_statistics(self) -> None:
        if self.ema is None or self.ema_bn_batches < 1:
            return
        batches = self._training_batches()
        if batches is None:
            rank_zero_warn(
                "no training data to recompute the EMA generator's batch-norm statistics; "
                "generating with the statistics copied from the training generator"
            )
            return
        # fast_dev_run checks the code path: one batch is enough for that.
        fast = bool(getattr(self._trainer, "fast_dev_run", False))
        self.recompute_ema_batch_norm(batches, 1 if fast else self.ema_bn_batches)

    def on_validation_start(self) -> None:
        self._refresh_ema_statistics()

    def on_test_start(self) -> None:
        self._refresh_ema_statistics()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.lr_g, betas=self.betas_g)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr_d, betas=self.betas_d)
        return [opt_g, opt_d]

    def _generate(self, mask: Tensor, *, generator: GeneratorLike = None, **kwargs: Any) -> Tensor:
        seg = one_hot(mask, self.num_classes)  # [B, N, H, W]
        fake = self.sampling_generator()(seg, generator=generator)  # [B, 1, H, W] in [-1, 1]
        return (fake.float() + 1) / 2
