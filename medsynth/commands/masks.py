"""``medsynth masks``: varied label volumes from existing ones (organ scaling, elastic deformation)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from medsynth.commands.common import HelpFormatter, report_error
from medsynth.io import nifti_inputs
from medsynth.masks import vary_files

__all__ = ["build_parser", "main", "parse_scale"]

#: :func:`medsynth.masks.vary_files`'s argument names in its errors -> this command's flags.
FLAGS = {
    "a range scales=[(organ, low, high)] with low < high": "a range --scale ORGAN=LO:HI",
    "scales=[(organ, low, high)]": "--scale ORGAN=FACTOR",
    "scales=": "--scale ",
    "deform_mm=MM": "--deform MM",
    "deform_mm=": "--deform ",
    "smoothness_mm=": "--smoothness ",
    "num=": "--num ",
    "output=": "--output ",
    "spacing=": "--spacing ",
    "fov_mm=": "--fov ",
}


def parse_scale(spec: str) -> tuple[str, float, float]:
    """``ORGAN=FACTOR`` or ``ORGAN=LO:HI`` -> ``(organ, lo, hi)``; a ValueError naming ``--scale``."""
    organ, sep, value = spec.partition("=")
    if not sep:
        raise ValueError(f"--scale {spec!r}: expected ORGAN=FACTOR or ORGAN=LO:HI (e.g. liver=1.3)")
    try:
        nums = [float(p) for p in value.split(":")]
    except ValueError:
        raise ValueError(f"--scale {spec!r}: factor {value!r} is not a number or LO:HI range") from None
    if len(nums) not in (1, 2) or not all(math.isfinite(x) and x > 0 for x in nums):
        raise ValueError(f"--scale {spec!r}: factors must be numbers > 0 (ORGAN=FACTOR or ORGAN=LO:HI)")
    return organ.strip(), min(nums), max(nums)


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``medsynth masks`` (arguments of :func:`medsynth.masks.vary_files`)."""
    p = argparse.ArgumentParser(
        prog="medsynth masks",
        description=(
            "Varied label volumes from existing ones (organ scaling, elastic deformation, another voxel "
            "spacing or field of view), ready for `medsynth synthesize`. Outputs keep each input's "
            "orientation (and grid, unless --spacing/--fov) and include the body class."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--input", required=True, type=Path, help="a label volume .nii.gz or a folder of them")
    p.add_argument("--output", required=True, type=Path, help="output folder (must hold no NIfTI yet)")
    p.add_argument("--num", type=int, default=4, help="varied volumes per input")
    p.add_argument("--seed", type=int, default=0, help="seeds every variant (case name and index mixed in)")
    p.add_argument(
        "--scale",
        action="append",
        default=[],
        metavar="ORGAN=FACTOR",
        help="volume factor for an organ; ORGAN=LO:HI draws it log-uniformly per variant (repeatable)",
    )
    p.add_argument("--deform", type=float, default=0.0, metavar="MM", help="largest elastic displacement")
    p.add_argument("--smoothness", type=float, default=40.0, metavar="MM", help="correlation length")
    p.add_argument(
        "--images", type=Path, default=None, help="folder of the matching CT volumes (derives the body class)"
    )
    p.add_argument(
        "--label_set",
        default="amos",
        help="the volumes' label set: amos, totalseg or a dataset.json (organ names of --scale are its names)",
    )
    p.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="resample every variant to this voxel size in mm along the file's axes (e.g. 0.8 0.8 5 for "
        "5 mm slices; default: keep the input's grid)",
    )
    p.add_argument(
        "--fov",
        type=float,
        default=None,
        metavar="MM",
        help="in-plane field of view of the variants in mm, cropped or padded about the centre (default: keep)",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """``medsynth masks``: everything checked first, then ``<case>_var<NNN>.nii.gz`` written atomically."""
    a = build_parser().parse_args(argv)
    try:
        written = vary_files(
            nifti_inputs(a.input, "--input"),
            a.output,
            num=a.num,
            seed=a.seed,
            scales=[parse_scale(s) for s in a.scale],
            deform_mm=a.deform,
            smoothness_mm=a.smoothness,
            images=a.images,
            progress=not a.no_progress,
            label_set=a.label_set,
            spacing=a.spacing,
            fov_mm=a.fov,
        )
    except (ValueError, FileNotFoundError) as err:
        return report_error("masks", err, FLAGS)
    print(f"wrote {len(written)} label volume(s) to {a.output}")
    return 0
