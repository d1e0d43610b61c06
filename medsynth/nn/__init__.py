"""Plain nn.Modules (no Lightning): diffusion UNets, SPADE, GAN generators and discriminators, EMA."""

from medsynth.nn.discriminators import MultiscaleDiscriminator, OASISDiscriminator, PatchDiscriminator
from medsynth.nn.generators import OASISGenerator, SPADEGenerator, UNetGenerator
from medsynth.nn.spade import SPADEGANResBlock, SPADENorm
from medsynth.nn.unet import ConditionEncoder, DiffusionUNet, SPADEDiffusionResBlock, SPADEDiffusionUNet
from medsynth.nn.vgg import VGGLoss

__all__ = [
    "ConditionEncoder",
    "DiffusionUNet",
    "SPADEDiffusionUNet",
    "SPADEDiffusionResBlock",
    "MultiscaleDiscriminator",
    "OASISDiscriminator",
    "OASISGenerator",
    "PatchDiscriminator",
    "SPADEGenerator",
    "SPADENorm",
    "SPADEGANResBlock",
    "UNetGenerator",
    "VGGLoss",
]
