"""medsynth evaluate and the demo: report rows against an independent computation, bad input."""

import csv
import json

import lightning as L
import numpy as np
import pytest
import yaml
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio
from test_synthesis import LutModel

from medsynth.commands.evaluate import main
from medsynth.data import PhantomDataModule
from medsynth.evaluate import build_datamodule
from medsynth.metrics.frd import check_frd_available


@pytest.fixture(scope="module")
def lut_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("lut") / "lut.ckpt"
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(LutModel(image_size=32))
    trainer.save_checkpoint(path)
    return path


def _data_config(path):
    args = {
        "num_train_cases": 0,
        "num_val_cases": 0,
        "num_test_cases": 1,
        "depth": 5,
        "image_size": 32,
        "batch_size": 2,
    }
    path.write_text(
        yaml.safe_dump({"data": {"class_path": "medsynth.data.PhantomDataModule", "init_args": args}})
    )
    return path, args


def test_build_datamodule(tmp_path):
    cfg, args = _data_config(tmp_path / "data.yaml")
    dm = build_datamodule(cfg)
    assert isinstance(dm, PhantomDataModule) and dm.hparams.depth == 5 and dm.batch_size == 2
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        build_datamodule(tmp_path / "nothere.yaml")
    (tmp_path / "nodata.yaml").write_text("model: {}\n")
    with pytest.raises(ValueError, match="nodata.yaml: no 'data:' section"):
        build_datamodule(tmp_path / "nodata.yaml")


def test_evaluate_report_matches_direct_psnr(lut_checkpoint, tmp_path):
    cfg, args = _data_config(tmp_path / "data.yaml")
    out = tmp_path / "report"
    rc = main(["--checkpoint", str(lut_checkpoint), "--name", "LUT", "--data_config", str(cfg), "--output", str(out),
               "--metrics", "psnr", "ssim", "--figure_slices", "2", "--figure_zoom", "0.5",
               "--accelerator", "cpu"])  # fmt: skip
    assert rc == 0
    rows = {r["Method"]: r for r in csv.DictReader((out / "report.csv").open())}
    assert "LUT" in rows and "Mask-guided DDPM (paper)" in rows
    # Independent reference: the LUT model's output is label / 16; PSNR per slice with scikit-image.
    dm = PhantomDataModule(**args)
    dm.setup("test")
    ds = dm.test_dataloader().dataset
    ref = np.mean([peak_signal_noise_ratio(ds[i]["image"][0].numpy(), np.clip(ds[i]["mask"].numpy() / 16.0, 0, 1), data_range=1.0)
                   for i in range(len(ds))])  # fmt: skip
    assert float(rows["LUT"]["PSNR"]) == pytest.approx(ref, abs=1e-3)
    assert (
        (out / "report.md").is_file()
        and (out / "report.tex").is_file()
        and (out / "report.png").stat().st_size > 0
    )
    # --figure_zoom adds a crop row under each of the 2 slices: 4 rows of 2-inch panels for 3
    # columns (mask, real, LUT), so the figure is taller than wide (without crops: 900 x 648 px)
    width, height = Image.open(out / "report.png").size
    assert height > width


def test_evaluate_bad_input(lut_checkpoint, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["--checkpoint", str(lut_checkpoint), "--output", str(out), "--metrics", "dice"]) == 2
    assert "--segmenter" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "none.ckpt"), "--output", str(out), "--metrics", "psnr"]) == 2
    assert "none.ckpt" in capsys.readouterr().err
    argv = ["--checkpoint", str(lut_checkpoint), "--output", str(out), "--metrics", "psnr"]
    assert main([*argv, "--figure_zoom", "1.5"]) == 2
    assert "--figure_zoom 1.5" in capsys.readouterr().err and not out.exists()


