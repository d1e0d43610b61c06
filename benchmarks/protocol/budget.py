"""Training under a budget: a wall-clock budget, or a step budget from an idle-machine calibration.

The quality protocol trains every method for the same budget and saves checkpoints at 25 / 50 /
100 % of it (:class:`BudgetCheckpoints`). A wall-clock budget (``--budget`` minutes, Lightning's
``max_time``) buys fewer steps whenever something else runs on the machine. A step budget does
not: :func:`calibrate` times a method's training steps once on an idle machine (after warm-up),
the seconds per step are kept in a JSON file (:func:`read_calibration`, :func:`write_calibration`:
method, settings, s/step, date, CPU, threads), and :func:`step_budget` turns a budget in minutes
into ``round(minutes * 60 / seconds_per_step)`` steps, the same on a loaded machine.
"""

from __future__ import annotations

import datetime
import json
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from .resume import atomic_write, jsonable, machine

__all__ = [
    "CALIBRATION_VERSION",
    "FRACTIONS",
    "BudgetCheckpoints",
    "CalibrationError",
    "StepTimer",
    "calibrate",
    "calibration_entry",
    "check_calibration",
    "checkpoint_steps",
    "diffusion_steps",
    "quiet_trainer",
    "read_calibration",
    "step_budget",
    "train_method",
    "trained_checkpoints",
    "write_calibration",
]

FRACTIONS: tuple[float, ...] = (0.25, 0.5, 1.0)
CALIBRATION_VERSION = 1
Clock = Callable[[], float]


def _half_up(x: float) -> int:
    """``x`` rounded to the nearest integer, halves up (``round`` rounds 2.5 to 2)."""
    return int(x + 0.5)


def quiet_trainer(
    accelerator: str = "cpu",
    max_steps: int = -1,
    max_time: float | None = None,
    callbacks: Sequence[Callback] = (),
    **overrides: Any,
) -> L.Trainer:
    """A Lightning Trainer on one device without logger, checkpointing, progress bar or validation.

    Args:
        accelerator: ``"cpu"`` or ``"gpu"``.
        max_steps: Optimiser steps (``trainer.global_step``; one per batch for every medsynth
            model, the GANs included); -1: no limit.
        max_time: Minutes of training (Lightning's ``max_time``); None: no limit.
        callbacks: Extra callbacks.
        overrides: Further ``L.Trainer`` arguments (``precision``, ``max_epochs``, ...).
    """
    kwargs: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": 1,
        "max_steps": max_steps,
        "max_epochs": -1,
        "max_time": None if max_time is None else datetime.timedelta(minutes=max_time),
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "callbacks": list(callbacks),
    }
    return L.Trainer(**{**kwargs, **overrides})


def checkpoint_steps(total_steps: int, fractions: Sequence[float] = FRACTIONS) -> dict[float, int]:
    """The global step of each checkpoint of a ``total_steps`` budget: ``fraction * total_steps``
    rounded half up, at least 1 (``{0.25: 3, 0.5: 5, 1.0: 10}`` for 10 steps)."""
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"fractions must lie in (0, 1], got {bad}")
    return {f: max(1, _half_up(f * total_steps)) for f in fractions}


class BudgetCheckpoints(Callback):
    """Saves ``<directory>/<name>_<pct>.ckpt`` at each fraction of the budget, and at the end.

    Exactly one budget: ``budget_s`` seconds of wall-clock training (a checkpoint at the first
    batch end at or after ``fraction * budget_s``), or ``total_steps`` steps (a checkpoint when
    ``trainer.global_step`` reaches :func:`checkpoint_steps`). ``saved`` maps each fraction to
    the ``step`` and ``seconds`` at which it was written.

    Args:
        name: Prefix of the checkpoint files.
        directory: Their folder.
        budget_s: Wall-clock budget in seconds.
        total_steps: Step budget.
        fractions: Where to save; 1.0 is always saved at the end of training.
        clock: Seconds counter (``time.perf_counter``; a test passes its own).
    """

    def __init__(
        self,
        name: str,
        directory: str | Path,
        *,
        budget_s: float | None = None,
        total_steps: int | None = None,
        fractions: Sequence[float] = FRACTIONS,
        clock: Clock = time.perf_counter,
    ) -> None:
        if (budget_s is None) == (total_steps is None):
            raise ValueError("give exactly one of budget_s (wall clock) and total_steps (step budget)")
        if budget_s is not None and not budget_s > 0:
            raise ValueError(f"budget_s must be positive, got {budget_s!r}")
        self.name, self.dir, self.clock = name, Path(directory), clock
        self.budget_s, self.total_steps = budget_s, total_steps
        self.targets = checkpoint_steps(total_steps, fractions) if total_steps is not None else {}
        self.pending = sorted(f for f in fractions if f < 1.0)
        self.saved: dict[float, dict[str, Any]] = {}
        self.t0 = 0.0

    def path(self, fraction: float) -> Path:
        return self.dir / f"{self.name}_{round(100 * fraction)}.ckpt"

    def _reached(self, trainer: L.Trainer, fraction: float) -> bool:
        if self.total_steps is not None:
            return trainer.global_step >= self.targets[fraction]
        return self.clock() - self.t0 >= fraction * self.budget_s

    def _save(self, trainer: L.Trainer, fraction: float) -> None:
        trainer.save_checkpoint(self.path(fraction))
        self.saved[fraction] = {"step": trainer.global_step, "seconds": self.clock() - self.t0}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t0 = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        while self.pending and self._reached(trainer, self.pending[0]):
            self._save(trainer, self.pending.pop(0))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for f in self.pending:  # budget too short to reach them: save what there is
            self._save(trainer, f)
        self.pending = []
        self._save(trainer, 1.0)


