"""Data: AMOS22 CT slices, the built-in phantom, and mask-derived maps."""

from medsynth.data.datamodule import PhantomDataModule, SliceDataModule, SliceDataset
from medsynth.data.edges import semantic_edges

__all__ = ["PhantomDataModule", "SliceDataModule", "SliceDataset", "semantic_edges"]
