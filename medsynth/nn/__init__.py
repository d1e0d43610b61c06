"""Plain nn.Modules (no Lightning): diffusion UNets, SPADE, EMA."""

from medsynth.nn.unet import ConditionEncoder, DiffusionUNet, SPADEDiffusionUNet, SPADEResBlock

__all__ = ["ConditionEncoder", "DiffusionUNet", "SPADEDiffusionUNet", "SPADEResBlock"]
