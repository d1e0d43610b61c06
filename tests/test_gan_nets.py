"""GAN networks: SPADE res block with known modulation, output sizes, VGG loss from a local file."""

import pytest
import torch
import torch.nn.functional as F

from medsynth.models.base import one_hot
from medsynth.nn import (
    MultiscaleDiscriminator,
    OASISDiscriminator,
    OASISGenerator,
    PatchDiscriminator,
    SPADEGANResBlock,
    SPADEGenerator,
    UNetGenerator,
    VGGLoss,
)
from medsynth.nn.generators import unet_depth, upsampling_plan


def _bn(x):  # parameter-free batch norm with batch statistics, float64
    return (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        x.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5
    )


def _set_modulation(norm, gamma, beta):
    for conv, value in ((norm.gamma, gamma), (norm.beta, beta)):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.constant_(conv.bias, value)


@pytest.mark.parametrize("fin,fout", [(6, 4), (4, 4)])
def test_spade_resnet_block_known_modulation(fin, fout):
    torch.manual_seed(0)
    block = SPADEGANResBlock(fin, fout, label_nc=3, hidden=4, spectral=False).double().train()
    _set_modulation(block.norm_0, 0.5, -0.25)
    _set_modulation(block.norm_1, -0.3, 0.1)
    if fin != fout:
        _set_modulation(block.norm_s, 1.0, 2.0)
    x = torch.randn(2, fin, 5, 5, dtype=torch.float64) * 2 + 1
    seg = one_hot(torch.randint(0, 3, (2, 10, 10)), 3, dtype=torch.float64)
    h = F.leaky_relu(_bn(x) * 1.5 - 0.25, 0.2)
    h = F.conv2d(h, block.conv_0.weight, block.conv_0.bias, padding=1)
    assert h.shape[1] == min(fin, fout)
    h = F.leaky_relu(_bn(h) * 0.7 + 0.1, 0.2)
    h = F.conv2d(h, block.conv_1.weight, block.conv_1.bias, padding=1)
    s = F.conv2d(_bn(x) * 2.0 + 2.0, block.conv_s.weight) if fin != fout else x
    torch.testing.assert_close(block(x, seg), s + h)
    assert block.learned_shortcut == (fin != fout)


def test_spade_resnet_block_spectral_norm():
    block = SPADEGANResBlock(4, 6, label_nc=3, hidden=4, spectral=True).train()
    seg = one_hot(torch.randint(0, 3, (2, 8, 8)), 3)
    for _ in range(30):  # power iterations run in train mode
        block(torch.randn(2, 4, 8, 8), seg)
    for conv in (block.conv_0, block.conv_1, block.conv_s):
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_generator_output_sizes(size):
    seg = one_hot(torch.randint(0, 17, (2, size, size)), 17)
    for net in (
        UNetGenerator(17, 1, 4, depth=unet_depth(size)),
        SPADEGenerator(size, 17, 2, hidden=8),
        OASISGenerator(size, 17, 2, z_dim=4, hidden=8),
    ):
        last: list[torch.Tensor] = []  # output of the last convolution that ran
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.register_forward_hook(lambda mod, inp, out, last=last: last.append(out))
        out = net(seg)
        assert out.shape == (2, 1, size, size)
        torch.testing.assert_close(out, torch.tanh(last[-1]))  # tanh of the last conv, nothing after
    assert OASISDiscriminator(size, 17, 1, 4)(torch.randn(2, 1, size, size)).shape == (2, 18, size, size)


def test_upsampling_plan_and_unet_depth():
    assert upsampling_plan(256) == (5, 8)  # SPADE/OASIS at 256 start from 8x8 (size / 32)
    assert upsampling_plan(64) == (5, 2)
    assert upsampling_plan(32) == (4, 2)  # one upsampling fewer so the start stays 2x2
    assert upsampling_plan(96) == (5, 3)
    assert unet_depth(256) == 8 and unet_depth(32) == 5
    with pytest.raises(ValueError, match="power of two"):
        unet_depth(96)
    gen = SPADEGenerator(32, 17, 1, hidden=4)
    assert gen.upsample_after == [False, False, True, True, True, True, False]


def test_unet_generator_layout_at_256():
    net = UNetGenerator(17, 1, 64, depth=8)
    widths = [
        d[-1].num_features if isinstance(d[-1], torch.nn.BatchNorm2d) else d[-1].out_channels
        for d in net.downs
    ]
    assert widths == [64, 128, 256, 512, 512, 512, 512, 512]
    has_dropout = [any(isinstance(m, torch.nn.Dropout) for m in up) for up in net.ups]
    assert has_dropout == [False, False, False, False, True, True, True, False]  # 3 innermost decoder blocks