def test_evaluate_refuses_data_of_another_label_set_before_sampling(lut_checkpoint, tmp_path, capsys):
    """An AMOS-label model on TotalSegmentator-labelled data would read every id above 16 as
    garbage: refused, naming both label sets and the flag, before any slice is generated."""
    config, args = _data_config(tmp_path / "data.yaml")
    text = yaml.safe_load(config.read_text())
    text["data"]["init_args"]["label_set"] = "totalseg"
    config.write_text(yaml.safe_dump(text))
    out = tmp_path / "o"
    argv = ["--checkpoint", str(lut_checkpoint), "--output", str(out), "--metrics", "psnr"]
    assert main([*argv, "--data_config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "'totalseg'" in err and "'amos'" in err and "--data_config" in err
    assert not (out / "report.md").exists()


def test_evaluate_metric_choice_before_any_work(lut_checkpoint, tmp_path, capsys, monkeypatch):
    """Offline (no Inception file): the default leaves fid and dice out with one warning naming the
    flags (and keeps frd and hu: no download); an explicit --metrics fid fails at once, in the
    CLI's words, suggesting a way out."""
    import medsynth.evaluate
    import medsynth.metrics.image

    monkeypatch.setattr(medsynth.metrics.image, "cleanfid_cache_dirs", lambda: [tmp_path / "no_cache"])
    work = []
    monkeypatch.setattr(medsynth.evaluate, "build_datamodule", lambda *a, **k: work.append(a) or 1 / 0)
    cfg, _ = _data_config(tmp_path / "data.yaml")
    base = ["--checkpoint", str(lut_checkpoint), "--output", str(tmp_path / "o"), "--data_config", str(cfg)]
    assert main([*base, "--metrics", "fid", "psnr"]) == 2
    err = capsys.readouterr().err
    assert "--fid_weights" in err and "fid_weights=" not in err and "--metrics psnr ssim" in err
    assert main([*base, "--metrics", "fid", "--segmenter", str(lut_checkpoint)]) == 2
    assert "--metrics psnr ssim dice" in capsys.readouterr().err
    assert not work  # both failed before loading any data
    monkeypatch.setattr(medsynth.evaluate, "build_datamodule", build_datamodule)
    assert main([*base, "--figure_slices", "0", "--accelerator", "cpu"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    try:  # frd is in the default when frd-score is installed (medsynth[dev] installs it)
        check_frd_available()
        computed = "psnr ssim hu frd"
    except ImportError:
        computed = "psnr ssim hu"
    assert len(warnings) == 1 and f"computing {computed} only" in warnings[0]
    assert "--fid_weights" in warnings[0] and "--segmenter" in warnings[0]
    rows = {r["Method"]: r for r in csv.DictReader((tmp_path / "o" / "report.csv").open())}
    assert float(rows["LutModel"]["PSNR"]) > 0


def test_demo_quick_end_to_end(tmp_path, monkeypatch):
    import medsynth.evaluate
    import medsynth.models
    from medsynth.commands.demo import main as demo_main

    out = tmp_path / "demo"
    seen = {}
    ddpm_cls, evaluate = medsynth.models.MaskGuidedDDPM, medsynth.evaluate.evaluate_models

    def ddpm(*args, **kw):  # each stage's artefact exists as soon as the stage ends
        seen["segmenter before DDPM"] = (out / "checkpoints" / "organ_segmenter.ckpt").is_file()
        return ddpm_cls(*args, **kw)

    def evaluate_spy(*args, **kw):
        seen["DDPM before evaluation"] = (out / "checkpoints" / "mask_guided_ddpm.ckpt").is_file()
        seen["no report yet"] = not (out / "report.md").exists()
        return evaluate(*args, **kw)

    monkeypatch.setattr(medsynth.models, "MaskGuidedDDPM", ddpm)
    monkeypatch.setattr(medsynth.evaluate, "evaluate_models", evaluate_spy)
    assert demo_main(["--quick", "--output", str(out), "--accelerator", "cpu"]) == 0
    assert seen == {"segmenter before DDPM": True, "DDPM before evaluation": True, "no report yet": True}
    summary = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(summary["test"]["test/psnr"]) and 0.0 <= summary["test"]["test/ssim"] <= 1.0
    for name in ("report.md", "report.csv", "report.tex", "report.png", "checkpoints/mask_guided_ddpm.ckpt"):
        assert (out / name).is_file(), name
    # The README promises image grids in the demo's TensorBoard.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = []
    for events in (out / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        images += acc.Tags()["images"]
    assert "test/samples" in images


def test_totalseg_dice_on_synthetic_volumes(lut_checkpoint, tmp_path):
    """Synthesis -> TotalSegmentator (stand-in) -> Dice, over AMOS-layout cases in their own geometry."""
    import nibabel as nib
    from totalsegmentator.map_to_binary import class_map

    from medsynth.data import AMOSDataModule
    from medsynth.data.phantom import write_phantom_dataset
    from medsynth.evaluate import totalseg_dice
    from medsynth.labels import CLASSES
    from medsynth.metrics import TotalSegmentatorScorer
    from medsynth.synthesis import load_model

    root = write_phantom_dataset(tmp_path / "amos", num_train=0, num_val=2, depth=6, size=32, seed=4)
    dm = AMOSDataModule(
        root, image_size=32, cache_dir=tmp_path / "cache", progress=False, max_test_cases=2, max_val_cases=0
    )
    cases = [(c.image, c.label) for c in dm.splits["test"]]
    total_id = {name: i for i, name in class_map["total"].items()}

    def fake_totalseg(ct):
        # The LUT model writes HU = 25 * label - 160: invert it, then speak TotalSegmentator's ids.
        amos = np.clip(np.rint((np.asarray(ct.dataobj) + 160) / 25), 0, 16).astype(int)
        lut = np.zeros(17, dtype=np.int64)
        for c in CLASSES[1:16]:
            lut[c.index] = total_id[c.totalseg]
        return nib.Nifti1Image(lut[amos].astype(np.int16), ct.affine)

    scorer = TotalSegmentatorScorer(segment_fn=fake_totalseg)
    out = totalseg_dice(load_model(lut_checkpoint), cases, scorer, progress=False)
    labels = set()
    for _, lab in cases:
        labels |= set(np.unique(np.asarray(nib.load(lab).dataobj)).tolist())
    organs = {CLASSES[i].name for i in labels if 1 <= i <= 15}
    assert {k.removeprefix("test/dice/") for k in out} == organs | {"mean"}
    assert all(v == pytest.approx(1.0) for v in out.values())  # exact geometry round trip: perfect Dice


def test_totalseg_option_without_weights_fails_early(lut_checkpoint, tmp_path, capsys):
    rc = main(["--checkpoint", str(lut_checkpoint), "--output", str(tmp_path / "o"), "--metrics", "dice",
               "--totalseg", str(tmp_path / "no_weights")])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "no_weights" in err and "totalseg_download_weights" in err


def test_evaluate_frd_hu_memorization_sections(lut_checkpoint, tmp_path):
    """``--metrics psnr frd hu memorization`` with a training split: the report gets its sections
    and CSVs. The LUT model paints class k with k / 16, i.e. 25 k - 160 HU, so its HU medians are
    known in closed form (liver 6: -10 HU, IQR 0); the real medians and the pixel-space
    nearest-training distances are recomputed here with numpy from the data module."""
    cfg = tmp_path / "data.yaml"
    args = {
        "num_train_cases": 1,
        "num_val_cases": 0,
        "num_test_cases": 1,
        "depth": 5,
        "image_size": 32,
        "batch_size": 2,
    }
    cfg.write_text(
        yaml.safe_dump({"data": {"class_path": "medsynth.data.PhantomDataModule", "init_args": args}})
    )
    out = tmp_path / "report"
    rc = main(["--checkpoint", str(lut_checkpoint), "--name", "LUT", "--data_config", str(cfg), "--output", str(out),
               "--metrics", "psnr", "frd", "hu", "memorization", "--figure_slices", "0", "--accelerator", "cpu"])  # fmt: skip
    assert rc == 0
    md = (out / "report.md").read_text()
    assert "## Distribution distances" in md and "## Memorization" in md and "## Organ statistics in HU" in md
    hu = {r["Class"]: r for r in csv.DictReader((out / "report_hu.csv").open())}
    dm = PhantomDataModule(**args)
    dm.setup("fit")
    dm.setup("test")
    test = [dm.datasets["test"][i] for i in range(len(dm.datasets["test"]))]
    image = np.stack([t["image"][0].numpy() for t in test])
    mask = np.stack([t["mask"].numpy() for t in test])
    liver = hu["liver"]
    assert float(liver["synthetic_median"]) == -10.0 and float(liver["synthetic_q3"]) == -10.0
    assert float(liver["real_median"]) == np.median(np.round(image[mask == 6].astype(np.float64) * 400 - 160))
    assert float(liver["median_error"]) == float(liver["synthetic_median"]) - float(liver["real_median"])
    memo = {r["Space"]: r for r in csv.DictReader((out / "report_memorization.csv").open())}
    assert set(memo) == {"pixel"}  # no --segmenter: no feature space
    train = np.stack([dm.datasets["train"][i]["image"][0].numpy() for i in range(len(dm.datasets["train"]))])
    d = np.sqrt(((image[:, None].astype(np.float64) - train[None]) ** 2).mean(axis=(2, 3))).min(1)  # RMS
    assert float(memo["pixel"]["Real q50"]) == pytest.approx(np.median(d), rel=1e-5)  # logged as float32
    dist = {r["Method"]: r for r in csv.DictReader((out / "report_distances.csv").open())}
    assert np.isfinite(float(dist["LUT"]["FRD"]))
