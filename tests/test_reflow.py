"""Reflow (Liu et al. 2023): the pairs are the flow's map of their recorded noise, the fine-tuning
loss is the velocity to the pair, the data module trains on pairs and validates on real slices,
``medsynth reflow`` + ``medsynth fit`` run end to end, and bad input is named before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_model, tiny_phantom, tiny_trainer

from medsynth.cli import lightning_cli
from medsynth.commands.reflow import main as reflow_main
from medsynth.data import ReflowDataModule
from medsynth.data.reflow import ReflowPairDataset, ReflowPairs, load_pairs, pair_noise, save_pairs
from medsynth.models import SDM, MaskGuidedDDPM
from medsynth.reflow import make_pairs

DATA = {
    "class_path": "medsynth.data.PhantomDataModule",
    "init_args": {
        "image_size": 32, "num_train_cases": 1, "num_val_cases": 1, "num_test_cases": 1,
        "depth": 3, "batch_size": 2, "seed": 0,
    },
}  # fmt: skip


def tiny_flow(**kwargs) -> MaskGuidedDDPM:
    """A tiny mask-guided rectified flow with every weight moved by seeded noise (the zero-initialised
    output conv would make the velocity constant, and every noise map to the same slice)."""
    torch.manual_seed(0)
    model = tiny_model(MaskGuidedDDPM, process="rflow", **kwargs)
    with torch.no_grad():
        for p in [*model.parameters(), *model.ema.shadow.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def save_checkpoint(model, path: Path) -> Path:
    trainer = tiny_trainer(max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def test_pairs_are_the_flows_map_of_their_recorded_noise(monkeypatch) -> None:
    """Every training slice (as stored) twice; the noise each ODE started from is the noise the
    pairs redraw from their seeds, and generate() from those seeds gives the stored samples (bit for
    bit in the same batch; alone, within float32 rounding of another batch size: 4e-5 seen)."""
    model, dm = tiny_flow(), tiny_phantom(depth=3)
    started = []
    solve = type(model.diffusion).solve

    def recording_solve(self, net, x1, *args, **kwargs):
        started.append(x1.clone())
        return solve(self, net, x1, *args, **kwargs)

    monkeypatch.setattr(type(model.diffusion), "solve", recording_solve)
    pairs = make_pairs(model, dm, copies=2, num_steps=3, batch_size=4)
    monkeypatch.undo()
    dm.setup("fit")
    train = dm.datasets["train"]
    assert len(pairs) == 2 * len(train) == 6
    assert sorted(set(pairs.keys)) == sorted(
        (str(train[i]["case_id"]), int(train[i]["slice_index"])) for i in range(3)
    )
    assert len(set(pairs.seeds.tolist())) == 6  # every copy its own noise
    torch.testing.assert_close(torch.cat(started), pairs.noise(range(6)), rtol=0, atol=0)
    g = [torch.Generator().manual_seed(int(s)) for s in pairs.seeds[:4]]  # the first batch, again
    again = model.generate(pairs.masks[:4], sampler="euler", num_steps=3, generator=g)
    torch.testing.assert_close(again, pairs.images[:4], rtol=0, atol=0)
    g = [torch.Generator().manual_seed(int(pairs.seeds[5]))]  # alone: batch-size rounding only
    again = model.generate(pairs.masks[5:], sampler="euler", num_steps=3, generator=g)
    torch.testing.assert_close(again, pairs.images[5:], rtol=0, atol=1e-4)
    # the other copy of a slice, from other noise, is another sample
    j = next(j for j in range(1, 6) if pairs.keys[j] == pairs.keys[0])
    assert (pairs.images[0] - pairs.images[j]).abs().max() > 1e-3


def test_coupled_loss_is_the_velocity_to_the_pair() -> None:
    """On a batch of pairs the flow loss is mean ||v(x_t, t) - (z - x)||^2 with x_t = (1 - t) x + t z
    and z the pair's own noise (computed here by hand, float64), not fresh noise."""
    model = tiny_flow()
    pairs = make_pairs(model, tiny_phantom(depth=3), copies=1, num_steps=2)
    batch = torch.utils.data.default_collate([ReflowPairDataset(pairs)[i] for i in range(3)])
    torch.manual_seed(7)
    with torch.no_grad():
        loss = model._losses(model.net, batch, training=False)["loss"]
    torch.manual_seed(7)
    t = model.diffusion.sample_timesteps(3, "cpu").double()[:, None, None, None]  # the same draw
    x, z = batch["image"].double() * 2 - 1, batch["noise"].double()
    xt = (1 - t) * x + t * z
    with torch.no_grad():
        v = model.net(xt.float(), (t.flatten() * 1000).float(), **model.model_kwargs(batch["mask"])).double()
    want = ((v - (z - x)) ** 2).mean()
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    torch.manual_seed(7)
    fresh = {k: v for k, v in batch.items() if k != "noise"}
    with torch.no_grad():
        other = model._losses(model.net, fresh, training=False)["loss"]
    assert abs(float(other) - float(want)) > 1e-3 * float(want)  # without the pair's noise: another loss