def pix2pix_counts(in_channels: int, out_channels: int, ngf: int, depth: int) -> tuple[int, int]:
    """Closed-form parameter counts of pix2pix's unet_<2**depth> generator and 70x70 PatchGAN.

    From the authors' ``networks.py`` (batch norm, so ``use_bias=False``): every down-conv
    k4 without bias, batch norm after all but the outermost and innermost; every up-conv k4 without
    bias plus batch norm, except the outermost (bias, tanh). The PatchGAN: conv(in, ndf) with bias,
    three k4 convs without bias plus batch norm (widths 2, 4, 8 x ndf), conv(8 ndf, 1) with bias.
    """
    w = [ngf * min(2**i, 8) for i in range(depth)]
    downs = sum((in_channels if i == 0 else w[i - 1]) * w[i] * 16 for i in range(depth))
    downs += sum(2 * w[i] for i in range(1, depth - 1))
    ups = w[-1] * w[-2] * 16 + 2 * w[-2]  # innermost
    ups += sum(2 * w[i] * w[i - 1] * 16 + 2 * w[i - 1] for i in range(1, depth - 1))
    ups += 2 * w[0] * out_channels * 16 + out_channels  # outermost
    ndf = ngf
    d = in_channels * ndf * 16 + ndf
    d += sum(ndf * min(2 ** (n - 1), 8) * ndf * min(2**n, 8) * 16 + 2 * ndf * min(2**n, 8) for n in (1, 2, 3))
    d += 8 * ndf * 16 + 1
    return downs + ups, d


@pytest.mark.parametrize("ngf, depth", [(8, 5), (64, 8)])
def test_pix2pix_networks_parameter_counts(ngf, depth):
    """Parameter counts equal the closed form of the authors' unet_256 and 70x70 PatchGAN.

    At ngf 64, depth 8 on RGB the closed form gives 54,413,955 and 2,768,705, which round to what
    the authors' code prints (54.414 M, 2.769 M). Ours differs in one deliberate place: the two down-convs without batch
    norm after them (outermost, innermost) keep their bias, ngf + 8 ngf parameters more.
    """
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    g_ref = pix2pix_counts(3, 3, ngf, depth)[0]
    assert n(UNetGenerator(3, 3, ngf, depth=depth)) == g_ref + ngf + 8 * ngf
    assert n(PatchDiscriminator(6, ngf)) == pix2pix_counts(6, 3, ngf, depth)[1]
    if ngf == 64:  # the authors' printout for unet_256 / basic netD on RGB pairs: 54.414 M, 2.769 M
        assert round(g_ref / 1e6, 3) == 54.414 and round(pix2pix_counts(6, 3, 64, 8)[1] / 1e6, 3) == 2.769


def test_patch_discriminators():
    x = torch.randn(2, 18, 256, 256)
    assert PatchDiscriminator(18, 8)(x).shape == (2, 1, 30, 30)  # the 70x70 PatchGAN's 30x30 map
    feats = MultiscaleDiscriminator(18, 4, num_d=2)(x[..., :64, :64])
    assert len(feats) == 2 and all(len(f) == 5 for f in feats)
    assert feats[0][-1].shape[1] == 1 and feats[1][0].shape[-1] < feats[0][0].shape[-1]


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    from torchvision.models import vgg19

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg19_features.pth"
    state = {f"features.{k}": v for k, v in vgg19(weights=None).features.state_dict().items()}
    torch.save(state, path)
    return path


def test_vgg_loss_missing_weights_error(tmp_path):
    for bad in (None, tmp_path / "nope.pth"):
        with pytest.raises(ValueError) as err:
            VGGLoss(bad)
        text = str(err.value)
        assert "vgg_weights" in text and "lambda_vgg=0" in text and "IMAGENET1K_V1" in text
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        VGGLoss(junk)


def test_vgg_loss_against_manual_features(vgg_file):
    from torchvision.models import vgg19

    loss = VGGLoss(vgg_file)
    feats = vgg19(weights=None).features.eval()
    state = torch.load(vgg_file, weights_only=True)
    feats.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})  # all 37 layers
    fake, real = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def taps(x):  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 are layers 1, 6, 11, 20, 29
        x = ((x + 1) / 2).repeat(1, 3, 1, 1)
        x = (x - mean) / std
        out = []
        for i, layer in enumerate(feats):
            x = layer(x)
            if i in (1, 6, 11, 20, 29):
                out.append(x)
        return out

    ref = sum(
        w * (a - b).abs().mean() for w, a, b in zip((1 / 32, 1 / 16, 1 / 8, 1 / 4, 1), taps(fake), taps(real))
    )
    with torch.no_grad():
        assert loss(fake, real).item() == pytest.approx(ref.item(), rel=1e-4)
    assert not any(p.requires_grad for p in loss.parameters()) and not loss.train().training


def test_spade_with_vgg_weights_uses_vgg_term(vgg_file):
    from medsynth.models import SPADE

    model = SPADE(image_size=32, model_channels=4, disc_channels=8, spade_hidden=8, vgg_weights=vgg_file)
    mask = torch.randint(0, 17, (2, 32, 32))
    real, seg = torch.rand(2, 1, 32, 32) * 2 - 1, one_hot(mask, 17)
    fake = model.generator(seg)
    terms = model.generator_losses(real, fake, seg, mask)
    assert set(terms) == {"g_gan", "g_feat", "g_vgg"} and model.loss_weights["g_vgg"] == 10
    torch.testing.assert_close(terms["g_vgg"], model.vgg(fake, real))
