"""The command line: help, the phantom subcommand, and every experiment config instantiates."""

import json
from pathlib import Path

import pytest

from medsynth.cli import lightning_cli, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments").glob("*/*.yaml"))


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("fit", "test", "synthesize", "evaluate", "phantom", "demo"):
        assert cmd in out
    assert main(["nonsense"]) == 2


def test_phantom_command_writes_amos_layout(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["phantom", "--output", str(out), "--cases", "2", "--depth", "4", "--size", "16"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert len(meta["training"]) == 2 and len(meta["validation"]) == 1
    assert (out / "imagesVa" / "amos_0003.nii.gz").is_file()
    with pytest.raises(SystemExit, match="not empty"):
        main(["phantom", "--output", str(out), "--cases", "1"])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_experiment_config_instantiates(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs may name relative folders (logs, data, checkpoints)
    cli = lightning_cli(["--config", str(config)], run=False)
    assert cli.model is not None and cli.datamodule is not None
    assert cli.trainer.max_steps > 0 or cli.trainer.max_epochs > 0
