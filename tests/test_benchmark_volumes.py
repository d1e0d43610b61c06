"""benchmarks/volumes.py at tiny size: the phantom and the real-CT fixture's slab and whole volume.

The models are untrained (their outputs are a function of the mask and the noise), so the check
is on the plumbing and on what the modes must show whatever the weights: shared noise makes the
texture stick (its residual correlation far above the independent slices'), a row of the table
equals the same statistic computed here directly from generate_volumes and medsynth.metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import TINY_SIZE, tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from volumes import ORGANS, dataset_volumes, main  # noqa: E402

from benchmarks.protocol import save_segmenter  # noqa: E402
from medsynth.metrics import adjacent_difference_ratio  # noqa: E402
from medsynth.models import MaskGuidedDDPM, OrganSegmenter  # noqa: E402
from medsynth.synthesis import generate_volumes, load_model  # noqa: E402


def _save(model, path: Path) -> Path:
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path, weights_only=True)
    return path


def _checkpoints(tmp_path: Path, **kwargs) -> tuple[Path, Path]:
    torch.manual_seed(0)
    m2 = tiny_model(MaskGuidedDDPM, **kwargs)
    m25 = tiny_model(MaskGuidedDDPM, context_slices=1, context_previous=1, **kwargs)
    return _save(m2, tmp_path / "m2.ckpt"), _save(m25, tmp_path / "m25.ckpt")


def test_phantom_table_figure_and_a_row_recomputed(tmp_path: Path) -> None:
    c2, c25 = _checkpoints(tmp_path)
    data = tmp_path / "data.yaml"
    data.write_text(
        "data:\n  class_path: medsynth.data.PhantomDataModule\n  init_args: {num_train_cases: 1, "
        f"num_val_cases: 0, num_test_cases: 1, depth: 24, image_size: {TINY_SIZE}, seed: 0}}\n"
    )
    out = tmp_path / "out"
    args = ["--checkpoint-2d", str(c2), "--checkpoint-25d", str(c25), "--data-config", str(data)]
    args += ["--seeds", "0", "1", "--num-steps", "2", "--threads", "1", "--output", str(out)]
    assert main(args) == 0
    table = (out / "volumes.md").read_text()
    for row in (
        "| independent |",
        "| coherent |",
        "| 2.5D |",
        "| real |",
        "| target |",
        "- ratio: ",
        "- drift: ",
    ):
        assert row in table
    assert (out / "volumes.png").read_bytes()[:4] == b"\x89PNG"
    res = json.loads((out / "volumes.json").read_text())
    modes = res["modes"]
    assert len(modes["2.5D"]["seeds"]) == 2 and "not measured" in table  # no --segmenter: no Dice
    # shared noise: the same texture in every slice, far more correlated than independent slices
    corr = {m: modes[m]["summary"]["syn4/mean"]["mean"] for m in modes}
    assert corr["coherent"] > corr["independent"] + 0.3, corr
    # the independent row's seed-1 ratio, recomputed from the library directly
    from medsynth.evaluate import build_datamodule

    dm = build_datamodule(data, {"image_size": TINY_SIZE})
    dm.setup("test")
    vols = dataset_volumes(dm.datasets["test"])
    model = load_model(c2)
    made = generate_volumes(
        model, [torch.from_numpy(v.mask) for v in vols], [v.name for v in vols], seed=1, num_steps=2
    )
    organs = res["organs"]
    ratios = [
        adjacent_difference_ratio(m.numpy(), v.image, v.mask, organs.values()) for m, v in zip(made, vols)
    ]
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = np.nanmean([np.nanmean([r[c] for r in ratios]) for c in organs.values()])
    assert modes["independent"]["seeds"][1]["ratio/mean"] == pytest.approx(want, rel=1e-9)
    assert set(organs) <= set(ORGANS)
    # figure.pt keeps what volumes.png shows: the real volume and each mode's first-seed volume
    shown = torch.load(out / "figure.pt", weights_only=True)
    assert list(shown) == ["real", "independent", "coherent", "2.5D"]
    np.testing.assert_allclose(shown["real"].float().numpy(), vols[0].image, atol=1e-3)


def test_refuses_swapped_or_mismatched_checkpoints(tmp_path: Path) -> None:
    c2, c25 = _checkpoints(tmp_path)
    with pytest.raises(ValueError, match="--checkpoint-2d .* is a 2.5D model"):
        main(["--checkpoint-2d", str(c25), "--checkpoint-25d", str(c25)])
    with pytest.raises(ValueError, match="--checkpoint-25d .* is a 2D model"):
        main(["--checkpoint-2d", str(c2), "--checkpoint-25d", str(c2)])
    other = _save(tiny_model(MaskGuidedDDPM, label_set="totalseg"), tmp_path / "ts.ckpt")
    with pytest.raises(ValueError, match="differ in label set"):
        main(["--checkpoint-2d", str(other), "--checkpoint-25d", str(c25)])


def test_real_ct_slab_and_whole_volume(tmp_path: Path) -> None:
    """The real-CT fixture as an nnU-Net dataset split along z: the held-out slab (slices 20-33) is
    scored, and the whole 80-slice volume is made for drift (--whole-volume), in the two modes
    --modes names."""
    from medsynth.data.nnunet import realct_files
    from medsynth.io import DatasetPair, write_nnunet_dataset

    ct, labels, names = realct_files()
    root = write_nnunet_dataset([DatasetPair(ct, labels, "realct")], tmp_path / "Dataset700_RealCT", names)
    data = tmp_path / "realct.yaml"
    data.write_text(
        "data:\n  class_path: medsynth.data.NNUNetDataModule\n  init_args: {root: " + str(root) + ", "
        f"label_set: totalseg, remap: by_name, image_size: {TINY_SIZE}, num_workers: 0, test_slab: [20, 34], "
        f"slab_gap: 4, progress: false, cache_dir: {tmp_path / 'cache'}}}\n"
    )
    c2, c25 = _checkpoints(tmp_path, label_set="totalseg")
    torch.manual_seed(0)
    segmenter = OrganSegmenter(image_size=TINY_SIZE, model_channels=4)  # AMOS labels, as realct.py's
    save_segmenter(segmenter, tmp_path / "segmenter.pt")
    out = tmp_path / "out"
    args = [
        "--checkpoint-2d",
        str(c2),
        "--checkpoint-25d",
        str(c25),
        "--data-config",
        str(data),
        "--whole-volume",
        "--segmenter",
        str(tmp_path / "segmenter.pt"),
    ]
    args += ["--seeds", "0", "1", "--num-steps", "1", "--threads", "1", "--output", str(out)]
    with pytest.raises(SystemExit):  # the targets compare 2.5D with independent
        main([*args, "--modes", "coherent", "2.5D"])
    assert not out.exists()
    assert main([*args, "--modes", "2.5D", "independent"]) == 0
    res = json.loads((out / "volumes.json").read_text())
    assert list(res["modes"]) == ["independent", "2.5D"]  # the table's order, coherent left out
    assert res["held_out"] == ["realct"] and set(res["organs"]) == set(ORGANS)
    row = res["modes"]["2.5D"]["seeds"][0]
    assert np.isfinite(row["whole/drift/max"]) and np.isfinite(row["drift/max"])
    assert "drift whole volume" in (out / "volumes.md").read_text()
    # Dice of the AMOS segmenter against the TotalSegmentator masks mapped by name: the real row's
    # liver recomputed here from the held-out slab
    from medsynth.evaluate import build_datamodule
    from medsynth.labels import get_label_set
    from medsynth.metrics import dice_per_class

    dm = build_datamodule(data, {"image_size": TINY_SIZE})
    dm.setup("test")
    vol = dataset_volumes(dm.datasets["test"])[0]
    ts, amos = get_label_set("totalseg"), get_label_set("amos")
    lut = torch.from_numpy(ts.lookup_to(amos)).long()
    pred = segmenter.segment(torch.from_numpy(vol.image)[:, None].float())
    want = dice_per_class(pred, lut[torch.from_numpy(vol.mask).long()], amos.num_classes)
    assert res["real"]["dice/liver"] == pytest.approx(float(want[amos.by_name("liver").index]), rel=1e-6)


def test_context_check_runs(capsys) -> None:
    """benchmarks/context_check.py at 2 steps: a row per seed with both errors (the measurement
    itself, 300 steps, is in docs/synthesis.md)."""
    from context_check import main as check

    assert check(["--steps", "2", "--seeds", "0", "--method", "SDM"]) == 0
    out = capsys.readouterr().out
    assert "| seed | 2D | 2.5D | 2.5D / 2D |" in out and out.strip().splitlines()[-1].startswith("| 0 | ")
