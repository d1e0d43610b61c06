"""2.5D context: what each slice receives (data and generation), volumes made in order, bad input.

References are independent of the code under test: neighbour positions and contexts written out
by hand for hand-made volumes whose slices carry their own index as a label; the noise
augmentation against the q(x_s | x_0) formula on a float64 schedule built here; the order and
grouping of generation against the same volumes made one at a time.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import tiny_model, tiny_phantom, tiny_trainer

from medsynth.data import SliceDataset
from medsynth.data.augment import AugmentedSlices, SliceAugmentation
from medsynth.data.context import ContextSpec, SliceContext, neighbour_positions, volume_context
from medsynth.models import SDM, ConditionalDDPM, MaskGuidedDDPM
from medsynth.models.base import SynthesisModule
from medsynth.nn.context import ContextDenoiser
from medsynth.random import randn
from medsynth.synthesis import generate_volumes

S = 8  # slice side of the hand-made volumes


def _volume(indices, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Slices labelled (and painted) with their own axial index: ``(image [D,S,S], mask [D,S,S])``."""
    z = np.asarray(indices)
    mask = np.broadcast_to((z + offset)[:, None, None], (len(z), S, S)).astype(np.uint8)
    return (mask / 100.0).astype(np.float32), mask.copy()


def test_neighbour_positions_by_hand():
    # slices 0, 1, 2, 5, 6 (3 and 4 missing), given out of order
    idx = [5, 0, 2, 1, 6]
    pos = neighbour_positions(idx, (-2, -1, 1, 2))
    want = {  # index -> the indices of its neighbours at -2, -1, +1, +2 (None: missing)
        5: (None, None, 6, None),
        0: (None, None, 1, 2),
        2: (0, 1, None, None),
        1: (None, 0, 2, None),
        6: (None, 5, None, None),
    }
    for row, z in enumerate(idx):
        got = tuple(idx[p] if p >= 0 else None for p in pos[row])
        assert got == want[z], (z, got)
    with pytest.raises(ValueError, match="slice index 2 appears twice"):
        neighbour_positions([1, 2, 2], (1,))


def test_dataset_context_at_volume_ends_and_across_a_z_split_gap():
    """Case "a" in two pieces (slices 0-2 and 6-8, a z split's gap 3-5), case "b" slices 0-3.

    Every item's neighbour masks are the labels of slices z-2, z-1, z+1, z+2 of its own case where
    they exist in the dataset, else 0 and flagged; the previous image is slice z-1's."""
    pieces = [(_volume(range(0, 3)), "a", 0), (_volume(range(6, 9)), "a", 6), (_volume(range(4), 50), "b", 0)]
    ds = SliceDataset(
        [p[0][0] for p in pieces], [p[0][1] for p in pieces], [p[1] for p in pieces], [p[2] for p in pieces]
    ).with_context(ContextSpec(neighbours=2, previous=1))
    present = {"a": {0, 1, 2, 6, 7, 8}, "b": {0, 1, 2, 3}}
    seen = 0
    for i in range(len(ds)):
        item = ds[i]
        case, z = item["case_id"], int(item["slice_index"])
        shift = 50 if case == "b" else 0
        for j, off in enumerate((-2, -1, 1, 2)):
            exists = z + off in present[case]
            assert bool(item["context_mask_valid"][j]) == exists, (case, z, off)
            want = z + off + shift if exists else 0
            assert torch.equal(item["context_mask"][j], torch.full((S, S), want)), (case, z, off)
        exists = z - 1 in present[case]
        assert bool(item["previous_valid"][0]) == exists
        want = (z - 1 + shift) / 100.0 if exists else 0.0
        torch.testing.assert_close(item["previous_image"][0], torch.full((S, S), want), rtol=0, atol=1e-6)
        seen += 1
    assert seen == 10
    # the ends and the gap, spelled out: slice a/2 has no +1, a/6 no -1, b/0 no -1 or -2
    by_key = {(ds[i]["case_id"], int(ds[i]["slice_index"])): ds[i] for i in range(len(ds))}
    assert by_key["a", 2]["context_mask_valid"].tolist() == [True, True, False, False]
    assert by_key["a", 6]["context_mask_valid"].tolist() == [False, False, True, True]
    assert by_key["b", 0]["previous_valid"].tolist() == [False]
    with pytest.raises(ValueError, match="case a: slice index 1 appears twice"):
        SliceDataset([pieces[0][0][0]] * 2, [pieces[0][0][1]] * 2, ["a", "a"], [0, 1], ContextSpec(1, 0))