def test_pairs_need_a_flow_and_a_ddpm_refuses_them() -> None:
    ddpm = tiny_model(MaskGuidedDDPM)
    with pytest.raises(ValueError, match="needs a rectified flow.*process 'ddpm'"):
        make_pairs(ddpm, tiny_phantom(), copies=1)
    with pytest.raises(ValueError, match="classifier-free guided"):
        make_pairs(tiny_model(SDM, process="rflow"), tiny_phantom(), copies=1)
    with pytest.raises(ValueError, match="copies must be a positive int"):
        make_pairs(tiny_flow(), tiny_phantom(), copies=0)
    pairs = make_pairs(tiny_flow(), tiny_phantom(depth=2), copies=1, num_steps=1)
    batch = torch.utils.data.default_collate([ReflowPairDataset(pairs)[i] for i in range(2)])
    with pytest.raises(ValueError, match="only a rectified flow trains on.*process 'ddpm'"):
        ddpm._losses(ddpm.net, batch, training=True)
    with pytest.raises(ValueError, match="organ_dropout must be 0"):
        flow = tiny_flow(organ_dropout=0.2)
        flow._losses(flow.net, batch, training=True)


def test_data_module_trains_on_pairs_and_validates_on_real_slices(tmp_path) -> None:
    model = tiny_flow()
    pairs = make_pairs(model, tiny_phantom(depth=3), copies=2, num_steps=2)
    pairs.meta["data"] = [DATA]
    path = save_pairs(pairs, tmp_path / "pairs.pt")
    back = load_pairs(path)
    for name in ("images", "masks", "seeds"):
        torch.testing.assert_close(getattr(back, name), getattr(pairs, name), rtol=0, atol=0)
    assert back.keys == pairs.keys and back.meta == pairs.meta
    dm = ReflowDataModule(path, image_size=32, batch_size=4)
    assert dm.window == (40.0, 400.0) and dm.label_set.name == "amos" and dm.context is None
    dm.setup("fit")
    seen = torch.cat([b["image"] for b in dm.train_dataloader()])
    assert seen.shape == (6, 1, 32, 32)
    item = ReflowPairDataset(back)[4]
    torch.testing.assert_close(
        item["noise"], pair_noise([int(pairs.seeds[4])], (1, 32, 32))[0], rtol=0, atol=0
    )
    real = tiny_phantom(depth=3)
    real.setup("fit")
    got, want = next(iter(dm.val_dataloader())), next(iter(real.val_dataloader()))
    torch.testing.assert_close(got["image"], want["image"], rtol=0, atol=0)  # real slices, not pairs
    assert "noise" not in got


