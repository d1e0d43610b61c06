"""The paper's result tables (Zhuang et al., Tables 1 and 2) and a Fig. 4-style figure.

A row maps metric names as logged by :class:`medsynth.callbacks.SynthesisMetrics` (``fid``,
``psnr``, ``ssim``, ``dice/<organ>``, Dice as a fraction; a ``test/`` or ``val/`` prefix is
stripped) to values. Tables list FID, PSNR, SSIM, then the 14 organ Dice columns of the paper
in its order (:data:`medsynth.labels.PAPER_DICE_ORDER`), Dice in percent; the best value of
each column is bold in Markdown and LaTeX. The paper's rows, on another dataset, are a table
of their own in a report, never bold against a run's rows.

Metrics beyond the paper get sections of their own (:func:`section_tables`), after the table in
the Markdown file and one CSV each: FRD beside FID, the memorization check, organ statistics
in HU.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from medsynth.labels import CLASSES, PAPER_DICE_ORDER, LabelSet, colorize

__all__ = [
    "DICE_HEADERS",
    "COLUMNS",
    "PAPER_TABLE1",
    "PAPER_TABLE2",
    "paper_rows",
    "normalize_row",
    "format_table",
    "scored_columns",
    "write_report",
    "section_tables",
    "format_sections",
    "comparison_figure",
    "zoom_box",
    "volume_views_figure",
]

#: Column headers of the paper's Dice columns, in its order.
DICE_HEADERS: tuple[str, ...] = (
    "Sple.",
    "Liv.",
    "Kid_l",
    "Kid_r",
    "Panc.",
    "Stom.",
    "Aorta",
    "Gall_bld",
    "Espo.",
    "Adr_r",
    "Adr_l",
    "Duod.",
    "Cava",
    "Bladder",
)
#: (metric key, header, lower is better, scale for display, decimals)
COLUMNS: tuple[tuple[str, str, bool, float, int], ...] = (
    ("fid", "FID", True, 1.0, 2),
    ("psnr", "PSNR", False, 1.0, 2),
    ("ssim", "SSIM", False, 1.0, 3),
) + tuple((f"dice/{CLASSES[i].name}", h, False, 100.0, 1) for i, h in zip(PAPER_DICE_ORDER, DICE_HEADERS))


def _paper_row(fid: float, psnr: float, ssim: float, *dice_percent: float) -> dict[str, float]:
    if len(dice_percent) != len(PAPER_DICE_ORDER):
        raise ValueError(f"need {len(PAPER_DICE_ORDER)} Dice values, got {len(dice_percent)}")
    row = {"fid": fid, "psnr": psnr, "ssim": ssim}
    row.update({f"dice/{CLASSES[i].name}": d / 100.0 for i, d in zip(PAPER_DICE_ORDER, dice_percent)})
    return row


# fmt: off
#: Table 2 of the paper (comparison, 150k iterations for the DDPMs).
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "Pix2Pix": _paper_row(78.86, 15.04, 0.561, 79.3, 94.7, 94.5, 92.0, 68.8, 86.5, 80.8, 53.5, 67.9, 58.4, 61.8, 61.0, 75.9, 56.0),
    "OASIS": _paper_row(43.57, 14.75, 0.560, 91.8, 93.5, 92.0, 88.1, 73.4, 88.9, 88.6, 78.9, 80.1, 69.0, 75.6, 71.7, 86.3, 74.5),
    "SPADE": _paper_row(60.22, 15.27, 0.594, 92.6, 95.4, 92.7, 91.2, 66.6, 86.5, 86.2, 44.8, 65.6, 61.7, 59.3, 59.5, 79.1, 63.9),
    "SDM": _paper_row(12.68, 15.12, 0.607, 91.9, 94.3, 93.5, 93.2, 79.3, 87.8, 89.0, 71.9, 77.5, 69.7, 69.6, 66.7, 81.5, 66.2),
    "Conditional DDPM": _paper_row(10.56, 16.26, 0.646, 94.0, 95.6, 93.9, 91.2, 76.3, 86.4, 90.8, 64.0, 78.2, 67.2, 66.0, 65.6, 80.9, 70.0),
    "Mask-guided DDPM": _paper_row(10.58, 16.28, 0.646, 93.9, 95.6, 93.9, 90.9, 75.6, 87.1, 91.3, 66.0, 79.5, 67.2, 65.1, 65.6, 81.3, 70.7),
    "Edge-guided DDPM": _paper_row(10.64, 16.20, 0.646, 93.9, 95.4, 93.8, 92.8, 75.0, 86.7, 90.3, 64.5, 78.1, 65.4, 64.1, 65.3, 79.6, 69.3),
}
#: Table 1 of the paper (training iterations study), keyed by "<iterations> <method>".
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "50k Conditional DDPM": _paper_row(30.57, 14.17, 0.589, 77.6, 75.0, 91.1, 87.8, 57.3, 60.6, 90.4, 30.4, 66.4, 54.1, 53.8, 61.7, 77.7, 64.4),
    "50k Mask-guided DDPM": _paper_row(19.06, 14.58, 0.603, 83.9, 84.8, 90.3, 90.2, 62.1, 73.4, 89.2, 40.0, 73.2, 53.2, 56.6, 54.1, 75.2, 57.0),
    "50k Edge-guided DDPM": _paper_row(35.97, 13.43, 0.576, 56.4, 56.7, 86.6, 82.5, 51.2, 52.2, 86.8, 10.6, 58.3, 52.6, 58.2, 53.6, 73.7, 61.2),
    "100k Conditional DDPM": _paper_row(11.27, 16.07, 0.643, 93.8, 95.3, 93.9, 92.5, 73.8, 85.0, 91.1, 64.5, 76.6, 66.5, 62.8, 65.1, 81.0, 70.8),
    "100k Mask-guided DDPM": _paper_row(10.89, 16.10, 0.642, 93.8, 95.8, 93.9, 93.1, 75.3, 86.9, 91.5, 63.9, 79.6, 65.9, 68.5, 68.0, 82.5, 71.6),
    "100k Edge-guided DDPM": _paper_row(10.32, 16.14, 0.644, 93.6, 95.1, 94.1, 93.4, 73.8, 85.1, 90.8, 65.0, 77.3, 64.9, 64.1, 64.5, 80.6, 71.0),
    "150k Conditional DDPM": _paper_row(10.56, 16.26, 0.646, 94.0, 95.6, 93.9, 91.2, 76.3, 86.4, 90.8, 64.0, 78.2, 67.2, 66.0, 65.6, 80.9, 70.0),
    "150k Mask-guided DDPM": _paper_row(10.58, 16.28, 0.646, 93.9, 95.6, 93.9, 90.9, 75.6, 87.1, 91.3, 66.0, 79.5, 67.2, 65.1, 65.6, 81.3, 70.7),
    "150k Edge-guided DDPM": _paper_row(10.64, 16.20, 0.646, 93.5, 95.4, 93.8, 92.8, 75.0, 86.7, 90.3, 64.5, 78.1, 65.4, 64.1, 65.3, 79.6, 69.3),
}
# fmt: on


def paper_rows(table: int = 2, suffix: str = " (paper)") -> dict[str, dict[str, float]]:
    """The published rows of Table 1 or 2, names marked with ``suffix``."""
    if table not in (1, 2):
        raise ValueError(f"table must be 1 or 2, got {table!r}")
    src = PAPER_TABLE1 if table == 1 else PAPER_TABLE2
    return {f"{name}{suffix}": dict(row) for name, row in src.items()}


def normalize_row(metrics: Mapping[str, float | Tensor]) -> dict[str, float]:
    """Strip ``test/`` / ``val/`` prefixes and convert tensors to floats."""
    out = {}
    for k, v in metrics.items():
        for prefix in ("test/", "val/"):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = float(v)
    return out


def _best(rows: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    best = {}
    for key, _h, lower, _s, _d in COLUMNS:
        vals = [r[key] for r in rows.values() if key in r and not math.isnan(r[key])]
        if vals:
            best[key] = min(vals) if lower else max(vals)
    return best


def scored_columns(rows: Mapping[str, Mapping[str, float | Tensor]]) -> tuple[tuple, ...]:
    """The :data:`COLUMNS` some row has a value for, Dice columns only where some row's Dice is
    above 0 (an organ the segmenter found nowhere, real slices included, says nothing)."""
    norm = [normalize_row(r) for r in rows.values()]

    def shown(key: str) -> bool:
        vals = [r[key] for r in norm if key in r and not math.isnan(r[key])]
        return bool(vals) and (not key.startswith("dice/") or max(vals) > 0)

    return tuple(c for c in COLUMNS if shown(c[0]))


def format_table(
    rows: Mapping[str, Mapping[str, float | Tensor]],
    fmt: str = "markdown",
    columns: Sequence[tuple[str, str, bool, float, int]] = COLUMNS,
) -> str:
    """The table in "markdown", "csv" (raw numbers, Dice in percent) or "latex"; the best value of
    each column among ``rows`` is bold (Markdown, LaTeX). ``columns``: a subset of :data:`COLUMNS`
    (e.g. :func:`scored_columns`)."""
    if fmt not in ("markdown", "csv", "latex"):
        raise ValueError(f"fmt must be 'markdown', 'csv' or 'latex', got {fmt!r}")
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"columns must be entries of COLUMNS, got {unknown}")
    COLS = tuple(columns)  # noqa: N806 - the columns of this table
    norm = {name: normalize_row(r) for name, r in rows.items()}
    best = _best(norm)
    headers = ["Method"] + [h for _k, h, _l, _s, _d in COLS]

    def cell(row: Mapping[str, float], col: tuple) -> str:
        key, _h, _l, scale, dec = col
        v = row.get(key)
        if v is None or math.isnan(v):
            return "" if fmt == "csv" else "-"
        if fmt == "csv":
            return repr(v * scale)
        text = f"{v * scale:.{dec}f}"
        if key in best and round(v * scale, dec) == round(best[key] * scale, dec):
            text = f"**{text}**" if fmt == "markdown" else f"\\textbf{{{text}}}"
        return text

    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(headers)
        for name, r in norm.items():
            w.writerow([name] + [cell(r, c) for c in COLS])
        return buf.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] + ["---:"] * len(COLS)) + "|"]
        lines += ["| " + " | ".join([name] + [cell(r, c) for c in COLS]) + " |" for name, r in norm.items()]
        return "\n".join(lines) + "\n"
    arrows = {"fid": "FID $\\downarrow$", "psnr": "PSNR $\\uparrow$", "ssim": "SSIM $\\uparrow$"}
    n_dice = sum(c[0].startswith("dice/") for c in COLS)
    group = f" & \\multicolumn{{{len(COLS) - n_dice}}}{{c}}{{}}" if len(COLS) > n_dice else ""
    if n_dice:
        group += f" & \\multicolumn{{{n_dice}}}{{c}}{{DSC (\\%) $\\uparrow$}}"
    lines = [
        "\\begin{tabular}{l" + "r" * len(COLS) + "}",
        "\\toprule",
        group + " \\\\",
        "Method & " + " & ".join(arrows.get(k, h).replace("_", "\\_") for k, h, *_ in COLS) + " \\\\",
        "\\midrule",
    ]
    for name, r in norm.items():
        lines.append(" & ".join([name.replace("_", "\\_")] + [cell(r, c) for c in COLS]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


#: Section name -> (title, what it shows), in the order they appear.
SECTIONS: dict[str, tuple[str, str]] = {
    "distances": (
        "Distribution distances",
        "FRD v1 (ln d², radiomics features, no download) beside FID; lower is better; compare "
        "methods on the same slices only.",
    ),
    "memorization": (
        "Memorization",
        "Nearest-training-slice distances of the synthetic slices and of the real held-out slices "
        "(quantiles); copy rate = share of synthetic slices nearer than the 5th percentile of the real "
        "ones (about 5 % for a generator that does not copy). Pixel distances are RMS in window units "
        "(x 400 = HU).",
    ),
    "hu": (
        "Organ statistics in HU",
        "Median [Q1, Q3] in HU inside each class of the input masks, real vs synthetic, from 1-HU "
        "histograms; error = synthetic median - real median (HU, and in window units).",
    ),
}
_MEMO_QUANTILES = ("q05", "q50", "q95")
_HU_STATS = (
    "real_median",
    "real_q1",
    "real_q3",
    "synthetic_median",
    "synthetic_q1",
    "synthetic_q3",
    "median_error",
    "median_error_window",
)


def section_tables(
    rows: Mapping[str, Mapping[str, float | Tensor]],
) -> dict[str, tuple[list[str], list[list[str | float]]]]:
    """The extra sections' tables, ``{section: (headers, rows)}``, for the sections with data.

    Args:
        rows: Method -> metrics as logged (``frd``, ``memorization/<space>/<stat>``,
            ``hu/<class>/<stat>``; prefixes stripped as in :func:`normalize_row`).
    """
    norm = {name: normalize_row(r) for name, r in rows.items()}
    tables: dict[str, tuple[list[str], list[list[str | float]]]] = {}
    dist = [[n, r.get("frd", math.nan), r.get("fid", math.nan)] for n, r in norm.items() if "frd" in r]
    if dist:
        tables["distances"] = (["Method", "FRD", "FID"], dist)
    memo = []
    for n, r in norm.items():
        for space in ("pixel", "feature"):
            k = f"memorization/{space}/"
            if k + "copy_rate" in r:
                memo.append(
                    [n, space, r[k + "copy_rate"], r[k + "threshold"]]
                    + [r.get(f"{k}synthetic_{q}", math.nan) for q in _MEMO_QUANTILES]
                    + [r.get(f"{k}real_{q}", math.nan) for q in _MEMO_QUANTILES]
                )
    if memo:
        headers = ["Method", "Space", "Copy rate", "Threshold"]
        headers += [f"Synthetic {q}" for q in _MEMO_QUANTILES] + [f"Real {q}" for q in _MEMO_QUANTILES]
        tables["memorization"] = (headers, memo)
    hu = []
    for n, r in norm.items():
        organs = dict.fromkeys(k.split("/")[1] for k in r if k.startswith("hu/") and k.count("/") == 2)
        for organ in organs:
            g = {stat: r.get(f"hu/{organ}/{stat}", math.nan) for stat in _HU_STATS}
            hu.append([n, organ, *g.values()])
    if hu:
        tables["hu"] = (["Method", "Class", *_HU_STATS], hu)
    return tables


def _md_cell(value: str | float, spec: str) -> str:
    if isinstance(value, str):
        return value
    return "-" if math.isnan(value) else format(value, spec)


def format_sections(rows: Mapping[str, Mapping[str, float | Tensor]]) -> str:
    """The extra sections as Markdown (empty when the rows hold none of their metrics)."""
    parts = []
    for key, (headers, body) in section_tables(rows).items():
        title, text = SECTIONS[key]
        left = [isinstance(v, str) for v in body[0]]  # label columns left, numbers right
        if key == "hu":  # median [Q1, Q3] per set in one cell each
            headers = [
                "Method",
                "Class",
                "Real median [Q1, Q3]",
                "Synthetic median [Q1, Q3]",
                "Error (HU)",
                "Error (window)",
            ]
            body = [
                [
                    r[0],
                    r[1],
                    f"{r[2]:.1f} [{r[3]:.1f}, {r[4]:.1f}]",
                    f"{r[5]:.1f} [{r[6]:.1f}, {r[7]:.1f}]",
                    f"{r[8]:+.1f}",
                    f"{r[9]:+.4f}",
                ]
                for r in body
            ]
            left = left[:6]
        spec = ".3g" if key == "memorization" else ".2f"  # distances span orders of magnitude
        lines = [f"## {title}", "", text, "", "| " + " | ".join(headers) + " |"]
        lines.append("|" + "|".join(":---" if t else "---:" for t in left) + "|")
        lines += ["| " + " | ".join(_md_cell(v, spec) for v in r) + " |" for r in body]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def write_report(
    rows: Mapping[str, Mapping[str, float | Tensor]],
    out_dir: str | os.PathLike,
    reference: int | None = 2,
    name: str = "results",
) -> dict[str, Path]:
    """Write ``<name>.md``, ``<name>.csv`` and ``<name>.tex``; ``reference`` adds the paper's
    Table 1 or 2 rows (None: none) as a table of their own (other data: never compared or bold
    against this run's rows; in the CSV after them). This run's table shows the columns some row
    has a value for, and Dice only for organs some row scores above 0 (:func:`scored_columns`). Rows with FRD, memorization or HU metrics add their sections
    to the Markdown file and ``<name>_<section>.csv`` files (:func:`section_tables`). Returns the
    paths by format / section."""
    published = paper_rows(reference) if reference is not None else {}
    columns = scored_columns(rows) or COLUMNS
    left_out = [h for k, h, *_ in COLUMNS if k.startswith("dice/") and (k, h, *_) not in columns]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt, ext in (("markdown", "md"), ("csv", "csv"), ("latex", "tex")):
        p = out / f"{name}.{ext}"
        if fmt == "csv":  # raw numbers: every column, the published rows after this run's
            text = format_table({**rows, **published}, fmt)
        else:
            text = format_table(rows, fmt, columns)
        if fmt == "markdown" and left_out and any(k.startswith("dice/") for k, *_ in columns):
            text += f"\nDice left out where no row scores above 0 (the segmenter finds no such organ): {', '.join(left_out)}.\n"
        if published:  # another dataset: a table of its own, never bold against this run
            title = (
                f"Published reference: Zhuang et al., Table {reference} (AMOS22 test set, 256x256). "
                "Other data and settings: not comparable with the rows above."
            )
            if fmt == "markdown":
                text += f"\n{title}\n\n" + format_table(published, fmt)
            elif fmt == "latex":
                text += f"% {title}\n" + format_table(published, fmt)
        if fmt == "markdown" and (sections := format_sections(rows)):
            text += "\n" + sections
        p.write_text(text)
        paths[fmt] = p
    for key, (headers, body) in section_tables(rows).items():
        p = out / f"{name}_{key}.csv"
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(headers)
        w.writerows([[v if isinstance(v, str) else repr(float(v)) for v in r] for r in body])
        p.write_text(buf.getvalue())
        paths[key] = p
    return paths


def comparison_figure(
    masks: Tensor | np.ndarray,
    outputs: Mapping[str, Tensor | np.ndarray],
    path: str | os.PathLike,
    real: Tensor | np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    dpi: int = 150,
    label_set: LabelSet | None = None,
    zoom: float | None = None,
) -> Path:
    """A PNG like the paper's Fig. 4: one row per slice; the mask in class colours, optionally
    the real slice, then each method's synthetic slice; column titles wrapped to fit their panel
    and a colour legend of the classes shown.

    With ``zoom``, each slice's row is followed by a row of the same square crop of every panel
    (side ``zoom`` x the slice's, centred on the slice's organs, outlined on the full panels),
    where texture, edges and small structures can be told apart.

    Args:
        masks: ``[n, H, W]`` class ids of ``label_set``.
        outputs: Method name -> ``[n, 1, H, W]`` (or ``[n, H, W]``) in [0, 1].
        path: Output PNG.
        real: Optional real slices, same shape as the outputs.
        titles: Optional row labels.
        label_set: The masks' classes, for colours and legend (None: AMOS's).
        zoom: Side of the crop as a fraction of the slice's, in (0, 1); None: no crop rows.
    """
    import matplotlib.pyplot as plt

    fig = _comparison_fig(masks, outputs, real, titles, label_set, zoom)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


#: Characters per line of a column title (2-inch panels, 9 pt).
TITLE_WIDTH = 20


def zoom_box(mask: np.ndarray, zoom: float, classes: Sequence) -> tuple[int, int, int]:
    """The crop ``(top, left, side)`` of :func:`comparison_figure`: a square of side
    ``round(zoom * min(H, W))`` centred on the centroid of the organ pixels of ``mask`` ``[H, W]``
    (not background, not ``body``; the slice's centre when it has none), shifted to lie inside."""
    if not 0.0 < zoom < 1.0:
        raise ValueError(f"zoom must be in (0, 1), got {zoom}")
    h, w = mask.shape
    side = max(1, round(zoom * min(h, w)))
    skip = [c.index for c in classes if c.index == 0 or c.name == "body"]
    ys, xs = np.nonzero(~np.isin(mask, skip))
    cy, cx = (ys.mean(), xs.mean()) if len(ys) else ((h - 1) / 2, (w - 1) / 2)
    top = int(np.clip(round(cy - (side - 1) / 2), 0, h - side))
    left = int(np.clip(round(cx - (side - 1) / 2), 0, w - side))
    return top, left, side


def _comparison_fig(
    masks: Tensor | np.ndarray,
    outputs: Mapping[str, Tensor | np.ndarray],
    real: Tensor | np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    label_set: LabelSet | None = None,
    zoom: float | None = None,
):
    """The matplotlib figure of :func:`comparison_figure` (not saved)."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    m = np.asarray(torch.as_tensor(masks).cpu())
    if m.ndim != 3:
        raise ValueError(f"masks must have shape [n, H, W], got {m.shape}")
    classes = CLASSES if label_set is None else label_set.classes
    cols: list[tuple[str, np.ndarray]] = [
        ("Mask", (colorize if label_set is None else label_set.colorize)(m))
    ]

    def gray(x, name: str) -> np.ndarray:
        a = np.asarray(torch.as_tensor(x).detach().cpu().float())
        a = a[:, 0] if a.ndim == 4 else a
        if a.shape != m.shape:
            raise ValueError(f"{name} has shape {a.shape}, expected {m.shape}")
        return np.clip(a, 0.0, 1.0)

    if real is not None:
        cols.append(("Real", gray(real, "real")))
    cols += [(name, gray(x, name)) for name, x in outputs.items()]
    n = m.shape[0]
    wrapped = ["\n".join(textwrap.wrap(name, TITLE_WIDTH)) or name for name, _ in cols]
    title_lines = max(t.count("\n") + 1 for t in wrapped)
    present = [c for c in classes if c.index != 0 and (m == c.index).any()]
    # legend entries per line: a swatch and padding (0.45 in) and the name at 6.5 pt (~0.055 in a
    # character) each, as many as the figure's width holds (long names: "adrenal gland right")
    entry_in = 0.45 + 0.055 * max((len(k.name) for k in present), default=0)
    per_row = max(1, int(2.0 * len(cols) / entry_in))
    legend_lines = -(-len(present) // per_row)
    legend_h = 0.22 * legend_lines + (0.1 if present else 0.0)  # inches
    boxes = [zoom_box(m[r], zoom, classes) for r in range(n)] if zoom is not None else None
    per_slice = 1 if boxes is None else 2  # figure rows per slice: the slice, then its crop
    height = 2.0 * n * per_slice + 0.16 * (title_lines - 1) + legend_h
    fig, axes = plt.subplots(n * per_slice, len(cols), figsize=(2.0 * len(cols), height), squeeze=False)
    for r in range(n):
        for c, (_, arr) in enumerate(cols):
            ax = axes[r * per_slice][c]
            cmap = None if arr.ndim == 4 else "gray"
            ax.imshow(arr[r], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(wrapped[c], fontsize=9)
            if c == 0 and titles is not None:
                ax.set_ylabel(titles[r], fontsize=8)
            if boxes is not None:
                top, left, side = boxes[r]
                outline = Rectangle((left - 0.5, top - 0.5), side, side, fill=False, ec="yellow", lw=0.8)
                ax.add_patch(outline)
                crop = axes[r * per_slice + 1][c]  # [side, side(, 3)]
                crop.imshow(
                    arr[r, top : top + side, left : left + side],
                    cmap=cmap,
                    vmin=0.0,
                    vmax=1.0,
                    interpolation="nearest",
                )
                crop.set_xticks([])
                crop.set_yticks([])
                if c == 0:
                    crop.set_ylabel(f"zoom x{min(m.shape[1:]) / side:.1f}", fontsize=8)
    if present:
        handles = [
            Patch(facecolor=np.array(k.color) / 255.0, edgecolor="0.4", label=k.name.replace("_", " "))
            for k in present
        ]
        fig.legend(handles=handles, loc="lower center", ncol=per_row, fontsize=6.5, frameon=False)
    fig.tight_layout(rect=(0.0, legend_h / height, 1.0, 1.0))
    return fig


def volume_views_figure(
    volumes: Mapping[str, Tensor | np.ndarray],
    path: str | os.PathLike,
    *,
    z_aspect: float = 1.0,
    row: int | None = None,
    column: int | None = None,
    vmin: float = 0.0,
    vmax: float = 1.0,
    dpi: int = 150,
) -> Path:
    """A PNG of the sagittal (top row) and coronal (bottom row) cuts of volumes side by side.

    Args:
        volumes: Column title -> ``[D, H, W]`` (slice 0 the most inferior), e.g. ``{"real": ...,
            "2.5D": ...}``; all of one shape.
        path: Output PNG.
        z_aspect: Slice spacing / in-plane pixel spacing (each axial slice drawn that many pixels tall).
        row, column: The coronal cut's row and the sagittal cut's column (None: the middle).
        vmin, vmax: Grey-level range (0..1: windowed images).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from medsynth.metrics.volume import orthogonal_views

    if not volumes:
        raise ValueError("volumes is empty")
    views = {k: orthogonal_views(v, row, column) for k, v in volumes.items()}
    shapes = {k: np.asarray(torch.as_tensor(v).shape) for k, v in volumes.items()}
    if len({tuple(s) for s in shapes.values()}) != 1:
        raise ValueError(f"volumes differ in shape: { {k: tuple(s) for k, s in shapes.items()} }")
    n = len(views)
    d, h, w = next(iter(shapes.values()))
    height = d * z_aspect
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 2.2 * height / max(h, w) * 2 + 0.6), squeeze=False)
    for j, (title, (sagittal, coronal)) in enumerate(views.items()):
        for i, (img, name) in enumerate(((sagittal, "sagittal"), (coronal, "coronal"))):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, aspect=z_aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
            if j == 0:  # horizontal: a slab of a few slices is a thin strip, shorter than the word
                ax.set_ylabel(name, fontsize=9, rotation=0, ha="right", va="center")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
