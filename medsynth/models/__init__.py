"""Synthesis methods (LightningModules) and the in-domain organ segmenter."""

from medsynth.models.base import SynthesisModule
from medsynth.models.ddpm import ConditionalDDPM, DiffusionModel, EdgeGuidedDDPM, MaskGuidedDDPM
from medsynth.models.gan import GANModule
from medsynth.models.oasis import OASIS
from medsynth.models.pix2pix import Pix2Pix
from medsynth.models.sdm import SDM
from medsynth.models.segmenter import OrganSegmenter
from medsynth.models.spade import SPADE

__all__ = [
    "SynthesisModule",
    "DiffusionModel",
    "ConditionalDDPM",
    "MaskGuidedDDPM",
    "EdgeGuidedDDPM",
    "SDM",
    "GANModule",
    "Pix2Pix",
    "SPADE",
    "OASIS",
    "OrganSegmenter",
]
