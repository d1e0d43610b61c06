"""Data: AMOS22 CT slices, the built-in phantom, and mask-derived maps."""

from medsynth.data.cache import BadCaseError
from medsynth.data.datamodule import (
    AMOSDataModule,
    NNUNetDataModule,
    PhantomDataModule,
    SliceDataModule,
    SliceDataset,
)
from medsynth.data.edges import semantic_edges
from medsynth.data.reflow import ReflowDataModule

__all__ = [
    "AMOSDataModule",
    "BadCaseError",
    "NNUNetDataModule",
    "PhantomDataModule",
    "ReflowDataModule",
    "SliceDataModule",
    "SliceDataset",
    "semantic_edges",
]
