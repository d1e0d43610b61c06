"""Synthesis methods (LightningModules)."""

from medsynth.models.base import SynthesisModule
from medsynth.models.ddpm import ConditionalDDPM, DiffusionModel, EdgeGuidedDDPM, MaskGuidedDDPM
from medsynth.models.sdm import SDM

__all__ = ["SynthesisModule", "DiffusionModel", "ConditionalDDPM", "MaskGuidedDDPM", "EdgeGuidedDDPM", "SDM"]
