"""generate() with one generator per slice: a slice's output does not depend on its batch.

This is what makes batched evaluation exact under DDP and synthesis independent of batch size.
"""

import pytest
import torch

from medsynth.models import OASIS, SDM, ConditionalDDPM, MaskGuidedDDPM, SynthesisModule


def _tiny(cls) -> SynthesisModule:
    torch.manual_seed(0)
    if cls is OASIS:
        return cls(image_size=32, model_channels=4, disc_channels=4, spade_hidden=8, ema_decay=None)
    extra = {"spade_hidden": 8} if cls is SDM else {}
    return cls(image_size=32, model_channels=8, channel_mult=(1, 2), attention_resolutions=(), **extra)


@pytest.mark.parametrize(
    ("cls", "options"),
    [(ConditionalDDPM, {"sampler": "ddpm", "num_steps": 4}), (MaskGuidedDDPM, {"sampler": "dpm++", "num_steps": 3}),
     (SDM, {"sampler": "ddim", "num_steps": 3, "guidance_scale": 2.0}), (OASIS, {})],
    ids=["ddpm", "dpm++", "sdm-ddim", "oasis"],
)  # fmt: skip
def test_batched_equals_slice_by_slice(cls, options):
    model = _tiny(cls).eval()
    with torch.no_grad():  # give the zero-initialised output layers some weight
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mask = torch.randint(0, 17, (3, 32, 32), generator=torch.Generator().manual_seed(1))
    seeds = (11, 12, 13)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    batched = model.generate(mask, generator=gens, **options)
    single = torch.cat(
        [
            model.generate(mask[i : i + 1], generator=torch.Generator().manual_seed(s), **options)
            for i, s in enumerate(seeds)
        ]
    )
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=0)  # batched float rounding only
    other = model.generate(mask, generator=[torch.Generator().manual_seed(s + 100) for s in seeds], **options)
    if cls is not OASIS or model.hparams.z_dim > 0:
        assert (other - batched).abs().max() > 1e-3  # the noise really comes from the generators
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        model.generate(mask, generator=gens[:2], **options)
