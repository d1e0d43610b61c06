"""Synthesis methods (LightningModules) and the in-domain organ segmenter."""

from medsynth.models.base import SynthesisModule
from medsynth.models.segmenter import OrganSegmenter

__all__ = ["SynthesisModule", "OrganSegmenter"]