def test_data_module_batches_hold_the_context():
    dm = tiny_phantom(batch_size=3, depth=5, context_slices=1, context_previous=2)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["context_mask"].shape == (3, 2, 32, 32) and batch["context_mask"].dtype == torch.long
    assert batch["previous_image"].shape == (3, 2, 32, 32) and batch["previous_valid"].shape == (3, 2)
    # the validation loader is in order: slices 0, 1, 2 of the first case
    assert batch["slice_index"].tolist() == [0, 1, 2]
    assert batch["previous_valid"].tolist() == [[False, False], [True, False], [True, True]]
    ds = dm.datasets["val"]
    torch.testing.assert_close(batch["previous_image"][2, 1], torch.from_numpy(ds.images[0][0]).float())
    assert torch.equal(batch["context_mask"][1, 1], torch.from_numpy(ds.masks[0][2]).long())
    with pytest.raises(ValueError, match="context_slices/context_previous: neighbours must be an int >= 0"):
        tiny_phantom(context_slices=-1)


def test_augmentation_moves_the_context_with_the_slice():
    """Neighbours that equal the slice stay equal to it after any flip and affine: one draw for all."""
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[4:20, 6:14], mask[12:28, 18:30] = 5, 11
    image = (mask.float() / 16 + torch.linspace(0, 0.2, 32))[None]  # [1, 32, 32], not symmetric
    item = {
        "image": image,
        "mask": mask,
        "case_id": "c",
        "slice_index": torch.tensor(3),
        "context_mask": mask[None].repeat(2, 1, 1),
        "context_mask_valid": torch.tensor([True, False]),
        "previous_image": image.clone(),
        "previous_valid": torch.tensor([True]),
    }
    aug = AugmentedSlices([item], SliceAugmentation(rotate_deg=20, scale=0.2, translate=0.1), 32)
    for seed in range(3):
        torch.manual_seed(seed)
        a = aug[0]
        assert not torch.equal(a["mask"], mask)  # it moved
        for j in range(2):
            assert torch.equal(a["context_mask"][j], a["mask"])
        torch.testing.assert_close(a["previous_image"], a["image"], rtol=0, atol=0)
        assert a["context_mask"].dtype == torch.long and a["context_mask_valid"].tolist() == [True, False]


def test_context_denoiser_channels_and_missing_embedding():
    net = torch.nn.Identity()
    wrap = ContextDenoiser(net, num_classes=5, neighbours=2, previous=1, embed=3)
    assert ContextDenoiser.channels(2, 1, 3) == 2 * 2 * 3 + 2 * 1 + 1 == 15
    masks = torch.randint(0, 5, (2, 4, 6, 6))
    valid = torch.tensor([[True, False, True, True], [False, False, True, False]])
    prev, pvalid, level = torch.rand(2, 1, 6, 6), torch.tensor([[True], [False]]), torch.tensor([0.1, 0.0])
    feats = wrap.encode_context(masks, valid, prev, pvalid, level)
    assert feats.shape == (2, 15, 6, 6)
    table = wrap.embed.weight.detach()
    # neighbour 1 of item 0 is missing: its channels are the "missing" row (index 5), whatever the mask
    torch.testing.assert_close(feats[0, 3:6], table[5][:, None, None].expand(3, 6, 6))
    torch.testing.assert_close(feats[0, 0:3], table[masks[0, 0]].permute(2, 0, 1))
    torch.testing.assert_close(feats[:, 12:13], prev)
    assert feats[:, 13].unique().tolist() == [0.0, 1.0] and feats[1, 14].unique().tolist() == [0.0]


def _tiny(cls=ConditionalDDPM, **kw):
    return tiny_model(cls, context_slices=1, context_previous=1, **kw)


