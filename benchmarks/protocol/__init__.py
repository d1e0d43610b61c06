"""The quality protocol of benchmarks/quality.py in importable pieces, for every benchmark that
trains, scores or reports the same way (the phantom today; a real-CT data module plugs in).

- :mod:`.budget`: training under a budget: wall clock (``--budget`` minutes) or steps from an
  idle-machine calibration (:func:`calibrate`, :func:`step_budget`), checkpoints at 25 / 50 / 100 %
  (:class:`BudgetCheckpoints`), the quiet Trainer, :func:`train_method`;
- :mod:`.methods`: the methods' recipes (:data:`METHODS`), building and loading them;
- :mod:`.data`: the phantom split and the evaluation slices of any slice data module;
- :mod:`.scoring`: :func:`score` (PSNR, SSIM, organ intensity errors, segmenter Dice and FD) with
  the organ table a parameter, :func:`aggregate` over seeds, :func:`synthesize` with per-slice
  generators, the segmenter's features;
- :mod:`.references`: the real-slice and class-mean-painting rows;
- :mod:`.resume`: continuing a run, where it ran, atomic writes;
- :mod:`.report`: Markdown tables, the paper's claims, the result files and the figure;
- :mod:`.run`: the whole protocol (:func:`run_quality`) and the sampler comparison.

Import it as ``benchmarks.protocol`` from the repository root (the scripts in benchmarks/ put
the root on ``sys.path`` themselves).
"""

from .budget import (
    FRACTIONS,
    BudgetCheckpoints,
    CalibrationError,
    StepTimer,
    calibrate,
    calibration_entry,
    check_calibration,
    checkpoint_steps,
    diffusion_steps,
    quiet_trainer,
    read_calibration,
    step_budget,
    train_method,
    trained_checkpoints,
    write_calibration,
)
from .data import eval_slices, phantom, training_images
from .methods import (
    DIFFUSION,
    DIFFUSION_RECIPE,
    GANS,
    METHODS,
    build_model,
    load_model,
    method_class,
    recipe_from_config,
    recipes,
)
from .references import painting_row, reference_rows, training_class_means
from .report import (
    claims,
    fmt,
    markdown,
    rank_agreement,
    sampler_markdown,
    within_2pct,
    write_figure,
    write_quality,
)
from .resume import (
    RUN_SETTINGS,
    ResumeError,
    atomic_write,
    check_compatible,
    check_settings,
    machine,
    previous_results,
    sha256,
)
from .run import Settings, calibrate_methods, check_score_fractions, figure_slices, run_quality, run_samplers
from .scoring import (
    TARGET_ORGANS,
    SegmenterFeatures,
    aggregate,
    combine,
    frd_scorer,
    load_segmenter,
    memorization_scorer,
    organ_hu_scorer,
    organ_scores,
    organ_table,
    save_segmenter,
    score,
    synthesize,
    train_segmenter,
)

__all__ = [
    "DIFFUSION",
    "DIFFUSION_RECIPE",
    "FRACTIONS",
    "GANS",
    "METHODS",
    "RUN_SETTINGS",
    "TARGET_ORGANS",
    "BudgetCheckpoints",
    "CalibrationError",
    "ResumeError",
    "SegmenterFeatures",
    "Settings",
    "StepTimer",
    "aggregate",
    "combine",
    "frd_scorer",
    "memorization_scorer",
    "organ_hu_scorer",
    "atomic_write",
    "build_model",
    "calibrate",
    "calibrate_methods",
    "check_score_fractions",
    "calibration_entry",
    "check_calibration",
    "check_compatible",
    "check_settings",
    "checkpoint_steps",
    "claims",
    "diffusion_steps",
    "eval_slices",
    "figure_slices",
    "fmt",
    "load_model",
    "load_segmenter",
    "machine",
    "markdown",
    "rank_agreement",
    "method_class",
    "organ_scores",
    "organ_table",
    "painting_row",
    "phantom",
    "previous_results",
    "quiet_trainer",
    "read_calibration",
    "recipe_from_config",
    "recipes",
    "reference_rows",
    "run_quality",
    "run_samplers",
    "sampler_markdown",
    "save_segmenter",
    "score",
    "sha256",
    "step_budget",
    "synthesize",
    "train_method",
    "training_images",
    "trained_checkpoints",
    "train_segmenter",
    "training_class_means",
    "within_2pct",
    "write_calibration",
    "write_figure",
    "write_quality",
]