def train_method(
    model: L.LightningModule,
    name: str,
    datamodule: L.LightningDataModule,
    ckpt_dir: str | Path,
    accelerator: str = "cpu",
    *,
    minutes: float | None = None,
    steps: int | None = None,
    fractions: Sequence[float] = FRACTIONS,
) -> dict[float, dict[str, Any]]:
    """Train ``model`` on ``datamodule`` for ``minutes`` of wall clock or ``steps`` steps (exactly
    one), saving ``<ckpt_dir>/<name>_<pct>.ckpt`` at ``fractions`` of the budget.

    Returns:
        ``{fraction: {"path", "step", "seconds"}}`` in fraction order.
    """
    if (minutes is None) == (steps is None):
        raise ValueError("give exactly one of minutes (wall clock) and steps (step budget)")
    if minutes is not None:
        cb = BudgetCheckpoints(name, ckpt_dir, budget_s=60 * minutes, fractions=fractions)
        trainer = quiet_trainer(accelerator, max_time=minutes, callbacks=[cb])
    else:
        cb = BudgetCheckpoints(name, ckpt_dir, total_steps=steps, fractions=fractions)
        trainer = quiet_trainer(accelerator, max_steps=steps, callbacks=[cb])
    trainer.fit(model, datamodule=datamodule)
    return {f: {"path": str(cb.path(f)), **info} for f, info in sorted(cb.saved.items())}


def trained_checkpoints(
    name: str, ckpt_dir: str | Path, steps: int, fractions: Sequence[float] = FRACTIONS
) -> dict[float, dict[str, Any]] | None:
    """The checkpoints a stopped run already wrote for a ``steps``-step budget, as
    :func:`train_method` returns them, or None when any is missing or was saved at another step.

    Only step budgets can be checked this way (a wall-clock budget leaves no trace to compare);
    ``seconds`` is None because the stopped run's clock is gone.
    """
    targets = checkpoint_steps(steps, fractions)
    found: dict[float, dict[str, Any]] = {}
    for f in sorted(fractions):
        path = Path(ckpt_dir) / f"{name}_{round(100 * f)}.ckpt"
        if not path.is_file():
            return None
        step = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("global_step")
        if step != (steps if f == 1.0 else targets[f]):
            return None
        found[f] = {"path": str(path), "step": step, "seconds": None}
    return found