def test_generate_refuses_a_missing_or_wrong_context():
    model = _tiny()
    mask = torch.zeros(2, 32, 32, dtype=torch.long)
    with pytest.raises(
        ValueError, match=r"2.5D model: generate\(\) needs context=SliceContext.*slices ±1.*1 previous"
    ):
        model.generate(mask, num_steps=1)
    ctx = volume_context(
        torch.zeros(2, 32, 32, dtype=torch.long), [0, 1], model.context_spec, images=torch.zeros(2, 32, 32)
    )
    assert model.generate(mask, num_steps=1, context=ctx).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"context.masks must have shape \[1, 2, 32, 32\]"):
        model.generate(mask[:1], num_steps=1, context=ctx)
    with pytest.raises(ValueError, match="context.previous and context.previous_valid are missing"):
        model.generate(mask, num_steps=1, context=ctx.replace(previous=None))
    with pytest.raises(ValueError, match=r"context.masks values must lie in 0..16"):
        model.generate(mask, num_steps=1, context=ctx.replace(masks=ctx.masks + 40))
    with pytest.raises(ValueError, match="trained slice by slice"):
        tiny_model(ConditionalDDPM).generate(mask, num_steps=1, context=ctx)
    with pytest.raises(ValueError, match="context_noise must lie in"):
        _tiny(context_noise=1.5)
    batch = {"mask": mask, **ctx.replace(masks=ctx.masks + 40).to_batch()}  # training: checked on the host
    with pytest.raises(ValueError, match=r"batch\['context_mask'\] values must lie in 0..16, got 40..40"):
        model.on_before_batch_transfer(batch, 0)


def test_missing_context_has_no_influence_and_present_context_has():
    """With a fixed generator the validation loss is a function of the batch: changing what lies
    under a False flag changes nothing (missing stays missing), changing a present neighbour does."""
    torch.manual_seed(0)
    model = _tiny(MaskGuidedDDPM)
    with torch.no_grad():
        for p in model.ema.shadow.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    dm = tiny_phantom(batch_size=4, depth=4, context_slices=1, context_previous=1)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))  # slice 0 has no previous, slices 1-3 have one

    def loss(b):
        return float(
            model._losses(model.ema.shadow, b, training=False, generator=torch.Generator().manual_seed(0))[
                "loss"
            ]
        )

    ref = loss(batch)
    hidden = dict(
        batch, previous_image=batch["previous_image"].clone(), context_mask=batch["context_mask"].clone()
    )
    hidden["previous_image"][0] = 0.7  # under previous_valid False
    hidden["context_mask"][0, 0] = 5  # slice 0's -1 neighbour: missing
    assert loss(hidden) == ref
    changed = dict(batch, previous_image=batch["previous_image"].clone())
    changed["previous_image"][2] = 0.7  # a present previous slice
    assert loss(changed) != ref
    changed = dict(batch, context_mask=batch["context_mask"].clone())
    changed["context_mask"][2, 1] = 5  # a present neighbour
    assert loss(changed) != ref


def test_previous_slice_noise_augmentation_is_q_sample_at_the_level():
    """Generation: level round(context_sample_noise * T) = 30 of 100; the conditioning slice is
    sqrt(abar_29) x + sqrt(1 - abar_29) eps with abar from a float64 linear schedule built here and
    eps the per-slice generator's first draw. Training: levels drawn in 0..round(0.2 * T) = 20,
    level 0 leaves the slice as it is."""
    model = _tiny(timesteps=100, context_sample_noise=0.3, context_drop=0.0)
    prev = torch.rand(3, 1, 32, 32)
    ctx = SliceContext(previous=prev, previous_valid=torch.tensor([[True], [True], [False]]))
    ctx = ctx.replace(
        masks=torch.zeros(3, 2, 32, 32, dtype=torch.long), masks_valid=torch.zeros(3, 2, dtype=torch.bool)
    )
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
    out = model.context_model_kwargs(ctx, training=False, generator=gens())
    betas = np.linspace(1e-4 * 10, 0.02 * 10, 100)  # Ho et al.'s range scaled to T = 100
    abar = np.cumprod(1.0 - betas)[29]
    eps = randn((3, 1, 32, 32), gens(), "cpu")
    want = (math.sqrt(abar) * (2 * prev - 1) + math.sqrt(1 - abar) * eps) * torch.tensor([1.0, 1.0, 0.0])[
        :, None, None, None
    ]
    torch.testing.assert_close(out["previous_image"], want, rtol=0, atol=1e-5)
    torch.testing.assert_close(out["context_level"], torch.full((3,), 0.3))
    levels = set()
    for seed in range(20):
        out = model.context_model_kwargs(ctx, training=True, generator=torch.Generator().manual_seed(seed))
        lv = (out["context_level"] * 100).round().long()
        levels |= set(lv.tolist())
        clean = lv == 0
        torch.testing.assert_close(
            out["previous_image"][clean],
            (2 * prev - 1)[clean] * torch.tensor([1.0, 1.0, 0.0])[clean, None, None, None],
        )
    assert min(levels) == 0 and max(levels) == 20 and levels <= set(range(21))


