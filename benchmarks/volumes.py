"""Volumes along z: a 2.5D model against the same method's 2D model, slice-independent and shared noise.

Given a 2D and a 2.5D checkpoint of one method trained for the same budget, every held-out volume
of ``--data-config``'s test split (the phantom's test cases; the real CT's held-out slab) is
synthesized from its masks with ``--seeds`` noise seeds in three modes (``--modes`` may leave out
``coherent``, e.g. to save the time of a long ``--whole-volume`` run):

- ``independent``: the 2D model, every slice with its own noise;
- ``coherent``: the 2D model, one noise for every slice of a volume (``medsynth synthesize --coherent``);
- ``2.5D``: the 2.5D model, slices made in order with their context
  (:func:`medsynth.synthesis.generate_volumes`).

Against the real volume of the same masks (:mod:`medsynth.metrics.volume`), per seed:

- ``ratio``: adjacent-slice mean absolute difference inside each organ, synthetic / real
  (target 0.8-1.25);
- ``stick2``, ``stick4``: correlation of the high-pass residuals of slices 2 and 4 apart inside
  each organ, synthetic minus real (target within +-0.1);
- ``drift``: organ median HU in the first and last quarter of a volume, synthetic minus real;
  the largest absolute value over organs and both quarters (target <= 10 HU), on the held-out
  volumes or, with ``--whole-volume``, on every training case's whole volume (the real CT's 133
  slices: a z-split data module taken without its split);
- per slice on the held-out volumes: PSNR, organ median HU error (mean over organs), and with
  ``--segmenter`` the Dice of an in-domain :class:`~medsynth.models.OrganSegmenter` (mean over
  organs). Target: the 2.5D model no worse than the 2D model (independent) by more than twice the
  larger seed SD of the two rows.

``--context-sample-noise`` sets the level of the 2.5D model's slice below when generating
(:func:`medsynth.synthesis.set_context_sample_noise`; default: the checkpoint's).

Organs: liver, spleen, both kidneys, stomach, aorta, pancreas (those the label set has). Prints
and writes ``volumes.md`` / ``volumes.json``, ``volumes.png`` (sagittal and coronal cuts: real
| each mode, first seed) and ``figure.pt`` (those volumes, float16, to redraw the figure with
:func:`medsynth.metrics.report.volume_views_figure`) to ``--output``.

    python benchmarks/volumes.py --checkpoint-2d runs/phantom/mask_guided_ddpm/checkpoints/last.ckpt \\
        --checkpoint-25d runs/phantom/mask_guided_ddpm_context/checkpoints/last.ckpt
    python benchmarks/volumes.py --data-config experiments/realct/_base.yaml --whole-volume \\
        --checkpoint-2d runs/realct/mask_guided_ddpm/checkpoints/last.ckpt \\
        --checkpoint-25d runs/realct/mask_guided_ddpm_context/checkpoints/last.ckpt \\
        --segmenter runs/realct/organ_segmenter/checkpoints/last.ckpt --output outputs/volumes_realct
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.protocol, run from anywhere
from benchmarks.protocol import aggregate, load_segmenter  # noqa: E402
from medsynth.evaluate import build_datamodule  # noqa: E402
from medsynth.metrics import (  # noqa: E402
    adjacent_difference_ratio,
    dice_per_class,
    median_drift,
    psnr,
    texture_sticking,
)
from medsynth.metrics.report import volume_views_figure  # noqa: E402
from medsynth.synthesis import generate_volumes, load_model, set_context_sample_noise  # noqa: E402

ORGANS = ("liver", "spleen", "kidney_right", "kidney_left", "stomach", "aorta", "pancreas")
MODES = ("independent", "coherent", "2.5D")
#: Targets (Zhuang et al.'s methods made volume by volume; the values of the 2.5D work).
RATIO_RANGE, STICK_TOL, DRIFT_HU = (0.8, 1.25), 0.1, 10.0
DEFAULT_DATA = Path(__file__).resolve().parents[1] / "experiments" / "phantom" / "_base.yaml"


@dataclass
class Volume:
    """One volume of a split: ``image`` float ``[D, S, S]`` in [0, 1], ``mask`` int64, axial ``indices``."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    indices: np.ndarray


