"""Synthesis and evaluation on several processes (2 CPU processes, gloo): the files and the report
of one process, whatever the number of processes; reruns complete a folder, never another run's;
``medsynth label --workers``.

DDP runs use ``ddp_spawn`` (as tests/test_callbacks.py: a forked worker of a parent that ran
OpenMP can hang); ``test_cli_ddp_...`` runs the command under Lightning's own launcher, which
starts ``python -m medsynth`` again for rank 1, as on a GPU node.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import save_nifti, tiny_model
from test_autolabel import fake_totalsegmentator, write_cts
from test_evaluate import _data_config
from test_synthesis import LutModel

import medsynth.synthesis as synthesis
from medsynth.autolabel import label_folder
from medsynth.commands.synthesize import main as synthesize_main
from medsynth.evaluate import evaluate_checkpoints
from medsynth.labels import BODY
from medsynth.models import MaskGuidedDDPM
from medsynth.synthesis import (
    RUN_MANIFEST,
    read_label_case,
    synthesize_cases,
    synthesize_files,
    volume_group_size,
)

SPAWN = {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}
OPTIONS = {"batch_size": 2, "num_steps": 2, "seed": 3, "progress": False}


def tiny_ddpm(**kwargs) -> MaskGuidedDDPM:
    """A tiny mask-guided DDPM with all weights (EMA too) perturbed: a zero-initialised output conv
    would make every sample equal to the noise-free mean."""
    torch.manual_seed(0)
    model = tiny_model(MaskGuidedDDPM, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def write_labels(folder: Path, n: int, depth: int = 3) -> list[Path]:
    """``n`` label volumes of 32 x 32 x ``depth`` (body, liver, one more organ that differs per case)."""
    paths = []
    for i in range(n):
        lab = np.zeros((32, 32, depth), np.uint8)
        lab[3:29, 4:28] = BODY
        lab[8:16, 10:20, 1:] = 6
        lab[18:24, 5 + i : 12, : depth - 1] = 1 + i
        paths.append(save_nifti(folder / f"case{i}.nii.gz", lab, np.diag([1.5, 1.5, 3.0, 1.0])))
    return paths


def image_data(folder: Path) -> dict[str, tuple[bytes, bytes]]:
    """Per ``<case>.nii.gz`` of ``folder``: the bytes of its image data and of its affine."""
    out = {}
    for path in sorted(folder.glob("*.nii.gz")):
        img = nib.load(path)
        out[path.name] = (np.asanyarray(img.dataobj).tobytes(), img.affine.tobytes())
    return out


def assert_same_volumes(a: Path, b: Path) -> None:
    got, want = image_data(a), image_data(b)
    assert sorted(got) == sorted(want) and got
    for name in want:
        assert got[name] == want[name], name


@pytest.mark.parametrize("context", [False, True], ids=["2d", "2.5d"])
def test_one_process_writes_what_the_plain_loop_makes(tmp_path, context):
    """The default path (one process through ``Trainer.predict``) against the loop synthesize_files
    ran before: groups of :func:`volume_group_size` cases through :func:`synthesize_cases`, rounded
    to int16. A 2.5D model with previous slices makes 3 volumes as a group of 2 and one of 1."""
    model = tiny_ddpm(**({"context_slices": 1, "context_previous": 1} if context else {}))
    inputs = write_labels(tmp_path / "labels", 3)
    written = synthesize_files(model, inputs, tmp_path / "out", **OPTIONS)
    assert written == [tmp_path / "out" / p.name for p in inputs]
    cases = [read_label_case(p) for p in inputs]
    group = volume_group_size(model, OPTIONS["batch_size"])
    assert group == (2 if context else 1)
    options = {k: v for k, v in OPTIONS.items()}
    for i in range(0, len(cases), group):
        for case, hu in zip(cases[i : i + group], synthesize_cases(model, cases[i : i + group], **options)):
            img = nib.load(tmp_path / "out" / f"{case.name}.nii.gz")
            np.testing.assert_array_equal(np.asarray(img.dataobj), np.round(hu).astype(np.int16))
            assert img.get_data_dtype() == np.int16 and np.allclose(img.affine, case.geometry.affine)


def test_two_processes_write_the_bytes_of_one(tmp_path):
    """3 volumes of a tiny DDPM on 2 processes (2 work items on rank 0, 1 on rank 1): every file's
    image data equals the one-process file byte for byte; the nnU-Net export is whole, once."""
    model = tiny_ddpm()
    inputs = write_labels(tmp_path / "labels", 3)
    synthesize_files(model, inputs, tmp_path / "one", nnunet="Dataset701_One", **OPTIONS)
    synthesize_files(model, inputs, tmp_path / "two", nnunet="Dataset701_One", **OPTIONS, **SPAWN)
    assert_same_volumes(tmp_path / "two", tmp_path / "one")
    assert_same_volumes(
        tmp_path / "two" / "Dataset701_One" / "imagesTr", tmp_path / "one" / "Dataset701_One" / "imagesTr"
    )
    meta = json.loads((tmp_path / "two" / "Dataset701_One" / "dataset.json").read_text())
    assert meta["numTraining"] == 3
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "Dataset701_One", "case0.nii.gz", "case1.nii.gz", "case2.nii.gz", RUN_MANIFEST,
    ]  # fmt: skip


def test_rerun_makes_only_what_is_missing_and_refuses_another_run(tmp_path, monkeypatch):
    """A failure mid-run leaves complete files only; the rerun makes the missing volume alone (and
    removes a killed run's hidden temporary file), giving the files of an uninterrupted run. Another
    seed or other weights into the same folder are refused, naming the folder, before any work."""
    model = tiny_ddpm()
    inputs = write_labels(tmp_path / "labels", 3)
    synthesize_files(model, inputs, tmp_path / "clean", **OPTIONS)
    out = tmp_path / "out"
    made: list[list[str]] = []

    def failing(model, cases, **options):
        made.append([c.name for c in cases])
        if cases[0].name == "case1":
            raise RuntimeError("killed")
        return synthesize_cases(model, cases, **options)

    monkeypatch.setattr(synthesis, "synthesize_cases", failing)
    with pytest.raises(RuntimeError, match="killed"):
        synthesize_files(model, inputs, out, **OPTIONS)
    assert sorted(p.name for p in out.iterdir()) == ["case0.nii.gz", RUN_MANIFEST]
    (out / ".case2.nii.gz.partial.nii.gz").write_bytes(b"\x1f\x8b half a file")  # as a SIGKILL leaves it
    made.clear()
    monkeypatch.setattr(
        synthesis,
        "synthesize_cases",
        lambda m, c, **o: made.append([x.name for x in c]) or synthesize_cases(m, c, **o),
    )
    synthesize_files(model, inputs, out, **OPTIONS)
    assert made == [["case1"], ["case2"]]
    assert_same_volumes(out, tmp_path / "clean")
    assert sorted(p.name for p in out.iterdir()) == [
        "case0.nii.gz",
        "case1.nii.gz",
        "case2.nii.gz",
        RUN_MANIFEST,
    ]
    made.clear()
    synthesize_files(model, inputs, out, **OPTIONS)  # complete: nothing to make
    assert made == []
    before = image_data(out)
    with pytest.raises(ValueError, match=rf"--output {out} holds volumes of another run .*\['seed'\]"):
        synthesize_files(model, inputs, out, **{**OPTIONS, "seed": 4})
    other = tiny_ddpm()
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(ValueError, match=rf"--output {out} holds volumes of another run .*\['model'\]"):
        synthesize_files(other, inputs, out, **OPTIONS)
    assert made == [] and image_data(out) == before


@pytest.fixture(scope="module")
def lut_checkpoint(tmp_path_factory) -> Path:
    """The LUT model of tests/test_synthesis.py at 32 x 32 (every voxel becomes ``25 * label - 160`` HU)."""
    import lightning as L

    path = tmp_path_factory.mktemp("lut") / "lut.ckpt"
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(LutModel(image_size=32))
    trainer.save_checkpoint(path)
    return path


def test_bad_distributed_flags_are_named_before_any_work(lut_checkpoint, tmp_path, capsys):
    """Lightning's refusal of a flag ends the command with status 2, naming it; nothing is written."""
    write_labels(tmp_path / "labels", 1)
    base = [
        "--checkpoint",
        str(lut_checkpoint),
        "--input",
        str(tmp_path / "labels"),
        "--output",
        str(tmp_path / "out"),
    ]
    assert synthesize_main([*base, "--accelerator", "cpu", "--strategy", "nonsense"]) == 2
    assert "strategy='nonsense'" in capsys.readouterr().err
    assert synthesize_main([*base, "--num_nodes", "0"]) == 2
    assert "--num_nodes must be a positive int, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_ddp_two_processes_under_lightnings_launcher(lut_checkpoint, tmp_path):
    """``medsynth synthesize --devices 2 --strategy ddp`` as on a GPU node (rank 1 is a second
    ``python -m medsynth``, each rank loads the checkpoint), with more processes than work items:
    one label volume, so rank 1 has nothing to make and ends cleanly (its placeholder item), and
    the volume and the nnU-Net export are those of one process (LUT model: every voxel is
    ``25 * label - 160`` HU). Spawned ranks that each make volumes: test_two_processes_*."""
    ckpt = lut_checkpoint
    inputs = write_labels(tmp_path / "labels", 1)
    tests = str(Path(__file__).parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([tests, *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    cmd = [sys.executable, "-m", "medsynth", "synthesize", "--checkpoint", str(ckpt), "--input", str(tmp_path / "labels"),
           "--output", str(tmp_path / "out"), "--nnunet", "Dataset702_Two", "--no_progress",
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("1 synthetic CT volume(s)") == 1  # rank 0 reports
    for path in inputs:
        lab = np.asarray(nib.load(path).dataobj)
        for got in (
            tmp_path / "out" / path.name,
            tmp_path / "out" / "Dataset702_Two" / "imagesTr" / path.name.replace(".nii", "_0000.nii"),
        ):
            np.testing.assert_array_equal(np.asarray(nib.load(got).dataobj), 25 * lab.astype(np.int16) - 160)
    assert json.loads((tmp_path / "out" / "Dataset702_Two" / "dataset.json").read_text())["numTraining"] == 1


@pytest.fixture(scope="module")
def ddpm_checkpoint(tmp_path_factory) -> Path:
    """The tiny DDPM as a checkpoint (weights only)."""
    import lightning as L

    path = tmp_path_factory.mktemp("ddpm") / "ddpm.ckpt"
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(tiny_ddpm())
    trainer.save_checkpoint(path, weights_only=True)
    return path


def test_evaluate_report_of_two_processes_equals_one(ddpm_checkpoint, tmp_path):
    """5 test slices on 2 processes (3 + 2, one padded duplicate dropped): the report's rows equal
    one process's (the metrics are exact under DDP: tests/test_callbacks.py) up to float32
    rounding of batches of another shape: in one idle run SSIM was 0.00798186 on one process and
    0.00798190 on two (4.4e-8 apart; the report prints 3 decimals), PSNR equal. Numbers are
    compared to 1e-6 absolute (Dice, SSIM) or 1e-4 relative, names exactly."""
    cfg, _ = _data_config(tmp_path / "data.yaml")
    common = dict(
        data_config=cfg, metrics=("psnr", "ssim", "hu"), figure_slices=0, reference=None, num_steps=2, seed=1
    )
    evaluate_checkpoints([ddpm_checkpoint], tmp_path / "one", accelerator="cpu", **common)
    paths = evaluate_checkpoints([ddpm_checkpoint], tmp_path / "two", **SPAWN, **common)
    assert tmp_path / "two" / "report.csv" in paths
    one, two = (list(csv.DictReader((tmp_path / d / "report.csv").open())) for d in ("one", "two"))
    assert len(one) == len(two) == 1 and one[0].keys() == two[0].keys()
    for key, a in one[0].items():
        b = two[0][key]
        if key == "Method" or a == "":
            assert b == a, key
        else:
            assert float(b) == pytest.approx(float(a), rel=1e-4, abs=1e-6), key


def test_evaluate_writes_the_report_on_rank_zero_only(ddpm_checkpoint, tmp_path, monkeypatch):
    """Every process has the same rows; one that is not global rank 0 writes nothing."""
    from lightning.pytorch.utilities import rank_zero_only

    cfg, _ = _data_config(tmp_path / "data.yaml")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    out = tmp_path / "report"
    assert (
        evaluate_checkpoints(
            [ddpm_checkpoint], out, data_config=cfg, metrics=("psnr",), num_steps=2, accelerator="cpu"
        )
        == []
    )
    assert not list(out.glob("report.*"))


def test_label_workers_write_what_one_process_writes_and_resume(tmp_path):
    """Two worker processes label 3 CTs into the files one process writes; a rerun over a folder
    with one case done segments the other two only."""
    write_cts(tmp_path / "ct", 3)
    assert label_folder(
        tmp_path / "ct", tmp_path / "one", segment_fn=fake_totalsegmentator, progress=False
    ) == ["ct0", "ct1", "ct2"]
    (tmp_path / "two" / "labelsTr").mkdir(parents=True)
    (tmp_path / "two" / "imagesTr").mkdir()
    for sub, name in (("labelsTr", "ct1.nii.gz"), ("imagesTr", "ct1_0000.nii.gz")):
        (tmp_path / "two" / sub / name).write_bytes((tmp_path / "one" / sub / name).read_bytes())
    done = label_folder(
        tmp_path / "ct", tmp_path / "two", segment_fn=fake_totalsegmentator, progress=False, workers=2
    )
    assert sorted(done) == ["ct0", "ct2"]
    for sub in ("labelsTr", "imagesTr"):
        assert_same_volumes(tmp_path / "two" / sub, tmp_path / "one" / sub)
    assert json.loads((tmp_path / "two" / "dataset.json").read_text())["numTraining"] == 3
    assert not list((tmp_path / "two").rglob(".*"))
    with pytest.raises(ValueError, match="--workers must be a positive int, got 0"):
        label_folder(tmp_path / "ct", tmp_path / "two", segment_fn=fake_totalsegmentator, workers=0)


def test_synthesis_scaling_benchmark_smoke(tmp_path):
    """benchmarks/synthesis_scaling.py at tiny size on 1 CPU process: one row over all 2 x 2
    slices (timings are not checked: the machine is shared). Several processes run the same
    ``synthesize_files(devices=N, strategy='ddp_spawn')`` call that
    test_two_processes_write_the_bytes_of_one checks; spawning them here twice (run and rerun)
    would add ~25 s to the suite."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import synthesis_scaling

    rows = synthesis_scaling.main(["--smoke", "--processes", "1", "--json", str(tmp_path / "rows.json")])
    assert [r["processes"] for r in rows] == [1] and all(r["slices"] == 4 for r in rows)
    assert all(r["seconds"] > 0 and r["startup_seconds"] > 0 for r in rows)
    assert json.loads((tmp_path / "rows.json").read_text()) == rows
