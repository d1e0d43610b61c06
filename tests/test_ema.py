"""medsynth.nn.ema.EMA on AveragedModel: checkpoints of the earlier layout still load (committed
fixture), and Lightning's eval-mode notice is quieted for the EMA copy and for nothing else."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, tiny_phantom, tiny_trainer

from medsynth.models import MaskGuidedDDPM
from medsynth.models.base import averaged_module_names
from medsynth.nn.ema import ema_decay_at
from medsynth.synthesis import load_model

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "ema_legacy"
VALUES = json.loads((FIXTURE / "values.json").read_text())
NOTICE = "module(s) in eval mode at the start of training"


def _writer():
    """tests/fixtures/ema_legacy/write_fixture.py, which recorded VALUES (its summaries are reused)."""
    spec = importlib.util.spec_from_file_location("write_fixture", FIXTURE / "write_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(VALUES))
def test_checkpoint_of_the_earlier_layout_loads(name: str) -> None:
    """A checkpoint written with the EMA copy stored as ``ema.shadow.*`` and ``ema.num_updates``
    (the code of 93e3450) loads through ``load_model``: the averaged weights are the file's, the
    counter is 3 and the next decay the warm-up's 4th, and a seeded ``generate()`` gives the values
    recorded when the file was written.

    Tolerances: with one thread the outputs are bitwise the recorded ones; with two threads
    (another reduction order in the float32 convs) they differ by up to 6.0e-8 per pixel, 5.8e-11 in
    the mean and 1.7e-7 in the sum of squares (about 300). The bounds are 15x those.
    """
    writer = _writer()
    recorded = VALUES[name]
    legacy = torch.load(FIXTURE / f"{name}.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert "ema.num_updates" in legacy and not any(k.startswith("ema.module.") for k in legacy)
    model = load_model(FIXTURE / f"{name}.ckpt")
    shadow = model.ema.shadow.state_dict()
    old = {k[len("ema.shadow.") :]: v for k, v in legacy.items() if k.startswith("ema.shadow.")}
    assert shadow.keys() == old.keys() == recorded["shadow"].keys()
    for key, value in shadow.items():
        assert torch.equal(value, old[key]), key
    sums = writer.shadow_values(model.ema.shadow)
    for key, value in recorded["shadow"].items():
        assert sums[key] == pytest.approx(value, rel=1e-12), key
    assert int(model.ema.num_updates) == recorded["num_updates"] == int(legacy["ema.num_updates"]) == 3
    assert model.ema.current_decay() == ema_decay_at(0.9, 4, True) == pytest.approx(5 / 14)
    out = writer.generate_values(model)
    assert out["mean"] == pytest.approx(recorded["generate"]["mean"], abs=1e-9)
    assert out["sumsq"] == pytest.approx(recorded["generate"]["sumsq"], rel=1e-8)
    torch.testing.assert_close(
        torch.tensor(out["row"]), torch.tensor(recorded["generate"]["row"]), rtol=0, atol=1e-6
    )
    # The next update uses the 4th decay of the warm-up, in float64 by hand.
    live = model.generator if hasattr(model, "generator") else model.net
    before = [p.detach().double().clone() for p in model.ema.shadow.parameters()]
    model.ema.update(live)
    d = 5 / 14
    for b, p, s in zip(before, live.parameters(), model.ema.shadow.parameters(), strict=True):
        torch.testing.assert_close(s.double(), d * b + (1 - d) * p.detach().double(), rtol=0, atol=1e-6)
    # Saved again, the file has the new layout and round-trips.
    state = model.state_dict()
    assert "ema.n_averaged" in state and int(state["ema.n_averaged"]) == 5
    assert not any(k.startswith("ema.shadow.") or k == "ema.num_updates" for k in state)
    again = type(model)(**model.hparams)
    again.load_state_dict(state)
    for x, y in zip(
        again.ema.shadow.state_dict().values(), model.ema.shadow.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y)


def _fit_notices(model) -> tuple[list[str], list]:
    """Fit one step and return Lightning's eval-mode notices, and whether the filters came back."""
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inside = list(warnings.filters)
        tiny_trainer(max_steps=1, limit_val_batches=0, num_sanity_val_steps=0).fit(
            model, datamodule=tiny_phantom()
        )
        assert warnings.filters == inside  # the hook's filter is gone once training started
    assert warnings.filters == before
    return [str(w.message) for w in caught if NOTICE in str(w.message)]


def test_eval_mode_notice_quiet_for_the_ema_copy_only() -> None:
    """The EMA copy alone in eval mode: no notice. One more module left in eval mode by mistake:
    Lightning's notice as it writes it, counting the EMA modules and that one."""
    model = tiny_model(MaskGuidedDDPM)
    averaged = averaged_module_names(model)
    assert "ema" in averaged and "ema.module" in averaged and not any(n.startswith("net") for n in averaged)
    assert {n for n, m in model.named_modules() if not m.training} == averaged
    assert _fit_notices(model) == []

    model = tiny_model(MaskGuidedDDPM)
    model.net.time_embedding.eval()  # a user's mistake: part of the trained network frozen in eval
    extra = len(list(model.net.time_embedding.modules()))
    notices = _fit_notices(model)
    assert notices == [
        f"Found {len(averaged) + extra} module(s) in eval mode at the start of training. This may lead to "
        "unexpected behavior during training. If this is intentional, you can ignore this warning."
    ]