def dataset_volumes(dataset: Any) -> list[Volume]:
    """The volumes of a :class:`~medsynth.data.SliceDataset`: its pieces joined per case, in z order."""
    parts: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for name, first, img, msk in zip(dataset.case_names, dataset.first_slices, dataset.images, dataset.masks):
        parts.setdefault(name, []).append(
            (int(first), np.asarray(img, np.float32), np.asarray(msk, np.int64))
        )
    out = []
    for name, pieces in parts.items():
        pieces.sort(key=lambda p: p[0])
        idx = np.concatenate([f + np.arange(len(i)) for f, i, _ in pieces])
        out.append(
            Volume(name, np.concatenate([p[1] for p in pieces]), np.concatenate([p[2] for p in pieces]), idx)
        )
    return out


def load_pair(path_2d: Path, path_25d: Path, device: str) -> tuple[Any, Any]:
    """The two checkpoints, checked to be one method at one size, label set and window, 2D and 2.5D."""
    m2, m25 = load_model(path_2d, map_location=device), load_model(path_25d, map_location=device)
    if m2.context_spec is not None:
        raise ValueError(f"--checkpoint-2d {path_2d} is a 2.5D model ({m2.context_spec.describe()})")
    if m25.context_spec is None:
        raise ValueError(
            f"--checkpoint-25d {path_25d} is a 2D model (trained without context_slices/previous)"
        )
    for what, a, b in (
        ("method", type(m2).__name__, type(m25).__name__),
        ("image_size", m2.image_size, m25.image_size),
        ("label set", m2.label_set.name, m25.label_set.name),
        ("window", m2.window, m25.window),
    ):
        if a != b:
            raise ValueError(f"--checkpoint-2d and --checkpoint-25d differ in {what}: {a} vs {b}")
    return m2, m25


HU = Callable[[np.ndarray], np.ndarray]


def volume_metrics(
    synth: Sequence[np.ndarray], vols: Sequence[Volume], organs: Mapping[str, int], to_hu: HU
) -> dict[str, float]:
    """z metrics of synthetic volumes (``[D, S, S]`` in [0, 1]) against the real ones: means over
    volumes per organ, then over organs; drift as the largest |difference| (HU)."""
    ids = list(organs.values())
    keys = ("ratio", "stick2", "stick4", "syn2", "syn4", "real2", "real4")
    per: dict[str, list[dict[int, float]]] = {k: [] for k in keys}
    drift = []
    for x, v in zip(synth, vols):
        per["ratio"].append(adjacent_difference_ratio(x, v.image, v.mask, ids))
        s, r = texture_sticking(x, v.mask, ids), texture_sticking(v.image, v.mask, ids)
        for d in (2, 4):
            per[f"stick{d}"].append({c: s[d][c] - r[d][c] for c in ids})  # NaN where real has no texture
            per[f"syn{d}"].append(s[d])
            per[f"real{d}"].append(r[d])
        drift.append(median_drift(to_hu(x), to_hu(v.image), v.mask, ids))
    out: dict[str, float] = {}
    with _quiet():
        for key, rows in per.items():
            by_organ = {n: float(np.nanmean([row[c] for row in rows])) for n, c in organs.items()}
            out.update({f"{key}/{n}": val for n, val in by_organ.items()})
            out[f"{key}/mean"] = float(np.nanmean(list(by_organ.values())))
        for n, c in organs.items():
            for part in ("first", "last"):
                out[f"drift/{part}/{n}"] = float(np.nanmean([d[part][c] for d in drift]))
        out["drift/max"] = float(
            np.nanmax([abs(d[p][c]) for d in drift for p in ("first", "last") for c in ids] + [np.nan])
        )
        out["stick/max"] = float(
            np.nanmax([abs(out[f"stick{d}/{n}"]) for d in (2, 4) for n in organs] + [np.nan])
        )
    return out


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's all-NaN warnings (an organ absent from every volume is NaN, by design)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def slice_metrics(
    synth: Sequence[np.ndarray],
    vols: Sequence[Volume],
    organs: Mapping[str, int],
    to_hu: HU,
    segmenter: Any,
    seg_lut: torch.Tensor | None = None,
) -> dict[str, float]:
    """Per-slice quality over all held-out slices: PSNR, organ median HU error, segmenter Dice.

    ``seg_lut`` maps the volumes' label ids onto the segmenter's label set (by name,
    :meth:`~medsynth.labels.LabelSet.lookup_to`) when the two differ: a TotalSegmentator-label
    model scored with an AMOS-label segmenter, as benchmarks/realct.py trains it.
    """
    x = torch.from_numpy(np.concatenate(synth))[:, None].float()  # [N, 1, S, S]
    real = torch.from_numpy(np.concatenate([v.image for v in vols]))[:, None].float()
    mask = torch.from_numpy(np.concatenate([v.mask for v in vols]))  # [N, S, S]
    out = {"psnr": float(psnr(x, real))}
    hx, hr, m = to_hu(x[:, 0].numpy()), to_hu(real[:, 0].numpy()), mask.numpy()
    for n, c in organs.items():
        here = m == c
        out[f"hu_err/{n}"] = (
            float(abs(np.median(hx[here]) - np.median(hr[here]))) if here.any() else float("nan")
        )
    with _quiet():
        out["hu_err/mean"] = float(np.nanmean([out[f"hu_err/{n}"] for n in organs]))
    if segmenter is not None:
        labels = torch.cat([segmenter.segment(x[i : i + 64]).cpu() for i in range(0, len(x), 64)])
        target = mask if seg_lut is None else seg_lut[mask.long()]
        ids = dict(organs) if seg_lut is None else {n: int(seg_lut[c]) for n, c in organs.items()}
        dice = dice_per_class(labels, target, segmenter.num_classes)
        for n, c in ids.items():
            out[f"dice/{n}"] = float(dice[c])
        with _quiet():
            out["dice/mean"] = float(np.nanmean([out[f"dice/{n}"] for n in organs]))
    return out


