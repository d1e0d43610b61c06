"""Labels, the SynthesisModule contract, semantic edges, EMA and the SPADE norm."""

import numpy as np
import pytest
import torch

from medsynth.data import semantic_edges
from medsynth.labels import (
    BODY,
    CLASSES,
    NUM_CLASSES,
    PAPER_DICE_ORDER,
    TOTALSEG_TO_AMOS,
    class_by_name,
    colorize,
)
from medsynth.models.base import SynthesisModule, check_batch, one_hot
from medsynth.nn.ema import EMA
from medsynth.nn.spade import SPADENorm, num_groups


def test_label_table_matches_amos_order():
    assert NUM_CLASSES == 17 and BODY == 16
    assert [c.index for c in CLASSES] == list(range(17))
    amos = ["spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach", "aorta"]
    assert [c.name for c in CLASSES[1:9]] == amos
    assert (
        class_by_name("body").index == BODY and CLASSES[0].totalseg is None and CLASSES[BODY].totalseg is None
    )
    assert TOTALSEG_TO_AMOS["urinary_bladder"] == 14 and TOTALSEG_TO_AMOS["inferior_vena_cava"] == 9
    assert len(TOTALSEG_TO_AMOS) == 15
    # Table 1 columns: Sple., Liv., Kid_l, Kid_r, Panc., Stom., Aorta, Gall_bld, Espo., Adr_r, Adr_l, Duod., Cava, Bladder
    names = [CLASSES[i].name for i in PAPER_DICE_ORDER]
    assert names[:4] == ["spleen", "liver", "kidney_left", "kidney_right"] and names[-1] == "bladder"
    with pytest.raises(KeyError, match="unknown class"):
        class_by_name("heart")


def test_colorize_uses_class_colours():
    rgb = colorize(np.array([[0, 6], [16, 1]]))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert tuple(rgb[0, 1]) == CLASSES[6].color and tuple(rgb[1, 0]) == CLASSES[16].color
    with pytest.raises(ValueError, match="0..16"):
        colorize(np.array([[17]]))


def test_semantic_edges_known_square():
    m = torch.zeros(1, 6, 6, dtype=torch.long)
    m[0, 2:4, 2:4] = 3
    e = semantic_edges(m)[0, 0]
    expected = torch.zeros(6, 6)
    expected[2:4, 1:5] = 1  # the square and its left/right neighbours
    expected[1:5, 2:4] = 1  # ... and its upper/lower neighbours
    assert torch.equal(e, expected)
    assert semantic_edges(torch.full((2, 5, 5), 7)).sum() == 0  # one class: no edge
    with pytest.raises(ValueError, match="integer"):
        semantic_edges(torch.zeros(1, 4, 4))


class _Const(SynthesisModule):
    generate_options = ("num_steps",)

    def _generate(self, mask, *, generator=None, num_steps=None):
        return (mask.float() / 8.0 - 0.5).unsqueeze(1)  # values beyond [0, 1] get clamped


def test_generate_contract():
    model = _Const(image_size=8)
    mask = torch.tensor([[[0, 4], [8, 16]]]).repeat_interleave(4, 1).repeat_interleave(4, 2)  # [1, 8, 8]
    out = model.generate(mask, num_steps=3)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 8, 8)
    expected = torch.tensor([[0.0, 0.0], [0.5, 1.0]]).repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert torch.equal(out[0, 0], expected)
    with pytest.raises(ValueError, match="sampler"):
        model.generate(mask, sampler="ddim")
    with pytest.raises(ValueError, match="0..16"):
        model.generate(mask + 1)
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        model.generate(mask[0])
    with pytest.raises(ValueError, match="num_steps"):
        model.generate(mask, num_steps=0)
    with pytest.raises(ValueError, match="does not match image_size=8"):
        model.generate(mask[:, :4, :4])
    with pytest.raises(ValueError, match="image_size"):
        _Const(image_size=0)
    assert model.training  # generate() restores the training flag
    assert model.generate_kwargs(num_steps=5, sampler="ddim", guidance_scale=None) == {"num_steps": 5}


def test_one_hot_and_check_batch():
    mask = torch.tensor([[[0, 2], [1, 2]]])
    oh = one_hot(mask, 3)
    assert torch.equal(oh.argmax(1), mask) and torch.equal(oh.sum(1), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="do not match"):
        check_batch({"image": torch.zeros(1, 1, 3, 3), "mask": mask})
    with pytest.raises(KeyError, match="image"):
        check_batch({"mask": mask})


def test_ema_matches_closed_form():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = EMA(net, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            net.weight.add_(1.0)  # weights 2, 3, 4
        ema.update(net)
    expected = 1.0 * 0.9**3 + 0.1 * (0.9**2 * 2 + 0.9 * 3 + 4)
    assert torch.allclose(ema.shadow.weight, torch.full((1, 2), expected))
    assert not any(p.requires_grad for p in ema.shadow.parameters())
    with pytest.raises(ValueError, match="decay"):
        EMA(net, decay=1.0)


@pytest.mark.parametrize("norm", ["batch", "group", "instance"])
def test_spade_norm_known_modulation(norm):
    torch.manual_seed(0)
    block = SPADENorm(8, label_nc=3, hidden=4, norm=norm)
    for conv, value in ((block.gamma, 0.5), (block.beta, -0.25)):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.constant_(conv.bias, value)
    x = torch.randn(2, 8, 6, 6) * 3 + 1
    seg = one_hot(torch.randint(0, 3, (2, 12, 12)), 3)
    out = block.train()(x, seg)
    ref = block.norm(x)  # parameter-free normalisation computed independently below
    if norm == "batch":
        ref = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
            x.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5
        )
    elif norm == "instance":
        ref = (x - x.mean((2, 3), keepdim=True)) / torch.sqrt(
            x.var((2, 3), unbiased=False, keepdim=True) + 1e-5
        )
    else:
        g = x.view(2, num_groups(8), -1)
        ref = (
            (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5)
        ).view_as(x)
    torch.testing.assert_close(out, ref * 1.5 - 0.25, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="norm"):
        SPADENorm(8, 3, norm="layer")


def test_num_groups():
    assert num_groups(128) == 32 and num_groups(8) == 8 and num_groups(48) == 24 and num_groups(7) == 7


def test_per_sample_generators_draw_like_separate_calls():
    from medsynth.random import check_generator, randn

    gens = [torch.Generator().manual_seed(s) for s in (3, 7)]
    noise = randn((2, 1, 4, 4), gens, "cpu")
    for b, seed in enumerate((3, 7)):
        ref = torch.randn((1, 4, 4), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(noise[b], ref)
    one = randn((2, 3), torch.Generator().manual_seed(1), "cpu")
    assert torch.equal(one, torch.randn((2, 3), generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        check_generator(gens, 3)
    with pytest.raises(TypeError, match="generator"):
        check_generator([1, 2], 2)


def test_fit_start_offsets_rng_per_ddp_rank():
    """seed_everything seeds every rank alike; each rank must then draw its own timesteps and noise."""
    from types import SimpleNamespace

    draws = {}
    for rank, world in ((0, 2), (1, 2), (0, 1)):
        torch.manual_seed(1234)  # what seed_everything does in every process
        model = _Const(image_size=8)
        model._trainer = SimpleNamespace(world_size=world, global_rank=rank)
        model.on_fit_start()
        draws[(rank, world)] = torch.randint(0, 1000, (8,))
    assert not torch.equal(draws[(0, 2)], draws[(1, 2)])
    torch.manual_seed(1234)
    assert torch.equal(draws[(0, 1)], torch.randint(0, 1000, (8,)))  # a single process is left alone
