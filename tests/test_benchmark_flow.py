"""benchmarks/flow.py at tiny size: two 1-step checkpoints of one method (a flow and a DDPM), 4
slices, 2 seeds, short chains; the rows, the scores against a direct computation, the "within 2 %"
verdicts against their definition, and the errors it reports before sampling."""

import json
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import tiny_phantom, tiny_trainer

from benchmarks.protocol import eval_slices, phantom, save_segmenter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from flow import main  # noqa: E402
from realct import ensure_dataset  # noqa: E402

from medsynth.data.nnunet import REALCT_DIR, REALCT_TEST_SLAB  # noqa: E402
from medsynth.metrics import psnr  # noqa: E402
from medsynth.models import ConditionalDDPM, MaskGuidedDDPM, OrganSegmenter  # noqa: E402
from medsynth.random import slice_generators  # noqa: E402
from medsynth.synthesis import load_model  # noqa: E402

TINY = dict(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=())


def checkpoint(path: Path, cls: type = ConditionalDDPM, label_set: str = "amos", **kwargs) -> Path:
    """A medsynth checkpoint of a tiny 32x32 model after one training step, its weights then moved by
    seeded noise (std 0.05): the zero-initialised output layers would otherwise make the velocity
    nearly constant, and every sampler and step count give the same slices."""
    L.seed_everything(0, verbose=False)
    model = cls(32, **TINY, label_set=label_set, **kwargs)
    trainer = tiny_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_phantom(depth=2, label_set=label_set))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in [*model.parameters(), *model.ema.shadow.parameters()]:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("flowbench")
    save_segmenter(OrganSegmenter(image_size=32, model_channels=4), d / "segmenter.pt")
    return {
        "flow": checkpoint(d / "flow.ckpt", process="rflow"),
        "ddpm": checkpoint(d / "ddpm.ckpt"),
        "other": checkpoint(d / "other.ckpt", MaskGuidedDDPM),
        "segmenter": d / "segmenter.pt",
    }


