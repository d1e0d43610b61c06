"""The command line: help, the phantom subcommand, and every experiment config instantiates."""

import gc
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medsynth.cli import lightning_cli, main
from medsynth.configs import config_chain, expand_defaults
from medsynth.models.base import check_data_label_set

ROOT = Path(__file__).resolve().parents[1]
# Method configs; files starting with "_" are shared pieces that method files name in `defaults`.
CONFIGS = sorted(p for p in (ROOT / "experiments").glob("*/*.yaml") if not p.name.startswith("_"))
PIECES = sorted((ROOT / "experiments").glob("*/_*.yaml"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def documented_config_commands() -> list[tuple[str, tuple[str, ...]]]:
    """``(where, config paths)`` of every ``medsynth <subcommand> --config ...`` in README.md and docs/.

    Continued lines (trailing backslash) are joined, so multi-line commands count once.
    """
    found = []
    for doc in DOCS:
        text = doc.read_text().replace("\\\n", " ")
        for n, line in enumerate(text.splitlines(), 1):
            m = re.search(r"medsynth (fit|validate|test|predict) (.*)", line)
            if not m or "--config" not in m.group(2):
                continue
            words = shlex.split(m.group(2).split("#")[0].split("`")[0])
            configs = tuple(words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--config", "-c"))
            found.append((f"{doc.relative_to(ROOT)}:{n}", configs))
    return found


DOC_COMMANDS = documented_config_commands()


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


def test_phantom_command_irregular_organs(tmp_path):
    """--irregularity reaches the cases written (the labels of case 1 equal make_phantom_case's at the
    same seed and irregularity, not the regular one's); a bad value fails before anything is written."""
    import nibabel as nib

    from medsynth.data.phantom import make_phantom_case

    out = tmp_path / "irr"
    args = [
        "phantom",
        "--output",
        str(out),
        "--cases",
        "1",
        "--val_cases",
        "0",
        "--depth",
        "16",
        "--size",
        "32",
    ]
    assert main([*args, "--irregularity", "0.5", "--no_progress"]) == 0
    written = np.asarray(nib.load(out / "labelsTr" / "amos_0001.nii.gz").dataobj)
    irregular = make_phantom_case(1, depth=16, size=32, irregularity=0.5).label
    assert np.array_equal(written, irregular)
    assert not np.array_equal(written, make_phantom_case(1, depth=16, size=32).label)
    bad = tmp_path / "bad"
    with pytest.raises(SystemExit, match="--irregularity"):
        main(["phantom", "--output", str(bad), "--cases", "1", "--irregularity", "0.7"])
    assert not bad.exists()


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


def _config_text(config: Path) -> str:
    """A config and every piece it builds on, as one text (to see which weights it names)."""
    return "\n".join(f.read_text() for f, _ in config_chain(config))


def _realct_dataset(folder: Path) -> None:
    """The real-CT configs' dataset (datasets/Dataset700_RealCT under ``folder``), from the fixture."""
    from medsynth.data.nnunet import realct_files
    from medsynth.io import DatasetPair, write_nnunet_dataset

    ct, labels, names = realct_files()
    write_nnunet_dataset(
        [DatasetPair(ct, labels, "realct")], folder / "datasets" / "Dataset700_RealCT", names
    )


def _reflow_pairs(config: Path, folder: Path) -> None:
    """The pairs file a reflow config names, under ``folder``: two blank pairs that record the data
    of the flow config it builds on (its first ``defaults`` entry), as ``medsynth reflow`` would."""
    from medsynth.data.config import build_datamodule, data_sections
    from medsynth.data.reflow import ReflowPairs, save_pairs

    spec = yaml.safe_load(config.read_text())
    sections = data_sections(config.parent / spec["defaults"][0])
    real = build_datamodule(sections)
    s = real.image_size
    pairs = ReflowPairs(
        torch.zeros(2, 1, s, s), torch.zeros(2, s, s, dtype=torch.long), torch.arange(2), [("c", 0), ("c", 1)],
        meta={"data": sections, "image_size": s, "label_set": real.label_set.name, "window": list(real.window)},
    )  # fmt: skip
    save_pairs(pairs, folder / spec["data"]["init_args"]["pairs"])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_experiment_config_instantiates(config, tmp_path, monkeypatch, segmenter_checkpoint):
    """Every method config builds model, data and trainer; its run name and checkpoint folder are its
    file name (later configs and the docs name runs/<dataset>/<method>/checkpoints/last.ckpt)."""
    monkeypatch.chdir(tmp_path)  # configs name relative folders (logs, data, checkpoints)
    text = _config_text(config)
    if "root: datasets/Dataset700_RealCT" in text:
        _realct_dataset(tmp_path)
    # The AMOS configs score Dice with a trained segmenter and FID with the Inception file, and the
    # paper's SPADE needs ImageNet VGG19 weights; none can be downloaded here. Each missing file must
    # be named at construction, before any training (in whatever order the parts are built), and the
    # config must then build once it is there (VGG: or without the VGG term).
    missing = {}
    if "segmenter: checkpoints/organ_segmenter.ckpt" in text:
        missing["organ_segmenter.ckpt"] = lambda: shutil.copy(
            segmenter_checkpoint, (tmp_path / "checkpoints").mkdir() or tmp_path / "checkpoints"
        )
    if "fid_weights: weights/inception-2015-12-05.pt" in text:
        missing["inception-2015-12-05.pt"] = lambda: (
            (tmp_path / "weights").mkdir(exist_ok=True),
            (tmp_path / "weights" / "inception-2015-12-05.pt").write_bytes(b""),  # only its presence counts
        )
    if "class_path: medsynth.data.ReflowDataModule" in text:
        missing["reflow_pairs.pt"] = lambda: _reflow_pairs(config, tmp_path)
    args = ["--config", str(config)]
    if "vgg_weights: weights/vgg19.pth" in text:
        missing["lambda_vgg"] = lambda: args.extend(["--model.init_args.lambda_vgg", "0"])
    while missing:
        with pytest.raises(Exception) as err:
            lightning_cli(args, run=False)
        gc.collect()  # the failed attempt may have built a paper-sized model: free it before the next
        named = [key for key in missing if key in str(err.value)]
        assert named, f"construction failed without naming a missing file ({sorted(missing)}): {err.value}"
        missing.pop(named[0])()
    cli = lightning_cli(args, run=False)
    dataset, method = config.parent.name, config.stem
    assert cli.trainer.logger.name == method
    assert (
        Path(cli.trainer.checkpoint_callback.dirpath) == tmp_path / "runs" / dataset / method / "checkpoints"
    )
    assert (
        cli.model.hparams.image_size
        == cli.datamodule.image_size
        == {"amos": 256, "phantom": 64, "realct": 128}[dataset]
    )
    assert cli.trainer.max_steps > 0 or cli.trainer.max_epochs > 0
    # fit checks this only when training starts: a config whose model and data disagree on the
    # label set (realct's totalseg data with the models' default amos) fails there, not here
    check_data_label_set(cli.model, cli.datamodule)
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    assert "LearningRateMonitor" not in names  # no method configures an LR scheduler
    for cb in cli.trainer.callbacks:
        if type(cb).__name__ == "SynthesisMetrics" and getattr(cli.model, "generate_options", ()):
            # the sampler validation runs: respaced ancestral for a DDPM, as docs/methods recommend;
            # the flow's default (Euler) for a rectified flow
            sampler = cb.val_sampler or cli.model.hparams.sampler or cli.model.diffusion.samplers[0]
            assert sampler == {"ddpm": "ddpm", "rflow": "euler"}[cli.model.hparams.get("process", "ddpm")]
            assert config.stem.endswith(("_rflow", "_reflow")) == (
                cli.model.hparams.get("process") == "rflow"
            )


def test_every_piece_is_used_and_method_files_are_short():
    """Each shared piece is named by a method config or a documented command; method files stay short
    (< 20 lines of YAML).

    20 is the size of the longest method file (organ_segmenter, which lists its own checkpoint
    callback); anything longer repeats what a piece should hold.
    """
    used = {f.resolve() for c in CONFIGS for f, _ in config_chain(c)}
    used |= {(ROOT / c).resolve() for _, configs in DOC_COMMANDS for c in configs}
    assert set(PIECES) <= used, sorted(set(PIECES) - used)
    for c in CONFIGS:
        lines = [x for x in c.read_text().splitlines() if x.strip() and not x.lstrip().startswith("#")]
        assert len(lines) < 20, (c, len(lines))


def test_config_duplication_below_a_quarter():
    """benchmarks/config_duplication.py: < 25% of the config lines repeat in more than half the files."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from config_duplication import duplication

    share, files, lines, repeated = duplication(ROOT / "experiments")
    assert files == len(CONFIGS) + len(PIECES)
    assert share < 0.25, (share, repeated)


def test_documented_commands_name_existing_configs(tmp_path, monkeypatch):
    """Every ``medsynth fit/test --config ...`` in the docs names configs that exist, and each
    combination of several configs instantiates (single ones are covered above)."""
    monkeypatch.chdir(tmp_path)
    assert len(DOC_COMMANDS) >= 5  # the parser found the commands (README, getting_started, multi_gpu)
    for where, configs in DOC_COMMANDS:
        assert configs, where
        ours = [c for c in configs if c.startswith("experiments/")]  # others are the reader's files
        for c in ours:
            assert (ROOT / c).is_file(), f"{where} names {c}, which does not exist"
        assert not ours or ROOT / ours[0] in CONFIGS, f"{where}: a command starts with a method config"
    combos = {c for _, c in DOC_COMMANDS if len(c) > 1 and all(x.startswith("experiments/") for x in c)}
    assert combos  # at least the documented smoke run
    if any(c.startswith("experiments/realct/") for combo in combos for c in combo):
        _realct_dataset(tmp_path)
    for configs in sorted(combos):
        args = [a for c in configs for a in ("--config", str(ROOT / c))]
        cli = lightning_cli(args, run=False)
        assert cli.model.hparams.image_size == cli.datamodule.image_size
        if configs[-1].endswith("_smoke.yaml"):
            assert cli.datamodule.image_size == 32 and cli.trainer.max_steps == 20


def test_defaults_expand_in_order_and_later_overrides(tmp_path, monkeypatch):
    """`defaults` pieces come first, in order, nested pieces depth first; the file's own keys last."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text("trainer: {max_steps: 1}\n")
    (tmp_path / "b.yaml").write_text("defaults: [a.yaml]\ntrainer: {max_steps: 2, log_every_n_steps: 3}\n")
    (tmp_path / "c.yaml").write_text("defaults: [b.yaml]\ntrainer: {max_steps: 4}\n")
    out = expand_defaults(["fit", "--config", str(tmp_path / "c.yaml"), "--trainer.max_steps", "5"])
    assert out[0] == "fit" and out[1::2][:3] == ["--config"] * 3 and out[-2:] == ["--trainer.max_steps", "5"]
    assert out[2] == str((tmp_path / "a.yaml").resolve())
    assert "log_every_n_steps: 3" in out[4] and "defaults" not in out[4] and "max_steps: 4" in out[6]
    (tmp_path / "loop.yaml").write_text("defaults: [loop.yaml]\n")
    with pytest.raises(ValueError, match="cycle"):
        expand_defaults(["--config", str(tmp_path / "loop.yaml")])
    (tmp_path / "missing.yaml").write_text("defaults: [nothere.yaml]\n")
    with pytest.raises(ValueError, match="nothere.yaml"):
        expand_defaults(["--config", str(tmp_path / "missing.yaml")])


def test_image_size_link_and_drift_error(tmp_path, monkeypatch):
    """`--data.init_args.image_size` sets the model's too; a different model size is an error naming both."""
    monkeypatch.chdir(tmp_path)
    config = str(ROOT / "experiments" / "phantom" / "conditional_ddpm.yaml")
    cli = lightning_cli(["--config", config, "--data.init_args.image_size", "32"], run=False)
    assert cli.model.image_size == cli.datamodule.image_size == 32
    with pytest.raises(
        ValueError, match=r"--model.init_args.image_size=48 differs from --data.init_args.image_size=64"
    ):
        lightning_cli(["--config", config, "--model.init_args.image_size", "48"], run=False)


@pytest.fixture(autouse=True)
def _free_models():
    """The AMOS configs build paper-sized models (~1 GB each); free them before the next one."""
    yield
    gc.collect()


def test_missing_metric_files_are_named_before_any_model_is_built(tmp_path, monkeypatch):
    """A config whose SynthesisMetrics needs a missing segmenter checkpoint fails naming it before
    the (paper-sized) model is built: the CLI checks callbacks' inputs first (check_config)."""
    from medsynth.models.base import SynthesisModule

    monkeypatch.chdir(tmp_path)
    built, init = [], SynthesisModule.__init__

    def spy(self, *args, **kwargs):
        built.append(type(self).__name__)
        init(self, *args, **kwargs)

    monkeypatch.setattr(SynthesisModule, "__init__", spy)
    config = ROOT / "experiments" / "amos" / "mask_guided_ddpm.yaml"
    with pytest.raises(
        FileNotFoundError, match="segmenter checkpoint not found: checkpoints/organ_segmenter.ckpt"
    ):
        lightning_cli(["--config", str(config)], run=False)
    assert built == []
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "organ_segmenter.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="Inception weights"):  # the next missing file, still first
        lightning_cli(["--config", str(config)], run=False)
    assert built == []
