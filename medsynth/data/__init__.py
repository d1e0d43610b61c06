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

__all__ = [
    "AMOSDataModule",
    "BadCaseError",
    "NNUNetDataModule",
    "PhantomDataModule",
    "SliceDataModule",
    "SliceDataset",
    "semantic_edges",
]