@pytest.mark.parametrize("cls", [ConditionalDDPM, MaskGuidedDDPM, SDM], ids=lambda c: c.__name__)
def test_a_25d_model_trains_and_round_trips(cls, tmp_path):
    """fast_dev_run on the phantom with context and augmentation; a checkpoint reloads as 2.5D and
    makes the same volume; data with another context is refused before training."""
    torch.manual_seed(0)
    model = _tiny(cls, organ_dropout=0.3)
    dm = tiny_phantom(batch_size=2, depth=5, context_slices=1, context_previous=1, augment=True)
    trainer = tiny_trainer(fast_dev_run=1)
    trainer.fit(model, datamodule=dm)
    assert all(torch.isfinite(v) for v in trainer.callback_metrics.values())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = cls.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.context_spec == ContextSpec(1, 1)
    masks = torch.from_numpy(dm.datasets["val"].masks[0].astype(np.int64))
    opts = {"num_steps": 2} | ({"guidance_scale": 1.0} if cls is SDM else {})
    a = generate_volumes(model, [masks], ["v"], **opts)[0]
    b = generate_volumes(loaded, [masks], ["v"], **opts)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"context_slices=1, context_previous=1.*gives context_slices=2"):
        tiny_trainer(fast_dev_run=1).fit(
            _tiny(cls), datamodule=tiny_phantom(context_slices=2, context_previous=1)
        )


class ContextStub(SynthesisModule):
    """A 2.5D stand-in with per-pixel arithmetic only (no batched kernel, so no rounding that
    depends on the batch): 0.4 x previous slice + 0.01 x (label + mean neighbour label) + 0.05 x noise,
    and a record of every context it receives."""

    def __init__(self, image_size: int = S, neighbours: int = 1, previous: int = 1) -> None:
        super().__init__(image_size, 17)
        self.save_hyperparameters()
        self.context_spec = ContextSpec(neighbours, previous)
        self.w = torch.nn.Parameter(torch.zeros(1))  # something to save
        self.calls: list[tuple[torch.Tensor, SliceContext]] = []

    def _generate(self, mask, *, generator=None, context=None):
        self.calls.append((mask.clone(), context))
        noise = randn((mask.shape[0], 1, *mask.shape[1:]), generator, mask.device)
        out = 0.01 * mask[:, None].float() + 0.05 * noise
        if context.masks is not None:
            out = out + 0.01 * (context.masks.float() * context.masks_valid[:, :, None, None]).mean(
                1, keepdim=True
            )
        if context.previous is not None:
            out = out + 0.4 * context.previous[:, :1]
        return out


def _masks(depth: int, offset: int = 0) -> torch.Tensor:
    return torch.from_numpy(_volume(range(depth), offset)[1].astype(np.int64))


def test_generation_context_at_the_ends_and_the_previous_generated_slice():
    """Each slice receives the masks of z-1 and z+1 where they exist and the slice generated for
    z-1 (not a real one), in index order; the first slice receives none."""
    stub = ContextStub()
    out = generate_volumes(stub, [_masks(4)], ["v"], batch_size=8)[0]
    assert len(stub.calls) == 4  # one step per slice: slice z needs slice z-1
    for z, (mask, ctx) in enumerate(stub.calls):
        assert int(mask[0, 0, 0]) == z
        assert ctx.masks_valid.tolist() == [[z > 0, z < 3]]
        assert ctx.masks[0, :, 0, 0].tolist() == [z - 1 if z > 0 else 0, z + 1 if z < 3 else 0]
        assert ctx.previous_valid.tolist() == [[z > 0]]
        want = out[z - 1].clamp(0, 1) if z > 0 else torch.zeros(S, S)
        torch.testing.assert_close(ctx.previous[0, 0], want, rtol=0, atol=0)


