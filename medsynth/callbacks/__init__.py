"""Lightning callbacks: the paper's metrics (exact under DDP) and image grids."""

from medsynth.callbacks.images import SynthesisImageGrid, comparison_grid, overlay
from medsynth.callbacks.metrics import SynthesisMetrics
from medsynth.random import slice_generators, slice_seed

__all__ = [
    "SynthesisMetrics",
    "SynthesisImageGrid",
    "comparison_grid",
    "overlay",
    "slice_seed",
    "slice_generators",
]
