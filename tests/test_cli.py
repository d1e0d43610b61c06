"""The command line: help, the phantom subcommand, and every experiment config instantiates."""

import gc
import json
import shutil
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


def test_version_and_help_defaults(capsys):
    from medsynth import __version__

    for argv in (["--version"], ["version"]):
        assert main(argv) == 0
        assert capsys.readouterr().out.strip() == f"medsynth {__version__}"
    for cmd, option, default in (
        ("phantom", "--cases", "(default: 10)"),
        ("synthesize", "--batch_size", "(default: 16)"),
        ("evaluate", "--figure_slices", "(default: 4)"),
        ("demo", "--train_steps", "(default: 1200)"),
    ):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert option in text and default in text, (cmd, text[:400])
        if cmd in ("synthesize", "evaluate"):
            assert "1000-step ancestral chain" in text  # what leaving out --sampler/--num_steps costs


def test_no_args_warning_from_the_console_script(monkeypatch, tmp_path):
    """The console script passes no args= to LightningCLI, so it does not warn about getting both."""
    import warnings

    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {class_path: lightning.pytorch.demos.boring_classes.BoringModel}\n"
        "data: {class_path: lightning.pytorch.demos.boring_classes.BoringDataModule}\n"
        "trainer: {logger: false, accelerator: cpu, max_steps: 1, limit_val_batches: 0, enable_checkpointing: false}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["medsynth", "fit", "--config", str(config)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main() == 0
    assert not [w for w in caught if "args" in str(w.message) and "command line" in str(w.message)]


def test_phantom_command_writes_amos_layout(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["phantom", "--output", str(out), "--cases", "2", "--depth", "4", "--size", "16"]) == 0
    # stdout is not a terminal here: progress comes as lines, the last one complete.
    assert "phantom: 3/3 case (100%)" in capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    assert len(meta["training"]) == 2 and len(meta["validation"]) == 1
    assert (out / "imagesVa" / "amos_0003.nii.gz").is_file()
    with pytest.raises(SystemExit, match="not empty"):
        main(["phantom", "--output", str(out), "--cases", "1"])


@pytest.fixture(scope="module")
def segmenter_checkpoint(tmp_path_factory):
    """A real (untrained, tiny) OrganSegmenter checkpoint, as the AMOS configs expect one for Dice."""
    import lightning
    import torch

    from medsynth.models import OrganSegmenter

    seg = OrganSegmenter(image_size=32, model_channels=4)
    path = tmp_path_factory.mktemp("seg") / "organ_segmenter.ckpt"
    state = {"state_dict": seg.state_dict(), "hyper_parameters": dict(seg.hparams)}
    torch.save({**state, "pytorch-lightning_version": lightning.__version__}, path)
    return path


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_experiment_config_instantiates(config, tmp_path, monkeypatch, segmenter_checkpoint):
    monkeypatch.chdir(tmp_path)  # configs name relative folders (logs, data, checkpoints)
    text = config.read_text()
    if "segmenter: checkpoints/organ_segmenter.ckpt" in text:
        # The AMOS configs score Dice with a trained segmenter and FID with the Inception file:
        # each missing file is named at construction, before any training.
        with pytest.raises(Exception, match="organ_segmenter.ckpt"):
            lightning_cli(["--config", str(config)], run=False)
        gc.collect()  # the failed attempt built a paper-sized model: free it before the next
        (tmp_path / "checkpoints").mkdir()
        shutil.copy(segmenter_checkpoint, tmp_path / "checkpoints" / "organ_segmenter.ckpt")
    if "fid_weights: weights/inception-2015-12-05.pt" in text:
        with pytest.raises(Exception, match="inception-2015-12-05.pt"):
            lightning_cli(["--config", str(config)], run=False)
        gc.collect()
        (tmp_path / "weights").mkdir()
        (tmp_path / "weights" / "inception-2015-12-05.pt").write_bytes(
            b""
        )  # only its presence is checked here
    args = ["--config", str(config)]
    if "vgg_weights: weights/vgg19.pth" in config.read_text():
        # The paper's SPADE needs ImageNet VGG19 weights, which cannot be downloaded here: the
        # config must fail at construction with the how-to-get-it message, and work without VGG.
        with pytest.raises(Exception, match="lambda_vgg"):
            lightning_cli(args, run=False)
        gc.collect()
        args += ["--model.init_args.lambda_vgg", "0"]
    cli = lightning_cli(args, run=False)
    assert cli.model is not None and cli.datamodule is not None
    assert cli.trainer.max_steps > 0 or cli.trainer.max_epochs > 0


@pytest.fixture(autouse=True)
def _free_models():
    """The AMOS configs build paper-sized models (~1 GB each); free them before the next one."""
    yield
    gc.collect()
