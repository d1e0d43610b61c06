"""Diffusion UNets: wiring of the conditioning branch, SPADE decoder, initial output, bf16."""

from __future__ import annotations

import pytest
import torch

from medsynth.nn import DiffusionUNet, SPADEDiffusionResBlock, SPADEDiffusionUNet
from medsynth.nn.unet import ResBlock, default_channel_mult

TINY = dict(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,))


def _randomise(net: torch.nn.Module) -> None:
    # Zero-initialised output convs make every output 0 at init; perturb to test the wiring.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))


def test_defaults_follow_improved_ddpm() -> None:
    assert default_channel_mult(256) == (1, 1, 2, 2, 4, 4)
    with pytest.raises(ValueError, match="image_size=48"):
        default_channel_mult(48)
    with pytest.raises(ValueError, match="image_size=31"):
        DiffusionUNet(31, **TINY)


def test_output_is_zero_at_init_and_shapes() -> None:
    net = DiffusionUNet(32, in_channels=18, **TINY)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([0, 999])
    out = net(x, t, concat=torch.zeros(2, 17, 32, 32))
    assert out.shape == (2, 2, 32, 32)
    assert torch.all(out == 0)
    with pytest.raises(ValueError, match="18 input channels"):
        net(x, t)


def test_condition_branch_feeds_encoder_and_decoder() -> None:
    net = DiffusionUNet(32, cond_channels=17, cond_model_channels=4, **TINY)
    widths = net.cond_encoder.widths
    assert widths == [4, 8]
    # the first res block of every encoder and decoder level takes the branch's features
    assert net.down[0].blocks[0].block.in_channels == 8 + widths[0]
    assert net.down[1].blocks[0].block.in_channels == 8 + widths[1]
    assert net.up[0].blocks[0].block.in_channels == 16 + 16 + widths[1]  # level 1: h + skip + cond
    assert net.up[1].blocks[0].block.in_channels == 16 + 8 + widths[0]  # level 0: h + skip + cond
    _randomise(net)
    x, t = torch.randn(1, 1, 32, 32), torch.tensor([10])
    cond = torch.zeros(1, 17, 32, 32)
    cond[:, 3, 8:20, 8:20] = 1
    cond.requires_grad_(True)
    out = net(x, t, cond=cond)
    out.sum().backward()
    assert cond.grad.abs().sum() > 0
    assert not torch.allclose(out, net(x, t, cond=torch.zeros_like(cond)))
    with pytest.raises(ValueError, match="cond"):
        net(x, t)


def test_spade_unet_reuses_the_encoder_and_swaps_the_decoder() -> None:
    net = SPADEDiffusionUNet(32, label_nc=17, spade_hidden=8, **TINY)
    assert all(isinstance(b, ResBlock) for level in net.down for b in level.blocks)
    assert isinstance(net.mid[0], SPADEDiffusionResBlock) and isinstance(net.mid[2], SPADEDiffusionResBlock)
    assert all(isinstance(b, SPADEDiffusionResBlock) for level in net.up for b in level.blocks)
    plain = DiffusionUNet(32, **TINY)
    assert [p.shape for p in net.down.parameters()] == [p.shape for p in plain.down.parameters()]
    _randomise(net)
    x, t = torch.randn(1, 1, 32, 32), torch.tensor([10])
    seg = torch.zeros(1, 17, 32, 32)
    seg[:, 0] = 1
    other = torch.zeros_like(seg)
    other[:, 5] = 1
    assert not torch.allclose(net(x, t, seg=seg), net(x, t, seg=other))
    with pytest.raises(ValueError, match="seg"):
        net(x, t)


def test_spade_res_block_reduces_to_skip_at_init() -> None:
    # conv2 is zero-initialised: the block is its skip path until it learns.
    block = SPADEDiffusionResBlock(8, 16, temb_ch=12, label_nc=3, hidden=4)
    h, temb, seg = torch.randn(2, 8, 8, 8), torch.randn(2, 12), torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(block(h, temb, seg), block.skip(h))


def test_bf16_autocast_forward() -> None:
    net = DiffusionUNet(32, cond_channels=1, **TINY)
    _randomise(net)
    x, t, cond = torch.randn(2, 1, 32, 32), torch.tensor([1, 500]), torch.rand(2, 1, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, cond=cond)
    ref = net(x, t, cond=cond)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max() + 1e-3


@pytest.mark.parametrize(
    "mc, mult, nrb, attn", [(8, (1, 2), 1, (16,)), (16, (1, 2, 2), 2, (16, 8)), (8, (1, 2, 4), 2, ())]
)
def test_parameter_count_matches_diffusers_unet2dmodel(mc, mult, nrb, attn) -> None:
    """Same layers as diffusers' UNet2DModel of the same configuration (an independent assembly of
    the Improved-DDPM layout), plus one GroupNorm: Improved DDPM's middle attention normalises its
    input, which UNet2DModel leaves out under scale-shift conditioning (2 x deepest width)."""
    from diffusers import UNet2DModel

    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    ours = DiffusionUNet(
        image_size=32,
        in_channels=18,
        out_channels=2,
        model_channels=mc,
        channel_mult=mult,
        num_res_blocks=nrb,
        attention_resolutions=attn,
    )
    res = [32 // 2**i for i in range(len(mult))]
    ref = UNet2DModel(
        sample_size=32,
        in_channels=18,
        out_channels=2,
        block_out_channels=tuple(mc * m for m in mult),
        layers_per_block=nrb,
        down_block_types=tuple("AttnDownBlock2D" if r in attn else "DownBlock2D" for r in res),
        up_block_types=tuple("AttnUpBlock2D" if r in attn else "UpBlock2D" for r in reversed(res)),
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=4,
        attention_head_dim=4,
    )
    assert n(ours) == n(ref) + 2 * mc * mult[-1]
