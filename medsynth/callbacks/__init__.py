"""Lightning callbacks: the paper's metrics (exact under DDP) and image grids."""

from medsynth.callbacks.images import SynthesisImageGrid, comparison_grid, overlay
from medsynth.callbacks.metrics import SynthesisMetrics, slice_seed

__all__ = ["SynthesisMetrics", "SynthesisImageGrid", "comparison_grid", "overlay", "slice_seed"]