def test_volumes_batched_in_any_grouping_are_identical():
    """The same three volumes made together, one by one, in another order and batch size: the
    same arrays, bit for bit (each slice's noise is its own; steps never mix slices of one volume)."""
    vols = {"a": _masks(5), "b": _masks(3, 5), "c": _masks(6, 10)}
    seeds = dict(seed=7)
    together = generate_volumes(ContextStub(), list(vols.values()), list(vols), batch_size=16, **seeds)
    stub = ContextStub()
    ragged = generate_volumes(stub, list(vols.values())[::-1], list(vols)[::-1], batch_size=2, **seeds)[::-1]
    alone = [generate_volumes(ContextStub(), [m], [n], batch_size=1, **seeds)[0] for n, m in vols.items()]
    for t, r, a in zip(together, ragged, alone):
        assert torch.equal(t, r) and torch.equal(t, a)
    counter = ContextStub()
    generate_volumes(counter, list(vols.values()), list(vols), batch_size=16, **seeds)
    assert len(counter.calls) == 6  # the longest volume's slices: one step each, all volumes at once
    other = generate_volumes(ContextStub(), list(vols.values()), list(vols), batch_size=16, seed=8)
    assert not torch.equal(other[0], together[0])


def test_real_model_grouping_agrees_to_kernel_rounding():
    """A tiny 2.5D DDPM: volumes made together or alone agree within float rounding of batched
    convolutions, carried from slice to slice (measured 0.9e-4 to 7.1e-4 over 4 seeds of the
    perturbed weights, 2 steps; bound 2e-3)."""
    torch.manual_seed(0)
    model = _tiny()
    with torch.no_grad():
        for p in model.ema.shadow.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    dm = tiny_phantom(batch_size=2, depth=4)
    dm.setup("fit")
    a, b = (
        torch.from_numpy(m.astype(np.int64))
        for m in (dm.datasets["train"].masks[0], dm.datasets["val"].masks[0])
    )
    together = generate_volumes(model, [a, b], ["a", "b"], num_steps=2)
    alone = [generate_volumes(model, [m], [n], num_steps=2)[0] for n, m in (("a", a), ("b", b))]
    for t, s in zip(together, alone):
        torch.testing.assert_close(t, s, rtol=0, atol=2e-3)


