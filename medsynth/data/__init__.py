"""Data: AMOS22 CT slices, the built-in phantom, and mask-derived maps."""

from medsynth.data.edges import semantic_edges

__all__ = ["semantic_edges"]
