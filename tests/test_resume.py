"""An interrupted run resumes at the same step with the same optimiser and EMA state (--ckpt_path last)."""

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from medsynth.cli import lightning_cli

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "phantom" / "mask_guided_ddpm.yaml"
TINY = [
    "--model.init_args.model_channels", "8",  # image_size: from data (linked)
    "--model.init_args.channel_mult", "[1, 2]", "--model.init_args.attention_resolutions", "[]",
    "--data.init_args.image_size", "32", "--data.init_args.num_train_cases", "1",
    "--data.init_args.num_val_cases", "1", "--data.init_args.num_test_cases", "0",
    "--data.init_args.depth", "4", "--data.init_args.batch_size", "2",
    "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
]  # fmt: skip


class _Snapshot(Callback):
    """Records the step, optimiser state and weights when training (re)starts or ends."""

    def __init__(self, when: str) -> None:
        self.when, self.state = when, None

    def _take(self, trainer, pl_module) -> None:
        opt = trainer.optimizers[0].state_dict()
        self.state = {
            "step": trainer.global_step,
            "exp_avg": [s["exp_avg"].clone() for s in opt["state"].values()],
            "opt_step": [float(s["step"]) for s in opt["state"].values()],
            "net": {k: v.clone() for k, v in pl_module.net.state_dict().items()},
            "ema": {k: v.clone() for k, v in pl_module.ema.state_dict().items()},
        }

    def on_train_start(self, trainer, pl_module) -> None:
        if self.when == "start":
            self._take(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.when == "end":
            self._take(trainer, pl_module)


def _run(max_steps: int, snapshot: _Snapshot, ckpt_path: str | None = None) -> None:
    cli = lightning_cli(["--config", str(CONFIG), *TINY, "--trainer.max_steps", str(max_steps)], run=False)
    cli.trainer.callbacks.append(snapshot)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)


def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config writes runs/phantom/mask_guided_ddpm/...
    first = _Snapshot("end")
    _run(3, first)  # "interrupted" after 3 of 5 steps
    last = tmp_path / "runs" / "phantom" / "mask_guided_ddpm" / "checkpoints" / "last.ckpt"
    assert last.is_file()

    resumed = _Snapshot("start")
    _run(5, resumed, ckpt_path="last")
    a, b = first.state, resumed.state
    assert a["step"] == 3 and b["step"] == 3
    assert b["opt_step"] == a["opt_step"] == [3.0] * len(a["opt_step"])
    for x, y in zip(a["exp_avg"], b["exp_avg"], strict=True):
        assert torch.equal(x, y)
    for key in a["net"]:
        assert torch.equal(a["net"][key], b["net"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    assert torch.load(last, weights_only=False)["global_step"] == 5  # and it went on to the end