@pytest.fixture
def keep_threads():
    """main(--threads 1) sets torch's global thread count: restore it afterwards."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def args(files: dict[str, Path], out: Path, flow: str = "flow", ddpm: str = "ddpm") -> list[str]:
    return [
        *("--flow", str(files[flow]), "--ddpm", str(files[ddpm]), "--segmenter", str(files["segmenter"])),
        *("--nfe", "1", "3", "--seeds", "2", "--num-eval", "4", "--threads", "1"),
        *("--reference", "ddpm:3", "--ddpm-settings", "ddpm:3", "ddpm:2", "--output", str(out)),
    ]


def test_rows_scores_and_verdicts(files, tmp_path, capsys, keep_threads) -> None:
    out = tmp_path / "out"
    assert main(args(files, out)) == 0
    res = json.loads((out / "flow.json").read_text())
    got = [(r["model"], r["sampler"], r["nfe"]) for r in res["rows"]]
    # Heun starts at 3 evaluations (one Heun step and the last Euler step); the DDPM reference first
    assert got == [
        ("ddpm", "ddpm", 3),
        ("ddpm", "ddpm", 3),
        ("ddpm", "ddpm", 2),
        ("flow", "euler", 1),
        ("flow", "euler", 3),
        ("flow", "heun", 3),
    ]
    assert res["method"] == "ConditionalDDPM" and res["reference"] == "ddpm:3"
    # the reference itself again: the same slices (seeded), so within 2 % ("yes" is reachable)
    assert [r["within_2pct"] for r in res["rows"]][:2] == ["reference", "yes"]
    psnrs = [r["metrics"]["psnr"]["mean"] for r in res["rows"][3:]]
    assert len(set(psnrs)) == 3, psnrs  # Euler 1, Euler 3 and Heun 3 sample different slices
    ref = res["rows"][0]["metrics"]
    for r in res["rows"][1:]:  # the verdict against its definition, from the stored means
        m = r["metrics"]
        d, d0 = m["dice/mean"]["mean"], ref["dice/mean"]["mean"]
        e, e0 = m["err/mean"]["mean"], ref["err/mean"]["mean"]
        f, f0 = m["frechet_seg"]["mean"], ref["frechet_seg"]["mean"]
        ok = abs(d - d0) <= 0.02 * d0 and e <= 1.02 * e0 + 0.002 and f <= 1.02 * f0
        assert r["within_2pct"] == ("yes" if ok else "no"), r
        assert len(r["per_seed"]) == 2 and r["seconds_per_slice"] > 0
    # The Heun row's seed-1 PSNR, recomputed: the flow samples the slices with per-slice generators
    model = load_model(files["flow"])
    batch = eval_slices(phantom(image_size=32), 4)
    synth = model.generate(
        batch["mask"], sampler="heun", num_steps=3, generator=slice_generators(batch["keys"], 1, "cpu")
    )
    assert res["rows"][5]["per_seed"][1]["psnr"] == pytest.approx(
        float(psnr(synth, batch["image"])), rel=1e-5
    )
    text = (out / "flow.md").read_text()
    assert "| flow | heun | 3 |" in text and "Fewest flow evaluations within 2%" in text
    assert not list(out.glob("*.tmp"))  # written atomically
    # an --output that holds results is refused, the files left as they were
    before = (out / "flow.json").read_bytes()
    assert main(args(files, out)) == 2
    assert (out / "flow.json").read_bytes() == before
    # --reuse-rows: Heun sampled anew at 3 and 5, the DDPM rows and Euler's taken from the first run;
    # Heun 3 sampled again equals its first sampling (seeded), the verdicts follow the reference
    again = tmp_path / "again"
    rerun = [
        *args(files, again),
        "--samplers",
        "heun",
        "--nfe",
        "3",
        "5",
        "--reuse-rows",
        str(out / "flow.json"),
    ]
    assert main(rerun) == 0
    res2 = json.loads((again / "flow.json").read_text())
    assert [(r["model"], r["sampler"], r["nfe"]) for r in res2["rows"]] == [
        *got[:5],
        ("flow", "heun", 3),
        ("flow", "heun", 5),
    ]
    for a, b in zip(res["rows"][:6], res2["rows"][:6]):
        assert a["per_seed"] == b["per_seed"] and a["within_2pct"] == b["within_2pct"]
    assert res2["reused_from"] == str(out / "flow.json") and "reused" in (again / "flow.md").read_text()
    # --reflow with no --samplers: every flow row reused, only the reflow rows sampled. The flow
    # itself given as the reflow model must score exactly as its own Euler rows of the first run.
    refl = tmp_path / "reflow"
    assert main([*args(files, refl), "--samplers", "--reflow", str(files["flow"]), "--reflow-nfe", "1", "3",
                 "--reuse-rows", str(out / "flow.json")]) == 0  # fmt: skip
    res3 = json.loads((refl / "flow.json").read_text())
    assert [(r["model"], r["sampler"], r["nfe"]) for r in res3["rows"]] == [
        *got,
        ("reflow", "euler", 1),
        ("reflow", "euler", 3),
    ]
    for flow_row, reflow_row in zip(res["rows"][3:5], res3["rows"][6:]):
        assert (
            reflow_row["per_seed"] == flow_row["per_seed"]
            and reflow_row["within_2pct"] == flow_row["within_2pct"]
        )
    text = (refl / "flow.md").read_text()
    assert "| reflow | euler | 1 |" in text and "Fewest reflow evaluations within 2%" in text
    assert main([*args(files, tmp_path / "bad"), "--reflow", str(files["ddpm"])]) == 2
    assert "--reflow" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # another comparison's rows are refused, naming the difference; nothing written
    other = tmp_path / "other"
    assert main([*args(files, other), "--seeds", "1", "--reuse-rows", str(out / "flow.json")]) == 2
    assert "seeds is [0, 1] there, [0] in this run" in capsys.readouterr().err
    assert not other.exists()


def test_wrong_pairs_fail_before_sampling(files, tmp_path, capsys, keep_threads) -> None:
    """A DDPM given as --flow, a flow as --ddpm, or two different methods: exit 2 naming the flag,
    nothing written."""
    for flow, ddpm, message in (
        ("ddpm", "ddpm", "--flow"),
        ("flow", "flow", "--ddpm"),
        ("flow", "other", "ConditionalDDPM, --ddpm a MaskGuidedDDPM"),
    ):
        out = tmp_path / f"{flow}-{ddpm}"
        assert main(args(files, out, flow, ddpm)) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    with pytest.raises(SystemExit):
        main(["--flow", str(tmp_path / "missing.ckpt"), "--segmenter", str(files["segmenter"])])
    assert "--flow" in capsys.readouterr().err


def test_real_ct_scores_the_held_out_slab_from_the_models_label_set(files, tmp_path, keep_threads) -> None:
    """--data realct: two TotalSegmentator-label models on the shipped case's held-out slab (every
    slice of it), scored with the AMOS segmenter and the HU errors; the reference chain over
    --reference-seeds. A flow row's PSNR recomputed from the model's own masks of the slab; a pair
    with different label sets is refused before sampling."""
    dataset = ensure_dataset(tmp_path / "Dataset700_RealCT", REALCT_DIR)
    flow = checkpoint(tmp_path / "flow_ts.ckpt", process="rflow", label_set="totalseg")
    ddpm = checkpoint(tmp_path / "ddpm_ts.ckpt", label_set="totalseg")
    out = tmp_path / "out"
    common = [
        *("--data", "realct", "--dataset", str(dataset), "--cache", str(tmp_path / "cache")),
        *("--segmenter", str(files["segmenter"]), "--nfe", "1", "--samplers", "euler", "--seeds", "2"),
        *("--reference", "ddpm:2", "--reference-seeds", "1", "--ddpm-settings", "--threads", "1"),
    ]
    assert main([*common, "--flow", str(flow), "--ddpm", str(ddpm), "--output", str(out)]) == 0
    res = json.loads((out / "flow.json").read_text())
    assert res["data"] == "realct" and res["num_eval"] == REALCT_TEST_SLAB[1] - REALCT_TEST_SLAB[0]
    assert [(r["model"], r["nfe"], len(r["per_seed"])) for r in res["rows"]] == [
        ("ddpm", 2, 1),
        ("flow", 1, 2),
    ]
    assert res["reference_seeds"] == [0] and res["seeds"] == [0, 1]
    for row in (res["real"], res["rows"][1]["metrics"]):
        assert {"hu/liver", "hu/abs_max", "hu/bone", "dice/right_kidney"} <= set(row)
    model = load_model(flow)
    from realct import datamodule  # the slab in the model's label set, as realct.py builds it

    dm = datamodule(dataset, "totalseg", tuple(model.window), tmp_path / "cache", image_size=32)
    dm.prepare_data()
    batch = eval_slices(dm, None)
    assert [k[1] for k in batch["keys"]] == list(range(*REALCT_TEST_SLAB))
    synth = model.generate(
        batch["mask"], sampler="euler", num_steps=1, generator=slice_generators(batch["keys"], 1, "cpu")
    )
    assert res["rows"][1]["per_seed"][1]["psnr"] == pytest.approx(
        float(psnr(synth, batch["image"])), rel=1e-5
    )
    assert "max abs HU err" in (out / "flow.md").read_text()
    bad = tmp_path / "bad"
    assert main([*common, "--flow", str(flow), "--ddpm", str(files["ddpm"]), "--output", str(bad)]) == 2
    assert not bad.exists()
