"""Every phantom config runs ``medsynth fit --trainer.fast_dev_run true`` quickly, through the CLI.

The callbacks sample with FAST_DEV_RUN_STEPS steps under fast_dev_run (the issue: the mask-guided
config's callbacks sampled their full 50-step chains and ran past 10 minutes). The data is cut
to one 4-slice volume per split so the test times the model and callbacks, not the phantom.
"""

import time
from pathlib import Path

import pytest
import torch

from medsynth.callbacks.metrics import FAST_DEV_RUN_STEPS
from medsynth.cli import lightning_cli, main

ROOT = Path(__file__).resolve().parents[1]
# Method configs only: files starting with "_" are shared pieces (medsynth/configs.py), not runs.
PHANTOM = sorted(p for p in (ROOT / "experiments" / "phantom").glob("*.yaml") if not p.name.startswith("_"))
SMALL_DATA = [
    "--data.init_args.num_train_cases", "1", "--data.init_args.num_val_cases", "1",
    "--data.init_args.num_test_cases", "0", "--data.init_args.depth", "4",
    "--data.init_args.batch_size", "4", "--trainer.accelerator", "cpu",
]  # fmt: skip


def reflow_inputs(config: Path, folder: Path) -> list[str]:
    """What a reflow config needs before its fit, under ``folder``: the checkpoint of the flow it
    builds on (untrained, at its ``init_from``) and a pairs file of that flow's samples of the cut
    phantom (one per slice, 1 evaluation) recording that data. Returns the fit's extra arguments."""
    import yaml

    from medsynth.data.config import data_sections
    from medsynth.data.reflow import save_pairs
    from medsynth.reflow import make_pairs

    spec = yaml.safe_load(config.read_text())
    flow_config = config.with_name(spec["defaults"][0])
    flow = lightning_cli(["--config", str(flow_config), *SMALL_DATA], run=False)
    ckpt = folder / spec["model"]["init_args"]["init_from"]
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": flow.model.state_dict()}, ckpt)
    pairs = make_pairs(flow.model, flow.datamodule, num_steps=1)
    cut = dict(zip(SMALL_DATA[0:8:2], SMALL_DATA[1:8:2]))
    small = {"init_args": {k.rsplit(".", 1)[1]: int(v) for k, v in cut.items()}}
    pairs.meta["data"] = [*data_sections(flow_config), small]
    save_pairs(pairs, folder / spec["data"]["init_args"]["pairs"])
    return ["--data.init_args.batch_size", "4", "--trainer.accelerator", "cpu"]


@pytest.mark.parametrize("config", PHANTOM, ids=lambda p: p.stem)
def test_fast_dev_run_every_phantom_config(config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if "init_from: runs/phantom/sdm/checkpoints/last.ckpt" in config.read_text():
        # The fine-tune stage starts from the SDM stage's checkpoint: write one (untrained).
        sdm = lightning_cli(["--config", str(config.with_name("sdm.yaml")), *SMALL_DATA], run=False)
        path = tmp_path / "runs" / "phantom" / "sdm" / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        torch.save({"state_dict": sdm.model.state_dict()}, path)
    data = SMALL_DATA
    if "class_path: medsynth.data.ReflowDataModule" in config.read_text():
        data = reflow_inputs(config, tmp_path)
    steps: list[tuple[bool, int | None]] = []
    from medsynth.models.base import SynthesisModule

    original = SynthesisModule.generate

    def spy(self, mask, **kw):
        steps.append(("num_steps" in self.generate_options, kw.get("num_steps")))
        return original(self, mask, **kw)

    monkeypatch.setattr(SynthesisModule, "generate", spy)
    start = time.monotonic()
    assert main(["fit", "--config", str(config), *data, "--trainer.fast_dev_run", "true"]) == 0
    elapsed = time.monotonic() - start
    out = capsys.readouterr().out
    # stdout is not a terminal here, so the CLI chose the plain-line progress bar.
    assert "fit start: 1 steps" in out and "fit done: step 1/1 (100%)" in out, out
    if "class_path: medsynth.callbacks.SynthesisMetrics" in config.read_text():
        assert steps, "the validation callbacks did not generate"
        # Diffusion models sample FAST_DEV_RUN_STEPS steps; GANs take no num_steps.
        assert all(n == (FAST_DEV_RUN_STEPS if takes else None) for takes, n in steps), steps
    # 64x64 models at the configs' widths, one step and one validation batch: seconds, not minutes
    # (a 2-core CPU takes 3-10 s here; 60 s is the bound for the whole command).
    assert elapsed < 60, elapsed