# ---------------------------------------------------------------------------------- step budget
class StepTimer(Callback):
    """Clock readings at every batch start and at the end of training (CUDA synchronised first),
    so that consecutive readings bound one whole step: data loading, forward, backward, optimiser,
    EMA update and the other callbacks.

    Args:
        warmup: Steps left out of :meth:`gaps` (allocator, kernel selection, caches).
        clock: Seconds counter (``time.perf_counter``).
    """

    def __init__(self, warmup: int = 0, clock: Clock = time.perf_counter) -> None:
        if not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
        self.warmup, self.clock, self.starts = warmup, clock, []

    def _tick(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.starts.append(self.clock())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._tick(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._tick(pl_module)

    def gaps(self) -> list[float]:
        """Seconds of each step after the warm-up."""
        return [b - a for a, b in zip(self.starts[:-1], self.starts[1:])][self.warmup :]

    def step_seconds(self) -> float:
        """Median seconds per step after the warm-up (robust to a stray slow step)."""
        return statistics.median(self.gaps())

    def mean_seconds(self) -> float:
        """Mean seconds per step after the warm-up (what a budget of many steps costs)."""
        gaps = self.gaps()
        if not gaps:
            raise ValueError(f"no step was timed after {self.warmup} warm-up steps")
        return (self.starts[-1] - self.starts[self.warmup]) / len(gaps)


def calibrate(
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    accelerator: str = "cpu",
    steps: int = 30,
    warmup: int = 5,
    clock: Clock = time.perf_counter,
) -> float:
    """Seconds per training step of ``model`` on this machine: the mean over ``steps`` steps of a
    Lightning fit (the loop :func:`train_method` runs) after ``warmup`` untimed ones.

    Trains ``model`` for ``warmup + steps`` steps: pass a throw-away copy. Take it on an idle
    machine; under load it measures the load.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    timer = StepTimer(warmup, clock)
    quiet_trainer(accelerator, max_steps=warmup + steps, callbacks=[timer]).fit(model, datamodule=datamodule)
    return timer.mean_seconds()


def step_budget(minutes: float, seconds_per_step: float) -> int:
    """Steps that ``minutes`` of training buy at ``seconds_per_step``: ``minutes * 60 / s`` rounded
    half up, at least 1."""
    if not minutes > 0:
        raise ValueError(f"minutes must be positive, got {minutes!r}")
    if not seconds_per_step > 0:
        raise ValueError(f"seconds_per_step must be positive, got {seconds_per_step!r}")
    return max(1, _half_up(60.0 * minutes / seconds_per_step))


class CalibrationError(ValueError):
    """A calibration file that cannot serve this run; the message names the file and the fix."""


def calibration_entry(
    method: str,
    settings: Mapping[str, Any],
    seconds_per_step: float,
    timed_steps: int,
    warmup_steps: int,
    device: str = "cpu",
) -> dict[str, Any]:
    """One method's record of a calibration file: what was timed, the result, and where and when
    (date, CPU, cores, torch threads, torch version, GPU: :func:`~benchmarks.protocol.resume.machine`)."""
    return {
        "method": method,
        "settings": jsonable(dict(settings)),
        "seconds_per_step": float(seconds_per_step),
        "timed_steps": int(timed_steps),
        "warmup_steps": int(warmup_steps),
        **machine(device),
    }


def read_calibration(path: str | Path) -> dict[str, dict[str, Any]]:
    """The entries ``{method: entry}`` of a calibration file; ``{}`` when it does not exist yet.

    Raises:
        CalibrationError: naming the file when it is not JSON, not a calibration file, or an
            entry has no positive ``seconds_per_step``.
    """
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CalibrationError(f"--calibration {path}: cannot read it as JSON ({e})") from e
    if not isinstance(data, dict) or data.get("version") != CALIBRATION_VERSION:
        raise CalibrationError(
            f"--calibration {path}: not a calibration file of version {CALIBRATION_VERSION} "
            f"(expected {{'version': {CALIBRATION_VERSION}, 'methods': {{...}}}})"
        )
    methods = data.get("methods")
    if not isinstance(methods, dict):
        raise CalibrationError(f"--calibration {path}: no 'methods' table")
    for name, entry in methods.items():
        s = entry.get("seconds_per_step") if isinstance(entry, dict) else None
        if not isinstance(s, (int, float)) or not s > 0:
            raise CalibrationError(f"--calibration {path}: {name} has no positive seconds_per_step ({s!r})")
    return methods


def write_calibration(path: str | Path, entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Write ``entries`` (``{method: entry}``) as a calibration file, atomically (its folder made)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = {"version": CALIBRATION_VERSION, "methods": {k: dict(v) for k, v in entries.items()}}
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def check_calibration(path: str | Path, entry: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """Raise :class:`CalibrationError` when ``entry`` timed other settings than ``settings``
    (a recipe, the image or batch size, the accelerator), naming the file and the differences."""
    before, now = jsonable(dict(entry.get("settings", {}))), jsonable(dict(settings))
    if before != now:
        diff = {
            k: (before.get(k), now.get(k))
            for k in sorted(set(before) | set(now))
            if before.get(k) != now.get(k)
        }
        raise CalibrationError(
            f"--calibration {path}: {entry.get('method')} was timed with other settings "
            f"({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); "
            "remove its entry to time it again (on an idle machine), or use another file"
        )


# ---------------------------------------------------------------------------------- plain loops
def diffusion_steps(
    model: Any,
    batches: Iterable[Mapping[str, Any]],
    steps: int,
    seconds: float | None = None,
    on_step: Callable[[int, float], None] | None = None,
    clock: Clock = time.perf_counter,
) -> list[float]:
    """Train a diffusion model without Lightning: ``steps`` steps of its training loss, optimiser
    (and learning-rate schedule, if :meth:`configure_optimizers` gives one) and EMA update,
    cycling over ``batches`` (a DataLoader or a list); stops early after ``seconds``.

    Args:
        on_step: Called with the step number (from 1) and the loss after every step.

    Returns:
        The loss of every step taken.
    """
    conf = model.configure_optimizers()
    opt = conf["optimizer"] if isinstance(conf, dict) else conf
    sched = conf["lr_scheduler"]["scheduler"] if isinstance(conf, dict) and "lr_scheduler" in conf else None
    limit = float("inf") if seconds is None else seconds
    losses: list[float] = []
    t0 = clock()
    while len(losses) < steps and clock() - t0 < limit:
        before = len(losses)
        for b in batches:
            loss = model._losses(model.net, b, training=True)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            model.ema.update(model.net)
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(len(losses), losses[-1])
            if len(losses) >= steps or clock() - t0 >= limit:
                break
        if len(losses) == before:
            raise ValueError("batches yielded no batch: nothing to train on")
    return losses