def test_gaps_and_short_volumes():
    """Indices with a gap: no context across it, and the slice after it starts afresh (step 0);
    a volume shorter than the context's span warns and is still made."""
    stub = ContextStub()
    masks = torch.from_numpy(_volume([0, 1, 4, 5])[1].astype(np.int64))
    generate_volumes(stub, [masks], ["g"], indices=[[0, 1, 4, 5]], batch_size=8)
    first = stub.calls[0]
    assert [int(m[0, 0]) for m in first[0]] == [0, 4]  # both run starts in the first step
    assert first[1].previous_valid.tolist() == [[False], [False]]
    assert first[1].masks_valid.tolist() == [[False, True], [False, True]]
    assert len(stub.calls) == 2
    with pytest.warns(UserWarning, match="volume s has 2 slice.*fewer than the 3"):
        out = generate_volumes(ContextStub(), [_masks(2)], ["s"])
    assert out[0].shape == (2, S, S)
    with pytest.raises(ValueError, match=r"volume x: masks must be \[D, 8, 8\]"):
        generate_volumes(ContextStub(), [torch.zeros(3, 4, 4, dtype=torch.long)], ["x"])
    with pytest.raises(ValueError, match="volume x: slice index 1 appears twice"):
        generate_volumes(ContextStub(), [_masks(2)], ["x"], indices=[[1, 1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate_volumes(ContextStub(neighbours=1, previous=0), [_masks(3)], ["ok"])  # no warning at the span


def test_synthesize_command_with_a_25d_checkpoint_and_a_gap(tmp_path, capsys):
    """`medsynth synthesize` makes a 2.5D checkpoint's volume in order: the same volume as
    synthesize_volume; an unlabelled slice is a gap, said so, written as the window's bottom
    (-160 HU), never generated, and its neighbours see no mask and no previous slice across it."""
    import lightning as L
    import nibabel as nib

    from medsynth.commands.synthesize import main
    from medsynth.io import read_label_case
    from medsynth.synthesis import load_model, synthesize_volume

    stub = ContextStub(image_size=16)
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(stub)
    trainer.save_checkpoint(tmp_path / "stub.ckpt", weights_only=True)
    labels = np.zeros((16, 16, 7), dtype=np.uint8)
    labels[2:14, 2:14, :] = 16  # body
    labels[4:9, 4:9, :] = 6  # liver
    labels[:, :, 3] = 0  # slice 3: no label at all
    path = tmp_path / "in" / "case.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(labels, np.diag([2.0, 2.0, 5.0, 1.0])), path)
    with pytest.warns(UserWarning, match=r"case.nii.gz: axial slice\(s\) 3 .* gaps in z"):
        assert (
            main(
                [
                    "--checkpoint",
                    str(tmp_path / "stub.ckpt"),
                    "--input",
                    str(path),
                    "--output",
                    str(tmp_path / "out"),
                    "--no_progress",
                ]
            )
            == 0
        )
    assert "2.5D model (the masks of slices ±1 and the 1 previous slice image(s))" in capsys.readouterr().out
    hu = np.asarray(nib.load(tmp_path / "out" / "case.nii.gz").dataobj)  # [16, 16, 7] int16
    assert (hu[:, :, 3] == -160).all() and (hu[:, :, 2] != -160).any()
    model = load_model(tmp_path / "stub.ckpt")
    with pytest.warns(UserWarning, match="gaps in z"):
        ref = synthesize_volume(model, read_label_case(path), progress=False)
    np.testing.assert_array_equal(hu, np.round(ref).astype(np.int16))
    # the contexts the stub received: 6 slices in 3 steps (slices 0 and 4 start runs; 1, 5; 2, 6)
    assert [len(m) for m, _ in model.calls] == [2, 2, 2]
    first, last = model.calls[0][1], model.calls[2][1]
    assert first.previous_valid.tolist() == [[False], [False]]  # slices 0 and 4: nothing below
    assert first.masks_valid.tolist() == [[False, True], [False, True]]  # slice 4 sees no slice 3
    assert last.masks_valid.tolist() == [[True, False], [True, False]]  # slices 2 and 6: nothing above


def test_context_sample_noise_set_on_a_model():
    """The generation level set after building: at 0 the network gets the clean slice (2x - 1,
    level 0), at 0.3 x T = 30 the q_sample of step 29 (the float64 reference of the test above);
    set_context_sample_noise names the option for a level outside [0, 1], a 2D model and a 2.5D
    one without previous slices."""
    from medsynth.synthesis import set_context_sample_noise

    model = _tiny(timesteps=100, context_drop=0.0)
    assert model.context_sample_noise == 0.1  # the built default
    prev = torch.rand(2, 1, 32, 32)
    ctx = SliceContext(
        previous=prev,
        previous_valid=torch.tensor([[True], [True]]),
        masks=torch.zeros(2, 2, 32, 32, dtype=torch.long),
        masks_valid=torch.zeros(2, 2, dtype=torch.bool),
    )
    set_context_sample_noise(model, 0.0)
    out = model.context_model_kwargs(ctx, training=False, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["previous_image"], 2 * prev - 1, rtol=0, atol=0)
    assert out["context_level"].tolist() == [0.0, 0.0]
    set_context_sample_noise(model, 0.3)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    out = model.context_model_kwargs(ctx, training=False, generator=gens)
    abar = np.cumprod(1.0 - np.linspace(1e-3, 0.2, 100))[29]
    eps = randn((2, 1, 32, 32), [torch.Generator().manual_seed(s) for s in (1, 2)], "cpu")
    want = math.sqrt(abar) * (2 * prev - 1) + math.sqrt(1 - abar) * eps
    torch.testing.assert_close(out["previous_image"], want, rtol=0, atol=1e-5)
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match=r"--flag: context_sample_noise must lie in \[0, 1\]"):
            set_context_sample_noise(model, bad, "--flag")
    assert model.context_sample_noise == 0.3  # a refused level leaves the model as it was
    with pytest.raises(ValueError, match="x: ConditionalDDPM is a 2D model; there is no slice below"):
        set_context_sample_noise(tiny_model(ConditionalDDPM), 0.0, "x")
    with pytest.raises(ValueError, match=r"without previous slices \(the masks of slices ±1\)"):
        set_context_sample_noise(ContextStub(previous=0), 0.0)


def test_synthesize_refuses_context_sample_noise_for_a_model_without_previous_slices(tmp_path, capsys):
    """`medsynth synthesize --context_sample_noise` with a checkpoint that sees no slice below: exit 2
    naming the flag and the checkpoint, before any volume is written."""
    import lightning as L
    import nibabel as nib

    from medsynth.commands.synthesize import main

    stub = ContextStub(image_size=16, previous=0)
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(stub)
    trainer.save_checkpoint(tmp_path / "stub.ckpt", weights_only=True)
    labels = np.zeros((16, 16, 3), dtype=np.uint8)
    labels[4:9, 4:9, :] = 6
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "case.nii.gz")
    argv = ["--checkpoint", str(tmp_path / "stub.ckpt"), "--input", str(tmp_path / "case.nii.gz")]
    argv += ["--output", str(tmp_path / "out"), "--context_sample_noise", "0.05", "--no_progress"]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert f"--context_sample_noise ({tmp_path / 'stub.ckpt'})" in err and "no slice below" in err
    assert not (tmp_path / "out").exists()


def test_docs_and_pieces_state_the_settings_of_the_code():
    """The context defaults in docs/api.md and docs/synthesis.md are the signature's; each
    experiments/*/_context.yaml sets the model's and the data's context alike (checked at fit time
    too), with the k and p docs/synthesis.md names."""
    import inspect
    import re
    from pathlib import Path

    import yaml

    from medsynth.models.ddpm import DiffusionModel

    root = Path(__file__).resolve().parents[1]
    sig = inspect.signature(DiffusionModel.__init__).parameters
    api = " ".join((root / "docs" / "api.md").read_text().split())
    synthesis = " ".join((root / "docs" / "synthesis.md").read_text().split())
    for name in (
        "context_slices",
        "context_previous",
        "context_embed",
        "context_noise",
        "context_sample_noise",
        "context_drop",
    ):
        assert f"`{name}={sig[name].default!r}`" in api, name
    for name in ("context_embed", "context_noise", "context_sample_noise", "context_drop"):
        stated = re.search(rf"`[^`]*{name}[^`]*` \(([\d.]+)", synthesis)
        assert stated and float(stated.group(1)) == sig[name].default, name
    pieces = sorted((root / "experiments").glob("*/_context.yaml"))
    assert {p.parent.name for p in pieces} == {"phantom", "realct"}
    for piece in pieces:
        cfg = yaml.safe_load(piece.read_text())
        model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
        assert model == data == {"context_slices": 2, "context_previous": 1}, piece
    assert "(k = 2: 5 mm either side on a 2.5 mm CT; p = 1)" in synthesis


def test_evaluate_a_25d_checkpoint_beside_a_2d_one(tmp_path):
    """`medsynth evaluate` tests a 2.5D model on the data with its context and a 2D model on the
    same data without (Lightning refuses a model and data module whose shared hyperparameters
    differ), and the figure's slices get their context from the batch; a 2D model on data with
    context is refused before training, naming the flags."""
    import lightning as L

    from medsynth.evaluate import evaluate_checkpoints

    paths = []
    for name, kw in (("m25", {"context_slices": 1, "context_previous": 1}), ("m2", {})):
        model = tiny_model(ConditionalDDPM, **kw)
        trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        trainer.strategy.connect(model)
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt", weights_only=True)
        paths.append(tmp_path / f"{name}.ckpt")
    data = tmp_path / "data.yaml"
    data.write_text(
        "data:\n  class_path: medsynth.data.PhantomDataModule\n  init_args: {num_train_cases: 0, "
        "num_val_cases: 0, num_test_cases: 1, depth: 4, image_size: 32, batch_size: 4}\n"
    )
    written = evaluate_checkpoints(
        paths, tmp_path / "out", names=["2.5D", "2D"], data_config=data, metrics=["psnr"], num_steps=1,
        figure_slices=2, reference=None, accelerator="cpu",
    )  # fmt: skip
    report = next(p for p in written if p.suffix == ".md").read_text()
    assert "2.5D" in report and "2D" in report and any(p.suffix == ".png" for p in written)
    two = tmp_path / "m25b.ckpt"
    model = tiny_model(ConditionalDDPM, context_slices=2, context_previous=1)
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(two, weights_only=True)
    with pytest.raises(ValueError, match=r"the data module gives 2.5D context .* but the model is 2D"):
        tiny_trainer(fast_dev_run=1).fit(
            tiny_model(ConditionalDDPM), datamodule=tiny_phantom(context_slices=1)
        )
    with pytest.raises(ValueError, match="2.5D models with different contexts"):
        evaluate_checkpoints(
            [paths[0], two], tmp_path / "bad", names=["a", "b"], data_config=data, metrics=["psnr"]
        )
