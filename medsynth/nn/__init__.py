"""Plain ``nn.Module`` building blocks (no Lightning)."""

from medsynth.nn.discriminators import MultiscaleDiscriminator, OASISDiscriminator, PatchDiscriminator
from medsynth.nn.generators import OASISGenerator, SPADEGenerator, UNetGenerator
from medsynth.nn.spade import SPADENorm, SPADEResBlock
from medsynth.nn.vgg import VGGLoss

__all__ = [
    "MultiscaleDiscriminator",
    "OASISDiscriminator",
    "OASISGenerator",
    "PatchDiscriminator",
    "SPADEGenerator",
    "SPADENorm",
    "SPADEResBlock",
    "UNetGenerator",
    "VGGLoss",
]
