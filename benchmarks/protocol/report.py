"""The protocol's report: Markdown tables, the paper's claims checked on a run, the result files.

Everything here reads a result dict as :func:`~benchmarks.protocol.run.run_quality` writes it to
``quality.json`` (``real``, ``painting``, ``methods: {name: {fraction: {"step", "metrics"}}}``,
...), so a table can be rebuilt from the file alone.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .methods import DIFFUSION, GANS
from .resume import atomic_write

__all__ = [
    "claims",
    "fmt",
    "hu_table",
    "markdown",
    "organ_names",
    "rank_agreement",
    "sampler_markdown",
    "within_2pct",
    "write_figure",
    "write_quality",
]

#: The columns of the main table: (header, metric key, digits).
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("PSNR", "psnr", 2),
    ("SSIM", "ssim", 3),
    ("background", "background", 3),
    ("organ err mean", "err/mean", 3),
    ("organ err max", "err/max", 3),
    ("Dice (synthetic)", "dice/mean", 3),
    ("FD (segmenter)", "frechet_seg", 4),
)


def fmt(cell: Mapping[str, float] | None, digits: int = 2) -> str:
    """``mean ± sd`` (``mean`` alone for SD 0, ``—`` for a missing or non-finite cell)."""
    if cell is None or not math.isfinite(cell["mean"]):
        return "—"
    return (
        f"{cell['mean']:.{digits}f} ± {cell['sd']:.{digits}f}" if cell["sd"] else f"{cell['mean']:.{digits}f}"
    )


def organ_names(results: Mapping[str, Any]) -> list[str]:
    """The organs of a result, in table order (from the real row's ``err/<organ>`` keys)."""
    return [k[4:] for k in results["real"] if k.startswith("err/") and k not in ("err/max", "err/mean")]


def _reference_rows(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    rows = {"real slices": results["real"], "class-mean painting": results["painting"]}
    if "painting_rich" in results:
        rows[f"class-mean painting ({results['label_set']} labels)"] = results["painting_rich"]
    return rows


def _where(results: Mapping[str, Any]) -> list[str]:
    """The 'Trained on' line: a run continued with --resume can span machines."""
    runs = results.get("runs") or {}
    if not runs:
        return []
    where: dict[str, list[str]] = {}
    for name, r in runs.items():
        label = f"{r['date']}, {r.get('gpu') or r['cpu']}, {r['threads']} threads"
        where.setdefault(label, []).append(name)
    unrecorded = [n for n in results["methods"] if n not in runs]  # parts run before runs existed
    if unrecorded:
        where["not recorded"] = unrecorded
    return ["", "Trained on: " + "; ".join(f"{', '.join(n)}: {w}" for w, n in where.items()) + "."]


def _step_budget(results: Mapping[str, Any]) -> list[str]:
    """The line that says how a step budget was set (a run with --calibration); an entry's ``note``
    (e.g. an s/step set by hand rather than timed) is printed with it."""
    cal = results.get("calibration")
    if not cal:
        return []
    parts = [
        f"{n}: {c['steps']} steps at {c['seconds_per_step']:.4g} s/step ({c['date']}, {c.get('gpu') or c['cpu']}, "
        f"{c['threads']} threads{'; ' + c['note'] if c.get('note') else ''})"
        for n, c in cal.items()
    ]
    return [
        "",
        "Step budget: each method trained for round(budget x 60 / s per step) steps, its seconds per "
        "step timed once and kept in a calibration file, so the budget does not shrink under load; "
        + "; ".join(parts)
        + ".",
    ]


def markdown(results: Mapping[str, Any]) -> str:
    """``quality.md``: the main table (references, then each method at each fraction of the
    budget), the per-organ table at 100 %, and the paper's claims on this run."""
    organs = organ_names(results)
    lines = [
        f"{results.get('dataset', 'Phantom 64x64')}, trained on {results.get('label_set', 'amos')} labels, "
        f"budget {results['budget_min']} min per method, {results['num_eval']} test slices, "
        f"seeds {results['seeds']}, sampler {results['sampler']} ({results['num_steps']} steps) for the "
        f"diffusion models; mean ± SD over seeds. Segmenter Dice on real slices: "
        f"{results['real']['dice/mean']['mean']:.3f} (mean over {', '.join(organs)}). "
        "FD (segmenter) is a Fréchet distance in the in-domain segmenter's feature space: NOT FID, "
        "comparable only within this table.",
        *_where(results),
        *_step_budget(results),
        "",
        "| method | budget | steps | " + " | ".join(c[0] for c in COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for label, row in _reference_rows(results).items():
        lines.append(f"| {label} | — | — | " + " | ".join(fmt(row.get(k), d) for _, k, d in COLUMNS) + " |")
    for name, per in results["methods"].items():
        for frac, entry in per.items():
            m = entry["metrics"]
            lines.append(
                f"| {name} | {round(100 * float(frac))}% | {entry['step']} | "
                + " | ".join(fmt(m.get(k), d) for _, k, d in COLUMNS)
                + " |"
            )
    lines += [
        "",
        "Per-organ mean-intensity error (window units) and segmenter Dice at 100% of the budget:",
        "",
        "| method | "
        + " | ".join(f"err {o}" for o in organs)
        + " | "
        + " | ".join(f"Dice {o}" for o in organs)
        + " |",
        "|---|" + "---|" * (2 * len(organs)),
    ]
    rows = dict(_reference_rows(results))
    rows.update({n: per["1.0"]["metrics"] for n, per in results["methods"].items() if "1.0" in per})
    for label, m in rows.items():
        lines.append(
            f"| {label} | "
            + " | ".join(fmt(m.get(f"err/{o}"), 3) for o in organs)
            + " | "
            + " | ".join(fmt(m.get(f"dice/{o}"), 3) for o in organs)
            + " |"
        )
    lines += hu_table(rows, organs)
    lines += distribution_table(rows)
    found = claims(results)
    if found:
        lines += ["", "Claims of Zhuang et al. on this run:", ""] + [f"- {c}" for c in found]
    return "\n".join(lines) + "\n"


def hu_table(rows: Mapping[str, Mapping[str, Any]], organs: Sequence[str]) -> list[str]:
    """Markdown lines of the organ statistics in HU at 100 % (``--hu``): per organ the synthetic
    minus real median and the synthetic IQR (the real row: its own IQR); else no lines."""
    if not any("hu/abs_max" in m for m in rows.values()):
        return []
    lines = [
        "",
        "Organ statistics in HU at 100% of the budget: per organ, median HU of the synthetic pixels minus the "
        "real ones, pooled over the test slices, and the IQR of the synthetic pixels (real row: the real IQR); "
        "largest |error| over the organs first.",
        "",
        "| method | largest error | " + " | ".join(organs) + " |",
        "|---|---|" + "---|" * len(organs),
    ]
    for label, m in rows.items():
        if "hu/abs_max" not in m:
            continue
        if label == "real slices":
            cells = [fmt(m["hu/abs_max"], 1)] + [f"IQR {fmt(m.get(f'hu_iqr_real/{o}'), 0)}" for o in organs]
        else:
            cells = [fmt(m["hu/abs_max"], 1)] + [
                f"{fmt(m.get(f'hu/{o}'), 1)}, IQR {fmt(m.get(f'hu_iqr/{o}'), 0)}" for o in organs
            ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


#: The columns of :func:`distribution_table`: header, metric key, digits.
DISTRIBUTION_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("FD (segmenter)", "frechet_seg", 4),
    ("FRD", "frd", 3),
    ("copy rate", "memorization/copy_rate", 3),
    ("nearest-train RMS, median", "memorization/synthetic_q50", 4),
    ("copy threshold", "memorization/threshold", 4),
)


def distribution_table(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown lines of the distribution metrics at 100 % (FD beside FRD; the memorization check),
    when the rows hold FRD or the copy rate (``--frd``, ``--memorization``); else no lines."""
    if not any("frd" in m or "memorization/copy_rate" in m for m in rows.values()):
        return []
    lines = [
        "",
        "Distributions and copies at 100% of the budget: the segmenter's Fréchet distance beside FRD v1 "
        "(radiomics in HU; lower is closer; the real row is blank: ln 0); copy rate = share of synthetic "
        "slices nearer (RMS, window units) to a training slice than the copy threshold, the 5th percentile "
        "of the real held-out slices' nearest-training distances (about 5 % when nothing is copied; the "
        "real row scores 1/N by construction).",
        "",
        "| method | " + " | ".join(c[0] for c in DISTRIBUTION_COLUMNS) + " |",
        "|---|" + "---|" * len(DISTRIBUTION_COLUMNS),
    ]
    for label, m in rows.items():
        lines.append(
            f"| {label} | " + " | ".join(fmt(m.get(k), d) for _, k, d in DISTRIBUTION_COLUMNS) + " |"
        )
    agree = rank_agreement(rows, "frechet_seg", "frd")
    if agree is not None:
        lines += [
            "",
            f"FD and FRD rank the {len(agree['order_a'])} rows with both (lower first): FD "
            f"{' < '.join(agree['order_a'])}; FRD {' < '.join(agree['order_b'])}. Spearman rho "
            f"{agree['rho']:.2f}; {agree['discordant']} of {agree['pairs']} pairs ordered differently "
            "(means; a pair closer than the seed SDs may swap by chance).",
        ]
    return lines


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n of ``values``, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def rank_agreement(rows: Mapping[str, Mapping[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    """Do metrics ``a`` and ``b`` (lower is better) order the rows alike? Over the rows whose means
    of both are finite: Spearman's rho (Pearson correlation of the ranks, ties averaged), the pairs
    the two order differently (a tie in either counts as agreement) and each order (row labels,
    lowest first). ``None`` with fewer than 3 such rows."""
    both = {
        label: (float(m[a]["mean"]), float(m[b]["mean"]))
        for label, m in rows.items()
        if a in m and b in m and math.isfinite(m[a]["mean"]) and math.isfinite(m[b]["mean"])
    }
    if len(both) < 3:
        return None
    labels = list(both)
    va, vb = [both[n][0] for n in labels], [both[n][1] for n in labels]
    ra, rb = _ranks(va), _ranks(vb)
    n = len(labels)
    mean = (n + 1) / 2
    cov = sum((x - mean) * (y - mean) for x, y in zip(ra, rb))
    sa, sb = math.sqrt(sum((x - mean) ** 2 for x in ra)), math.sqrt(sum((y - mean) ** 2 for y in rb))
    rho = cov / (sa * sb) if sa and sb else float("nan")
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    discordant = sum((va[i] - va[j]) * (vb[i] - vb[j]) < 0 for i, j in pairs)
    return {
        "rho": rho,
        "discordant": int(discordant),
        "pairs": len(pairs),
        "order_a": sorted(labels, key=lambda n: both[n][0]),
        "order_b": sorted(labels, key=lambda n: both[n][1]),
    }


def claims(
    results: Mapping[str, Any], diffusion: Sequence[str] = DIFFUSION, gans: Sequence[str] = GANS
) -> list[str]:
    """The paper's two claims, checked on this run's means (a line per comparison that can be made).

    Mask-guided converges earlier: at 25 % and 50 % of the budget its mean organ-intensity error
    is lower and its segmenter Dice higher than the conditional DDPM's. Diffusion beats GANs: at
    100 % the best diffusion model has higher PSNR and lower segmenter FD than the best GAN. A
    difference within twice the larger seed SD of the two rows is reported as a tie, not a verdict
    (Pix2Pix and SPADE are deterministic given the mask, SD 0: the other row's SD sets the margin).
    """
    methods = results["methods"]

    def mean(name: str, frac: str, key: str) -> float:
        return methods[name][frac]["metrics"][key]["mean"]

    def margin(a: str, b: str, frac: str, key: str) -> float:
        return 2.0 * max(methods[n][frac]["metrics"][key].get("sd", 0.0) for n in (a, b))

    def verdict(better: bool, worse: bool) -> str:
        return "holds" if better else ("does not hold" if worse else "tie (within 2 seed SD)")

    lines = []
    if "mask_guided_ddpm" in methods and "conditional_ddpm" in methods:
        for frac in ("0.25", "0.5"):
            if frac in methods["mask_guided_ddpm"] and frac in methods["conditional_ddpm"]:
                e_m, e_c = (
                    mean("mask_guided_ddpm", frac, "err/mean"),
                    mean("conditional_ddpm", frac, "err/mean"),
                )
                d_m, d_c = (
                    mean("mask_guided_ddpm", frac, "dice/mean"),
                    mean("conditional_ddpm", frac, "dice/mean"),
                )
                m_e = margin("mask_guided_ddpm", "conditional_ddpm", frac, "err/mean")
                m_d = margin("mask_guided_ddpm", "conditional_ddpm", frac, "dice/mean")
                said = verdict(
                    e_m < e_c - m_e and d_m > d_c + m_d,  # both clearly better
                    e_m > e_c + m_e or d_m < d_c - m_d,  # either clearly worse
                )
                lines.append(
                    f"Mask-guided converges earlier, at {round(100 * float(frac))}% of the budget: {said} "
                    f"(organ err {e_m:.3f} vs {e_c:.3f}, Dice {d_m:.3f} vs {d_c:.3f}, mask-guided vs conditional)."
                )
    diff = [n for n in diffusion if n in methods and "1.0" in methods[n]]
    gan = [n for n in gans if n in methods and "1.0" in methods[n]]
    if diff and gan:
        for key, better, label in (("psnr", max, "PSNR"), ("frechet_seg", min, "segmenter FD")):
            bd = better(diff, key=lambda n: mean(n, "1.0", key))
            bg = better(gan, key=lambda n: mean(n, "1.0", key))
            vd, vg = mean(bd, "1.0", key), mean(bg, "1.0", key)
            sign = 1.0 if better is max else -1.0  # > 0: diffusion ahead
            gap, m = sign * (vd - vg), margin(bd, bg, "1.0", key)
            lines.append(
                f"Diffusion beats GANs on {label}: {verdict(gap > m, gap < -m)} "
                f"(best diffusion {bd} {vd:.4f} vs best GAN {bg} {vg:.4f}, margin {m:.4f})."
            )
    return lines


def within_2pct(m: Mapping[str, Any], ref: Mapping[str, Any]) -> bool:
    """Organ metrics and Dice of ``m`` within 2% of the reference chain's (means over seeds).

    Dice within 2% relative; the mean organ intensity error may exceed the reference by 2% of
    it plus 0.002 window units (0.8 HU: a few-seed noise floor, as the error itself is ~0.01).
    """
    d, d0 = m["dice/mean"]["mean"], ref["dice/mean"]["mean"]
    e, e0 = m["err/mean"]["mean"], ref["err/mean"]["mean"]
    return abs(d - d0) <= 0.02 * d0 and e <= 1.02 * e0 + 0.002


def sampler_markdown(results: Mapping[str, Any]) -> str:
    """``samplers.md``: every setting of every model against its reference chain (first row)."""
    lines = [
        "Samplers against the 1000-step ancestral chain (first row of each model; mean ± SD over "
        "seeds). 'within 2%': |Dice - Dice_1000| <= 0.02 Dice_1000 and mean organ intensity error "
        "<= 1.02 err_1000 + 0.002 (window units; 0.002 = 0.8 HU, the seed-to-seed noise floor).",
        "",
        "| model | sampler | NFE | s/slice | PSNR | SSIM | background | organ err mean | organ err max | Dice | FD (segmenter) | within 2% |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, rows in results.items():
        for r in rows:
            m = r["metrics"]
            lines.append(
                f"| {model} | {r['sampler']} | {r['num_steps']} | {r['seconds_per_slice']:.3f} | {fmt(m['psnr'])} | "
                f"{fmt(m['ssim'], 3)} | {fmt(m['background'], 3)} | {fmt(m['err/mean'], 3)} | {fmt(m['err/max'], 3)} | "
                f"{fmt(m['dice/mean'], 3)} | {fmt(m['frechet_seg'], 4)} | {r.get('within_2pct', '—')} |"
            )
    return "\n".join(lines) + "\n"


#: Side of the figure's crop rows as a fraction of the slice's (x2.5: 128 px slices show 51 px).
FIGURE_ZOOM = 0.4


def write_figure(
    path: str | Path, masks: torch.Tensor, rows: Mapping[str, torch.Tensor], real: torch.Tensor
) -> None:
    """The comparison figure (mask | real | one column per row of ``rows``), each slice followed
    by a crop of its organs (:data:`FIGURE_ZOOM`), written atomically."""
    from medsynth.metrics.report import comparison_figure

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # the suffix names the format
    try:
        comparison_figure(masks, dict(rows), tmp, real=real, zoom=FIGURE_ZOOM)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_quality(
    results: Mapping[str, Any],
    out: Path,
    batch: Mapping[str, Any],
    figure: Mapping[str, torch.Tensor],
    picks: Sequence[int],
) -> None:
    """``quality.json``, ``quality.md`` and, once a method has run, ``figure.pt`` (the seed-0 figure
    slices, for --resume) and ``quality.png`` (the slices ``picks`` of ``batch``), each atomically."""
    atomic_write(out / "quality.json", json.dumps(results, indent=2, default=float))
    atomic_write(out / "quality.md", markdown(results))
    if figure:
        buf = io.BytesIO()
        torch.save(dict(figure), buf)
        atomic_write(out / "figure.pt", buf.getvalue())
        write_figure(out / "quality.png", batch["mask"][picks], figure, batch["image"][picks])
