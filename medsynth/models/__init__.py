"""Synthesis methods (LightningModules)."""

from medsynth.models.gan import GANModule
from medsynth.models.oasis import OASIS
from medsynth.models.pix2pix import Pix2Pix
from medsynth.models.spade import SPADE

__all__ = ["GANModule", "OASIS", "Pix2Pix", "SPADE"]
