"""Progress that shows in a plain log: one line per interval with step, total, loss, speed and ETA.

Lightning's own bars (rich, tqdm) redraw one terminal line; redirected to a file they show
nothing useful, and for step-limited runs (``max_steps`` with ``max_epochs=-1``) their header
reads "Epoch 0/-2". :class:`LogProgressBar` prints whole lines instead, counts training in
optimiser steps against ``max_steps`` when that is set, and is what medsynth's command line
chooses when stdout is not a terminal (:func:`default_progress_bar`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

__all__ = [
    "LogProgressBar",
    "StepProgressBar",
    "LineProgress",
    "default_progress_bar",
    "format_duration",
    "progress_bar",
]


def format_duration(seconds: float) -> str:
    """``3725.0 -> "1:02:05"``; ``"?"`` for an unknown (NaN or infinite) duration."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _total(batches: Any) -> float:
    """Batches of an evaluation loop (a number or one per dataloader) as one number."""
    return float(sum(batches)) if isinstance(batches, (list, tuple)) else float(batches)


class LogProgressBar(ProgressBar):
    """A progress "bar" for logs: a line at the start, at least every ``interval_s``, and at the end.

    Training lines read ``fit step 120/2000 (6%) | train/loss 0.0312 | 3.20 it/s | elapsed 0:00:37 |
    ETA 0:09:48``: steps are optimiser steps (``trainer.global_step``; for medsynth's GANs one
    generator/discriminator iteration), the total is ``max_steps`` when set, otherwise
    ``max_epochs`` times the batches per epoch. Validation, test and predict loops print
    ``batch i/N`` lines on the same clock. Lines go to ``stream`` (default: the current
    ``sys.stdout``) and are flushed at once.

    Args:
        interval_s: Longest time between two lines while a loop runs (seconds, >= 0; 0 prints
            every batch).
        stream: Where lines go; None: ``sys.stdout`` at the time of printing.
        clock: Monotonic time source (seconds); tests pass a fake one.
    """

    def __init__(
        self,
        interval_s: float = 30.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if not (isinstance(interval_s, (int, float)) and interval_s >= 0 and math.isfinite(interval_s)):
            raise ValueError(f"interval_s must be a finite number >= 0, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self.stream = stream
        self.clock = clock
        self._enabled = True
        self._start_time = 0.0
        self._start_step = 0
        self._last_line = -math.inf
        self._eval_t0 = 0.0

    # --- ProgressBar interface ------------------------------------------------------------------
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._enabled:
            print(*args, file=self.stream or sys.stdout, flush=True, **kwargs)

    # --- helpers --------------------------------------------------------------------------------
    def total_steps(self, trainer: L.Trainer) -> int | None:
        """Optimiser steps this fit ends at: ``max_steps`` when set, else epochs x batches (None: unknown)."""
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return int(trainer.max_steps)
        batches, epochs = trainer.num_training_batches, trainer.max_epochs
        if epochs is not None and epochs > 0 and math.isfinite(batches):
            return int(epochs * batches)
        return None

    def _metrics_text(self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str) -> str:
        items = []
        for key, value in self.get_metrics(trainer, pl_module).items():
            number = _number(value)
            if key.startswith(prefix) and number is not None:
                items.append(f"{key} {number:.4g}")
        return " | ".join(items)

    def _due(self, force: bool = False) -> bool:
        now = self.clock()
        if force or now - self._last_line >= self.interval_s:
            self._last_line = now
            return True
        return False

    def _train_line(self, trainer: L.Trainer, pl_module: L.LightningModule, label: str = "fit") -> str:
        step, total = trainer.global_step, self.total_steps(trainer)
        elapsed = self.clock() - self._start_time
        done = step - self._start_step
        rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
        parts = [f"{label} step {step}/{total if total is not None else '?'}"]
        if total:
            parts[0] += f" ({100.0 * step / total:.0f}%)"
        parts[0] += f" epoch {trainer.current_epoch}"
        metrics = self._metrics_text(trainer, pl_module, "train/")
        if metrics:
            parts.append(metrics)
        if math.isfinite(rate):
            parts.append(f"{rate:.2f} it/s" if rate >= 1 else f"{1.0 / rate:.2f} s/it")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if total is not None and math.isfinite(rate):
            parts.append(f"ETA {format_duration((total - step) / rate)}")
        return " | ".join(parts)

    # --- training -------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_time = self.clock()
        self._start_step = trainer.global_step
        self._last_line = self._start_time
        total = self.total_steps(trainer)
        resumed = f", resuming at step {trainer.global_step}" if trainer.global_step else ""
        self.print(
            f"fit start: {total if total is not None else 'unknown number of'} steps of "
            f"{type(pl_module).__name__}{resumed}"
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._due():
            self.print(self._train_line(trainer, pl_module))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._due(force=True)
        self.print(self._train_line(trainer, pl_module, label="fit done:"))

    # --- evaluation loops -----------------------------------------------------------------------
    def _eval_start(self, name: str, total: Any) -> None:
        self._eval_t0 = self.clock()
        self._due(force=True)
        count = int(total) if _number(total) is not None and math.isfinite(float(total)) else "?"
        self.print(f"{name} start: {count} batches")

    def _eval_batch(self, name: str, batch_idx: int, total: Any) -> None:
        if not self._due():
            return
        elapsed = self.clock() - self._eval_t0
        done = batch_idx + 1
        finite = _number(total) is not None and math.isfinite(float(total)) and total > 0
        line = f"{name} batch {done}/{int(total) if finite else '?'} | elapsed {format_duration(elapsed)}"
        if finite and elapsed > 0:
            line += f" | ETA {format_duration((float(total) - done) * elapsed / done)}"
        self.print(line)

    def _eval_end(self, name: str, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str) -> None:
        self._due(force=True)
        elapsed = format_duration(self.clock() - self._eval_t0)
        metrics = self._metrics_text(trainer, pl_module, prefix)
        if not metrics:  # validation/test values are logged without prog_bar: show them from here
            shown = []
            for key, value in trainer.callback_metrics.items():
                number = _number(value)
                if key.startswith(prefix) and number is not None and len(shown) < 8:
                    shown.append(f"{key} {number:.4g}")
            metrics = " | ".join(shown)
        self.print(f"{name} done in {elapsed}" + (f" | {metrics}" if metrics else ""))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._eval_start("validation", _total(trainer.num_val_batches))

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._eval_batch("validation", batch_idx, _total(trainer.num_val_batches))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._eval_end("validation", trainer, pl_module, "val/")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start("test", _total(trainer.num_test_batches))

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch("test", batch_idx, _total(trainer.num_test_batches))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end("test", trainer, pl_module, "test/")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start("predict", _total(trainer.num_predict_batches))

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch("predict", batch_idx, _total(trainer.num_predict_batches))

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end("predict", trainer, pl_module, "predict/")


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, but for step-limited runs (``max_steps`` set) one bar over all
    optimiser steps, ``Step 120/2000``, instead of one per epoch under "Epoch 0/-2"-style headers.
    Runs limited by epochs keep the per-epoch bar."""

    def _steps(self, trainer: L.Trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not self._steps(trainer):
            return super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # the first epoch of this fit (also after a resume)
            bar.reset(total=trainer.max_steps)
            bar.initial = 0
            bar.n = trainer.global_step
        bar.set_description(f"Step (epoch {trainer.current_epoch})")
        return None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, step = self.train_progress_bar, trainer.global_step
        if bar is not None and self._should_update(step, bar.total):
            if not bar.disable:
                bar.n = step
                bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))
        return None


def default_progress_bar(stream: TextIO | None = None) -> ProgressBar:
    """The progress bar medsynth's commands use: :class:`LogProgressBar` when ``stream`` (default
    ``sys.stdout``) is not a terminal, :class:`StepProgressBar` when it is."""
    stream = stream or sys.stdout
    isatty = getattr(stream, "isatty", None)
    return StepProgressBar() if callable(isatty) and isatty() else LogProgressBar()


class LineProgress:
    """tqdm's ``update``/``close`` interface, printing whole lines: ``desc 12/40 (30%) | elapsed | ETA``.

    A line at the first update, at least every ``interval_s`` and at :meth:`close`.

    Args:
        total: Number of items (None: unknown).
        desc: Prefix of every line.
        unit: Name of the items.
        interval_s: Longest time between two lines (seconds).
        stream: Where lines go; None: ``sys.stdout`` at the time of printing.
        clock: Monotonic time source.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        interval_s: float = 30.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit, self.interval_s = total, desc, unit, float(interval_s)
        self.stream, self.clock = stream, clock
        self.n = 0
        self._t0 = clock()
        self._last = -math.inf
        self._closed = False

    def _line(self) -> str:
        elapsed = self.clock() - self._t0
        text = f"{self.desc}: {self.n}/{self.total if self.total is not None else '?'} {self.unit}"
        if self.total:
            text += f" ({100.0 * self.n / self.total:.0f}%)"
        text += f" | elapsed {format_duration(elapsed)}"
        if self.total and 0 < self.n < self.total and elapsed > 0:
            text += f" | ETA {format_duration((self.total - self.n) * elapsed / self.n)}"
        return text

    def _print(self) -> None:
        self._last = self.clock()
        print(self._line(), file=self.stream or sys.stdout, flush=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; print when the interval has passed."""
        self.n += n
        if self.clock() - self._last >= self.interval_s:
            self._print()

    def close(self) -> None:
        """Print the final line (once)."""
        if not self._closed:
            self._closed = True
            self._print()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _NoProgress:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_bar(total: int | None, desc: str, unit: str = "it", disable: bool = False) -> Any:
    """A progress display with tqdm's ``update(n)``/``close()``: a tqdm bar on a terminal
    (stderr), plain :class:`LineProgress` lines on stdout otherwise, nothing when ``disable``."""
    if disable:
        return _NoProgress()
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit)
    return LineProgress(total, desc, unit)
