"""Plain nn.Modules (no Lightning): diffusion UNets, SPADE, GAN generators and discriminators, EMA."""

from medsynth.nn.discriminators import MultiscaleDiscriminator, OASISDiscriminator, PatchDiscriminator
from medsynth.nn.generators import OASISGenerator, SPADEGenerator, UNetGenerator
from medsynth.nn.spade import SPADENorm, SPADEResnetBlock
from medsynth.nn.unet import ConditionEncoder, DiffusionUNet, SPADEDiffusionUNet, SPADEResBlock
from medsynth.nn.vgg import VGGLoss

__all__ = [
    "ConditionEncoder",
    "DiffusionUNet",
    "SPADEDiffusionUNet",
    "SPADEResBlock",
    "MultiscaleDiscriminator",
    "OASISDiscriminator",
    "OASISGenerator",
    "PatchDiscriminator",
    "SPADEGenerator",
    "SPADENorm",
    "SPADEResnetBlock",
    "UNetGenerator",
    "VGGLoss",
]