def synthesize(
    model: Any, vols: Sequence[Volume], seed: int, coherent: bool, a: argparse.Namespace
) -> list[np.ndarray]:
    opts = model.generate_kwargs(num_steps=a.num_steps, sampler=a.sampler)
    made = generate_volumes(
        model,
        [torch.from_numpy(v.mask) for v in vols],
        [v.name for v in vols],
        indices=[v.indices for v in vols],
        batch_size=a.batch,
        seed=seed,
        coherent=coherent,
        **opts,
    )
    return [m.numpy() for m in made]


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Every mode and seed on the held-out (and whole) volumes; returns the results dict."""
    m2, m25 = load_pair(a.checkpoint_2d, a.checkpoint_25d, a.device)
    if a.context_sample_noise is not None:
        set_context_sample_noise(m25, a.context_sample_noise, f"--context-sample-noise ({a.checkpoint_25d})")
    labels = m2.label_set
    organs = {n: labels.by_name(n).index for n in ORGANS if n in {c.name for c in labels.classes}}

    def to_hu(x: np.ndarray) -> np.ndarray:
        return m2.to_hu(torch.from_numpy(np.asarray(x))).numpy()

    size = {"image_size": m2.image_size}
    dm = build_datamodule(a.data_config, size)
    dm.prepare_data()
    dm.setup("test")
    held = dataset_volumes(dm.datasets["test"])
    whole = None
    if a.whole_volume:
        full = build_datamodule(a.data_config, {**size, "test_slab": None, "num_val_cases": 0})
        full.prepare_data()
        full.setup("fit")
        whole = dataset_volumes(full.datasets["train"])
    segmenter = load_segmenter(a.segmenter).to(a.device) if a.segmenter else None
    seg_lut = None  # Dice in the segmenter's classes: the masks mapped by name when the sets differ
    if segmenter is not None and segmenter.label_set.names() != labels.names():
        seg_lut = torch.from_numpy(labels.lookup_to(segmenter.label_set)).long()
    models = {"independent": (m2, False), "coherent": (m2, True), "2.5D": (m25, False)}
    models = {mode: models[mode] for mode in MODES if mode in a.modes}
    results: dict[str, Any] = {"organs": organs, "modes": {}, "held_out": [v.name for v in held]}
    if m25.context_spec.previous:
        results["context_sample_noise"] = m25.context_sample_noise
    real = slice_metrics([v.image for v in held], held, organs, to_hu, segmenter, seg_lut)
    results["real"] = {k: v for k, v in real.items() if k.startswith("dice")}  # the segmenter on real slices
    figure: dict[str, np.ndarray] = {}
    for mode, (model, coherent) in models.items():
        rows = []
        for seed in a.seeds:
            synth = synthesize(model, held, seed, coherent, a)
            row = {
                **volume_metrics(synth, held, organs, to_hu),
                **slice_metrics(synth, held, organs, to_hu, segmenter, seg_lut),
            }
            shown = synth
            if whole is not None:
                shown = synthesize(model, whole, seed, coherent, a)
                z = volume_metrics(shown, whole, organs, to_hu)
                row.update({f"whole/{k}": v for k, v in z.items() if k.startswith("drift")})
            if seed == a.seeds[0]:
                figure[mode] = shown[0]
            rows.append(row)
            print(
                f"{mode:11s} seed {seed}: ratio {row['ratio/mean']:.2f}, stick2 {row['stick2/mean']:+.2f}, "
                f"stick4 {row['stick4/mean']:+.2f}, drift {row.get('whole/drift/max', row['drift/max']):.1f} HU, "
                f"PSNR {row['psnr']:.2f}",
                flush=True,
            )
        results["modes"][mode] = {"seeds": rows, "summary": aggregate(rows)}
    ref = whole[0] if whole is not None else held[0]
    z_real = volume_metrics([v.image for v in held], held, organs, to_hu)
    results["real"].update({k: v for k, v in z_real.items() if k.startswith("real")})
    a.output.mkdir(parents=True, exist_ok=True)
    shown = {"real": ref.image, **figure}
    torch.save({k: torch.as_tensor(v).half() for k, v in shown.items()}, a.output / "figure.pt")
    volume_views_figure(shown, a.output / "volumes.png", z_aspect=a.z_aspect)
    return results


def verdicts(results: Mapping[str, Any]) -> dict[str, str]:
    """Each target for the 2.5D row: "met", "not met" (with the numbers)."""
    s25, s2 = results["modes"]["2.5D"]["summary"], results["modes"]["independent"]["summary"]
    drift_key = "whole/drift/max" if "whole/drift/max" in s25 else "drift/max"

    def m(s: Mapping[str, Any], k: str) -> float:
        return s[k]["mean"] if k in s else float("nan")

    def margin(k: str) -> float:
        return 2.0 * max(s25[k]["sd"], s2[k]["sd"])

    out = {}
    lo, hi = RATIO_RANGE
    r = m(s25, "ratio/mean")
    out["ratio"] = f"{'met' if lo <= r <= hi else 'not met'} ({r:.2f}, target {lo}-{hi})"
    worst = max(abs(m(s25, "stick2/mean")), abs(m(s25, "stick4/mean")))
    if np.isfinite(worst):
        verdict = "met" if worst <= STICK_TOL else "not met"
        out["sticking"] = (
            f"{verdict} (largest |synthetic - real| of the organ-mean texture correlation at d = 2, 4: "
            f"{worst:.2f}, target <= {STICK_TOL})"
        )
    else:
        out["sticking"] = "not measurable: the real organs have no texture (residual correlation undefined)"
    d = m(s25, drift_key)
    out["drift"] = f"{'met' if d <= DRIFT_HU else 'not met'} (largest {d:.1f} HU, target <= {DRIFT_HU:g})"
    for key, sign, label in (
        ("psnr", 1, "PSNR"),
        ("hu_err/mean", -1, "organ HU error"),
        ("dice/mean", 1, "Dice"),
    ):
        if key not in s25:
            out[label] = "not measured (no --segmenter)"
            continue
        gap = sign * (m(s25, key) - m(s2, key))  # > 0: 2.5D better
        ok = gap >= -margin(key)
        out[label] = (
            f"{'met' if ok else 'not met'} (2.5D {m(s25, key):.3f} vs 2D {m(s2, key):.3f}, margin {margin(key):.3f})"
        )
    return out


def fmt(s: Mapping[str, Any], key: str, digits: int = 2, signed: bool = False) -> str:
    if key not in s or not np.isfinite(s[key]["mean"]):
        return "—"
    sign = "+" if signed else ""
    return f"{s[key]['mean']:{sign}.{digits}f} ± {s[key]['sd']:.{digits}f}"


def markdown(results: Mapping[str, Any]) -> str:
    """The targets table (mean ± SD over seeds), the real reference and the verdicts."""
    cols = [
        ("adjacent ratio", "ratio/mean", 2, False),
        ("texture corr d=2", "syn2/mean", 2, False),
        ("texture corr d=4", "syn4/mean", 2, False),
        ("drift held-out (HU)", "drift/max", 1, False),
        ("drift whole volume (HU)", "whole/drift/max", 1, False),
        ("PSNR (dB)", "psnr", 2, False),
        ("organ HU error", "hu_err/mean", 1, False),
        ("segmenter Dice", "dice/mean", 3, False),
    ]
    lines = [
        "| mode | " + " | ".join(c[0] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for mode, entry in results["modes"].items():
        s = entry["summary"]
        lines.append(f"| {mode} | " + " | ".join(fmt(s, k, d, sg) for _, k, d, sg in cols) + " |")
    real = results["real"]
    cell = lambda k, d: f"{real[k]:.{d}f}" if np.isfinite(real.get(k, np.nan)) else "—"  # noqa: E731
    lines.append(
        f"| real | 1 | {cell('real2/mean', 2)} | {cell('real4/mean', 2)} | 0 | 0 | — | 0 | {cell('dice/mean', 3)} |"
    )
    lines.append(
        f"| target | {RATIO_RANGE[0]}-{RATIO_RANGE[1]} | real ±{STICK_TOL} | real ±{STICK_TOL} | ≤ {DRIFT_HU:g} | "
        f"≤ {DRIFT_HU:g} | ≥ 2D - 2 SD | ≤ 2D + 2 SD | ≥ 2D - 2 SD |"
    )
    extra = [
        "",
        "Mean ± SD over seeds; organ statistics averaged over the organs (texture correlation: over those "
        "with texture; drift: the largest |synthetic - real| organ median in the first or last quarter).",
    ]
    if "context_sample_noise" in results:
        extra.append(
            f"2.5D: the slice below given at noise level {results['context_sample_noise']:g} x T when generating."
        )
    extra += [
        "",
        "2.5D against the targets:",
        "",
    ]
    extra += [f"- {k}: {v}" for k, v in verdicts(results).items()]
    return "\n".join(lines + extra) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint-2d", required=True, type=Path, help="the method trained slice by slice")
    p.add_argument("--checkpoint-25d", required=True, type=Path, help="the same method with 2.5D context")
    p.add_argument(
        "--data-config",
        type=Path,
        default=DEFAULT_DATA,
        help="experiment YAML whose data section gives the test split",
    )
    p.add_argument(
        "--whole-volume", action="store_true", help="also measure drift on every training case's whole volume"
    )
    p.add_argument(
        "--segmenter", type=Path, default=None, help="OrganSegmenter checkpoint (Dice); none: no Dice"
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="the modes to run (all three); independent and 2.5D are always needed (the targets compare them)",
    )
    p.add_argument(
        "--context-sample-noise",
        type=float,
        default=None,
        help="the level (fraction of T) the 2.5D model's slice below gets when generating "
        "(default: the checkpoint's context_sample_noise)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--sampler", default=None, help="generate() sampler (default: the models')")
    p.add_argument("--num-steps", type=int, default=None, help="generate() steps (default: the models')")
    p.add_argument("--batch", type=int, default=32, help="slices per generate() call")
    p.add_argument(
        "--z-aspect", type=float, default=1.0, help="slice spacing / pixel spacing, for the figure"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=Path("outputs/volumes"))
    a = p.parse_args(argv)
    if len(set(a.seeds)) != len(a.seeds):
        p.error(f"--seeds must be distinct, got {a.seeds}")
    missing = [m for m in ("independent", "2.5D") if m not in a.modes]
    if missing:
        p.error(
            f"--modes must include {' and '.join(missing)} (the targets compare 2.5D with independent), got {a.modes}"
        )
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    results = run(a)
    table = markdown(results)
    print(table)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    (a.output / "volumes.md").write_text(table)
    (a.output / "volumes.json").write_text(json.dumps({"args": meta, **results}, indent=2))
    print(f"wrote {a.output}/volumes.md, .json, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
