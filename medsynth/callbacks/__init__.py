"""Lightning callbacks: the paper's metrics (exact under DDP), image grids, progress for logs, and a
ModelCheckpoint whose last.ckpt holds the final weights."""

from medsynth.callbacks.checkpoint import ModelCheckpoint
from medsynth.callbacks.images import SynthesisImageGrid, comparison_grid, overlay
from medsynth.callbacks.metrics import SynthesisMetrics
from medsynth.callbacks.progress import LogProgressBar, StepProgressBar
from medsynth.random import slice_generators, slice_seed

__all__ = [
    "ModelCheckpoint",
    "SynthesisMetrics",
    "SynthesisImageGrid",
    "LogProgressBar",
    "StepProgressBar",
    "comparison_grid",
    "overlay",
    "slice_seed",
    "slice_generators",
]
