"""VGG19 perceptual loss for 1-channel CT (SPADE, Park et al. 2019; Wang et al. pix2pixHD).

The weights come from a local file only: this module never downloads anything.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VGGLoss", "VGG_LAYER_WEIGHTS", "VGG_WEIGHTS_HELP"]

# relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 and their weights in SPADE's VGGLoss.
VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))  # torchvision vgg19().features indices
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)

VGG_WEIGHTS_HELP = (
    "The VGG19 perceptual loss needs ImageNet VGG19 weights in a local file (medsynth never downloads). "
    "On a machine with internet run\n"
    "    python -c \"import torch, torchvision; torch.save(torchvision.models.vgg19(weights='IMAGENET1K_V1')"
    ".state_dict(), 'vgg19.pth')\"\n"
    "(the file torchvision fetches is https://download.pytorch.org/models/vgg19-dcbb9e9d.pth, which can also "
    "be passed directly), copy it here and pass vgg_weights='vgg19.pth'; or set lambda_vgg=0 to train without "
    "the VGG loss."
)


def _load_features(path: str | Path | None) -> nn.Sequential:
    """torchvision's VGG19 ``features[:30]`` with weights read from ``path``."""
    from torchvision.models import vgg19

    if path is None:
        raise ValueError(f"vgg_weights is None but the VGG loss is enabled. {VGG_WEIGHTS_HELP}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"vgg_weights file {str(path)!r} does not exist. {VGG_WEIGHTS_HELP}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(
            f"vgg_weights file {str(path)!r} could not be read ({err}). {VGG_WEIGHTS_HELP}"
        ) from err
    if not isinstance(state, dict):
        raise ValueError(f"vgg_weights file {str(path)!r} does not hold a state dict. {VGG_WEIGHTS_HELP}")
    # Accept a full vgg19 state dict ("features.0.weight", ...) or one of .features ("0.weight").
    feats = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    features = vgg19(weights=None).features[:30]
    wanted = set(features.state_dict())
    missing = sorted(wanted - set(feats))
    if missing:
        raise ValueError(
            f"vgg_weights file {str(path)!r} is not a torchvision VGG19 state dict "
            f"(missing {missing[:4]}). {VGG_WEIGHTS_HELP}"
        )
    try:
        features.load_state_dict({k: feats[k] for k in wanted})
    except RuntimeError as err:
        raise ValueError(
            f"vgg_weights file {str(path)!r} does not fit VGG19 ({err}). {VGG_WEIGHTS_HELP}"
        ) from err
    return features


class VGGLoss(nn.Module):
    """``sum_i w_i * L1(phi_i(fake), phi_i(real))`` over VGG19 relu1_1..relu5_1.

    Inputs are 1-channel images in [-1, 1] (the generators' tanh range); they are mapped to
    [0, 1], repeated to 3 channels and normalised with the ImageNet mean and std, which is how
    the VGG19 weights were trained. The network is frozen and always in eval mode.

    Args:
        weights: Path of a torchvision VGG19 state dict (see ``VGG_WEIGHTS_HELP``).
        layer_weights: Weights of relu1_1..relu5_1 (1/32, 1/16, 1/8, 1/4, 1).

    Raises:
        ValueError: at construction when ``weights`` is None, missing or unreadable, with
            instructions to get the file or to disable the loss (``lambda_vgg=0``).
    """

    def __init__(
        self, weights: str | Path | None, layer_weights: tuple[float, ...] = VGG_LAYER_WEIGHTS
    ) -> None:
        super().__init__()
        if len(layer_weights) != len(_SLICES):
            raise ValueError(f"layer_weights needs {len(_SLICES)} entries, got {len(layer_weights)}")
        features = _load_features(weights)
        self.slices = nn.ModuleList(features[a:b] for a, b in _SLICES)
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGLoss:
        return super().train(False)  # frozen feature extractor: always eval

    def features(self, x: Tensor) -> list[Tensor]:
        # x: [B, 1, H, W] in [-1, 1] -> ImageNet-normalised [B, 3, H, W]
        x = ((x + 1) / 2).expand(-1, 3, -1, -1)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = []
        for s in self.slices:
            x = s(x)
            out.append(x)
        return out

    def forward(self, fake: Tensor, real: Tensor) -> Tensor:
        fake_f, real_f = self.features(fake), self.features(real)
        return sum(
            w * F.l1_loss(f, r.detach()) for w, f, r in zip(self.layer_weights, fake_f, real_f, strict=True)
        )
