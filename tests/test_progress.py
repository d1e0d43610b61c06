"""Progress in a plain log: LogProgressBar's lines (step/total, loss, ETA, interval), LineProgress,
and the choice by TTY in medsynth's CLI."""

import io
import re

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.demos.boring_classes import BoringModel

from medsynth.callbacks.progress import (
    LineProgress,
    LogProgressBar,
    StepProgressBar,
    default_progress_bar,
    format_duration,
)


class LoggingModel(BoringModel):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train/loss", out["loss"], prog_bar=True)
        return out


class FakeClock(Callback):
    """A clock that advances ``dt`` seconds at the start of every training batch."""

    def __init__(self, dt: float) -> None:
        self.now, self.dt = 0.0, dt

    def __call__(self) -> float:
        return self.now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.now += self.dt


def _fit(bar: LogProgressBar, clock: Callback | None = None, **kw) -> None:
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
        limit_train_batches=3, limit_val_batches=0, callbacks=[bar] + ([clock] if clock else []), **kw,
    )  # fmt: skip
    trainer.fit(LoggingModel())


def test_lines_every_interval_with_total_loss_and_eta():
    clock, out = FakeClock(12.0), io.StringIO()
    bar = LogProgressBar(interval_s=30, stream=out, clock=clock)
    _fit(bar, clock, max_steps=7)  # 3 batches per epoch: the run crosses epochs
    lines = out.getvalue().splitlines()
    assert lines[0] == "fit start: 7 steps of LoggingModel"
    steps = [line for line in lines if line.startswith("fit step")]
    # 12 s per step, a line once 30 s have passed since the last: after steps 3 (36 s) and 6 (72 s).
    assert [re.match(r"fit step (\d+)/7", s).group(1) for s in steps] == ["3", "6"], lines
    # At step 3: 3 steps in 36 s = 12 s/it, 4 steps left -> ETA 48 s.
    assert "12.00 s/it" in steps[0] and "ETA 0:00:48" in steps[0] and "elapsed 0:00:36" in steps[0]
    assert re.search(r"train/loss \d", steps[0])
    assert lines[-1].startswith("fit done: step 7/7 (100%)") and "elapsed 0:01:24" in lines[-1]


def test_every_batch_and_epoch_total():
    out = io.StringIO()
    _fit(LogProgressBar(interval_s=0, stream=out), max_epochs=2)
    lines = out.getvalue().splitlines()
    assert lines[0] == "fit start: 6 steps of LoggingModel"  # max_epochs x batches per epoch
    assert [line.split()[2] for line in lines if line.startswith("fit step")] == [
        f"{i}/6" for i in range(1, 7)
    ]


def test_validation_and_test_lines():
    out = io.StringIO()
    bar = LogProgressBar(interval_s=0, stream=out)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
        max_steps=2, limit_train_batches=2, limit_val_batches=2, limit_test_batches=3, callbacks=[bar],
        num_sanity_val_steps=0,
    )  # fmt: skip
    model = LoggingModel()
    trainer.fit(model)
    trainer.test(model, verbose=False)
    text = out.getvalue()
    assert "validation start: 2 batches" in text and "validation batch 2/2" in text
    assert "test start: 3 batches" in text and "test batch 3/3" in text and "test done in" in text


def test_line_progress_and_durations():
    t = [0.0]
    out = io.StringIO()
    bar = LineProgress(10, "phantom", unit="case", interval_s=30, stream=out, clock=lambda: t[0])
    for _ in range(10):
        t[0] += 10
        bar.update()
    bar.close()
    bar.close()  # once only
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("phantom: 1/10 case (10%) | elapsed 0:00:10 | ETA 0:01:30")
    assert [ln.split()[1] for ln in lines] == ["1/10", "4/10", "7/10", "10/10", "10/10"]
    assert lines[-1] == "phantom: 10/10 case (100%) | elapsed 0:01:40"
    assert format_duration(3725) == "1:02:05" and format_duration(float("nan")) == "?"
    with pytest.raises(ValueError, match="interval_s"):
        LogProgressBar(interval_s=-1)


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_choice_by_tty(monkeypatch, tmp_path):
    assert type(default_progress_bar(_Stream(True))) is StepProgressBar  # a tqdm bar on a terminal
    assert isinstance(default_progress_bar(_Stream(False)), LogProgressBar)
    from medsynth.cli import lightning_cli

    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {class_path: lightning.pytorch.demos.boring_classes.BoringModel}\n"
        "data: {class_path: lightning.pytorch.demos.boring_classes.BoringDataModule}\n"
        "trainer: {logger: false, accelerator: cpu}\n"
    )
    monkeypatch.chdir(tmp_path)
    for tty, args, want in (
        (False, [], LogProgressBar),
        (True, [], StepProgressBar),
        (False, ["--trainer.enable_progress_bar", "false"], None),  # disabled: no bar, no error
    ):
        monkeypatch.setattr("sys.stdout", _Stream(tty))
        cli = lightning_cli(["--config", str(config), *args], run=False)
        bars = [type(c) for c in cli.trainer.callbacks if isinstance(c, (LogProgressBar, StepProgressBar))]
        assert bars == ([want] if want else []), (tty, args)


def test_step_bar_counts_steps_across_epochs(capsys):
    bar = StepProgressBar()
    _fit(bar, max_steps=7)  # 3 batches per epoch
    assert bar.train_progress_bar.total == 7 and bar.train_progress_bar.n == 7
    assert "Step (epoch 2): 100%" in capsys.readouterr().out and "7/7" in bar.train_progress_bar.__str__()
    bar = StepProgressBar()
    _fit(bar, max_epochs=2)  # epoch-limited: Lightning's per-epoch bar
    assert bar.train_progress_bar.total == 3