def test_data_module_names_a_bad_pairs_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.pt.*medsynth reflow"):
        ReflowDataModule(tmp_path / "missing.pt", image_size=32)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pt: not a readable reflow pairs file"):
        ReflowDataModule(tmp_path / "junk.pt", image_size=32)
    torch.save({"images": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: not a reflow pairs file"):
        ReflowDataModule(tmp_path / "other.pt", image_size=32)
    blank = ReflowPairs(
        torch.zeros(2, 1, 32, 32), torch.zeros(2, 32, 32, dtype=torch.long), torch.arange(2), [("c", 0), ("c", 1)],
        meta={"data": [DATA], "label_set": "totalseg", "image_size": 32},
    )  # fmt: skip
    save_pairs(blank, tmp_path / "ts.pt")
    with pytest.raises(ValueError, match="image_size 64 is not the pairs' \\(32"):
        ReflowDataModule(tmp_path / "ts.pt", image_size=64)
    with pytest.raises(ValueError, match="label set 'amos', the pairs .* 'totalseg'"):
        ReflowDataModule(tmp_path / "ts.pt", image_size=32)


def test_reflow_command_then_fit_on_the_pairs(tmp_path, capsys, monkeypatch) -> None:
    """``medsynth reflow`` writes the pairs (and refuses to overwrite them, or to start from a DDPM);
    ``medsynth fit`` with ReflowDataModule fine-tunes the flow from its checkpoint for 2 steps."""
    monkeypatch.chdir(tmp_path)  # the CLI's fit writes its config.yaml to the working folder
    flow = save_checkpoint(tiny_flow(), tmp_path / "flow.ckpt")
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"data": DATA}))
    pairs = tmp_path / "pairs.pt"
    argv = ["--checkpoint", str(flow), "--data_config", str(config), "--output", str(pairs)]
    assert reflow_main([*argv, "--copies", "2", "--num_steps", "2", "--device", "cpu"]) == 0
    made = load_pairs(pairs)
    assert len(made) == 6 and made.meta["data"] == [DATA] and made.meta["num_steps"] == 2
    before = pairs.read_bytes()
    assert reflow_main([*argv, "--device", "cpu"]) == 2
    assert "--output" in capsys.readouterr().err and pairs.read_bytes() == before
    ddpm = save_checkpoint(tiny_model(MaskGuidedDDPM), tmp_path / "ddpm.ckpt")
    assert reflow_main(["--checkpoint", str(ddpm), *argv[2:4], "--output", str(tmp_path / "x.pt")]) == 2
    assert "process 'ddpm'" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    assert reflow_main([*argv[:4], "--output", str(tmp_path / "y.pt"), "--copies", "0"]) == 2
    assert "--copies must be a positive int" in capsys.readouterr().err

    from conftest import TINY

    cli = lightning_cli(
        [
            "--model=medsynth.models.MaskGuidedDDPM",
            "--model.init_args.process=rflow",
            *(f"--model.init_args.{k}={json.dumps(v)}" for k, v in TINY["MaskGuidedDDPM"]["kwargs"].items()),
            f"--model.init_args.init_from={flow}",
            "--model.init_args.timestep_sampling=uniform",
            "--data=medsynth.data.ReflowDataModule",
            f"--data.init_args.pairs={pairs}",
            "--data.init_args.image_size=32",
            "--data.init_args.batch_size=3",
            "--trainer.max_steps=2",
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false",
        ],  # fmt: skip
        run=False,
    )
    fresh = {k: v.clone() for k, v in cli.model.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 2
    start, now = torch.load(flow, weights_only=False)["state_dict"], cli.model.state_dict()
    nets = [k for k in start if k.startswith("net.") and start[k].is_floating_point()]

    def dist(a, b):
        return sum(float((a[k] - b[k]).double().norm() ** 2) for k in nets) ** 0.5

    # trained (moved), and from the flow's weights (init_from): 2 small steps leave them near the
    # flow, far from the weights the config built
    assert 0 < dist(now, start) < 0.1 * dist(fresh, start)
