"""The protocol's two runs: every method trained under one budget and scored, and the samplers.

:func:`run_quality` trains each method on ``train_dm`` under the same budget (wall clock, or
steps from a calibration file), samples the test slices of ``score_dm`` from every checkpoint
with several noise seeds, scores them (:func:`~.scoring.score`) next to the reference rows, and
writes ``quality.json`` / ``quality.md`` / ``quality.png`` after every method. A run can be
continued (``resume``): the methods still missing are added, scored by the same segmenter.

:func:`run_samplers` compares samplers and step counts on trained diffusion models.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from medsynth.data.transforms import WINDOW_LEVEL, WINDOW_WIDTH

from .budget import (
    FRACTIONS,
    calibrate,
    calibration_entry,
    check_calibration,
    read_calibration,
    step_budget,
    train_method,
    trained_checkpoints,
    write_calibration,
)
from .data import eval_slices
from .methods import METHODS, MethodTable, build_model, load_model, recipes
from .references import painting_row, reference_rows
from .report import sampler_markdown, within_2pct, write_quality
from .resume import (
    ResumeError,
    atomic_write,
    check_compatible,
    check_settings,
    machine,
    previous_results,
    sha256,
)
from .scoring import (
    TARGET_ORGANS,
    Extra,
    SegmenterFeatures,
    aggregate,
    load_segmenter,
    save_segmenter,
    score,
    synthesize,
    train_segmenter,
)

__all__ = [
    "Settings",
    "calibrate_methods",
    "calibration_settings",
    "figure_slices",
    "known_calibration",
    "run_quality",
    "run_samplers",
]

Log = Callable[[str], None]


def _print(text: str) -> None:
    print(text, flush=True)


def check_score_fractions(fractions: Sequence[float]) -> None:
    """Raise a ValueError unless ``fractions`` are among the saved checkpoints' (``FRACTIONS``)
    and include 1.0 (the table's and the figure's row)."""
    if not set(fractions) <= set(FRACTIONS) or 1.0 not in fractions:
        raise ValueError(
            f"score fractions must be among {list(FRACTIONS)} and include 1.0, got {list(fractions)}"
        )


@dataclasses.dataclass
class Settings:
    """The options of a protocol run (the command-line flags of benchmarks/quality.py).

    Attributes:
        budget_min: Training minutes per method (``--budget``); with ``calibration`` the minutes
            of an idle machine, turned into steps.
        seeds: Noise seeds ``0..seeds-1``.
        num_eval: Test slices (None: all).
        sampler, num_steps: The diffusion models' sampler.
        gpu: Train and sample on CUDA.
        label_set: The labels the methods train on and generate from (scores stay on the
            segmenter's).
        segmenter: An OrganSegmenter checkpoint instead of training one.
        segmenter_steps, segmenter_minutes: Its training (minutes None: ``budget_min``, or no
            limit under a step budget).
        resume: Add the methods missing from the output's quality.json.
        reuse_checkpoints: Score a method's checkpoints that a stopped run left in
            ``<out>/checkpoints`` instead of training it again, when they were saved at the steps
            of this run's step budget (needs ``calibration``).
        calibration: A calibration file: step budgets instead of the wall clock; methods missing
            from it are timed first (take it on an idle machine) and recorded in it.
        calibration_steps, calibration_warmup: Steps timed per method, and untimed before them.
        score_fractions: The checkpoints scored, as fractions of the budget (a subset of
            ``FRACTIONS`` that includes 1.0); all three are still saved.
    """

    budget_min: float = 30.0
    seeds: int = 4
    num_eval: int | None = 64
    sampler: str = "ddpm"
    num_steps: int = 100
    gpu: bool = False
    label_set: str = "amos"
    segmenter: str | None = None
    segmenter_steps: int = 600
    segmenter_minutes: float | None = None
    resume: bool = False
    reuse_checkpoints: bool = False
    calibration: Path | None = None
    calibration_steps: int = 30
    calibration_warmup: int = 5
    score_fractions: tuple[float, ...] = FRACTIONS

    def __post_init__(self) -> None:
        check_score_fractions(self.score_fractions)

    @property
    def accelerator(self) -> str:
        return "gpu" if self.gpu else "cpu"

    @property
    def device(self) -> str:
        return "cuda" if self.gpu else "cpu"

    @property
    def opts(self) -> dict[str, Any]:
        """The generate() options of the diffusion models."""
        return {"sampler": self.sampler, "num_steps": self.num_steps}


def data_window(dm: L.LightningDataModule) -> tuple[float, float]:
    """The CT window (level, width in HU) of a data module's images; the paper's without one."""
    return tuple(float(v) for v in getattr(dm, "window", (WINDOW_LEVEL, WINDOW_WIDTH)))  # type: ignore[return-value]


def _prepare(*dms: L.LightningDataModule) -> None:
    """``prepare_data`` of each distinct data module (a cached dataset validates its cases and
    builds its slice cache there; the phantom has nothing to do)."""
    for dm in {id(dm): dm for dm in dms}.values():
        dm.prepare_data()


def figure_slices(n: int, rows: int = 4) -> list[int]:
    """``rows`` slice indices spread evenly over ``n`` evaluation slices (fewer when n < rows)."""
    return sorted({round(i * (n - 1) / max(rows - 1, 1)) for i in range(rows)})


def calibration_settings(
    name: str, s: Settings, train_dm: L.LightningDataModule, table: MethodTable = METHODS
) -> dict[str, Any]:
    """What a calibration of ``name`` times: its recipe, the image and batch size, the labels and
    the accelerator (an entry timed with other settings is refused)."""
    return {
        **recipes([name], table)[name],
        "image_size": train_dm.image_size,
        "batch_size": train_dm.batch_size,
        "label_set": s.label_set,
        "accelerator": s.accelerator,
    }


def known_calibration(
    names: Sequence[str],
    s: Settings,
    train_dm: L.LightningDataModule,
    table: MethodTable = METHODS,
) -> dict[str, dict[str, Any]]:
    """The entries of ``names`` that ``s.calibration`` already holds, each checked against the
    settings it must have timed; times nothing.

    Raises:
        CalibrationError: naming the file, when it is unreadable or an entry timed other settings.
    """
    path = Path(s.calibration)
    entries = read_calibration(path)
    for name in names:
        if name in entries:
            check_calibration(path, entries[name], calibration_settings(name, s, train_dm, table))
    return {n: entries[n] for n in names if n in entries}


def calibrate_methods(
    names: Sequence[str],
    s: Settings,
    train_dm: L.LightningDataModule,
    table: MethodTable = METHODS,
    log: Log = _print,
) -> dict[str, dict[str, Any]]:
    """The calibration entries of ``names`` from ``s.calibration``; the methods it lacks are timed
    now (:func:`~.budget.calibrate` on a throw-away model: take it on an idle machine) and added
    to the file, atomically, one by one.

    Raises:
        CalibrationError: naming the file, when it is unreadable or an entry timed other settings.
    """
    path = Path(s.calibration)
    known = known_calibration(names, s, train_dm, table)
    for name in names:
        if name in known:
            continue
        log(
            f"=== {name}: timing {s.calibration_steps} training steps (after {s.calibration_warmup}) for {path}"
        )
        model = build_model(name, train_dm.image_size, s.label_set, table, window=data_window(train_dm))
        sps = calibrate(model, train_dm, s.accelerator, s.calibration_steps, s.calibration_warmup)
        entries = read_calibration(path)
        entries[name] = known[name] = calibration_entry(
            name,
            calibration_settings(name, s, train_dm, table),
            sps,
            s.calibration_steps,
            s.calibration_warmup,
            s.device,
        )
        write_calibration(path, entries)
        log(f"  {sps:.4f} s/step: {step_budget(s.budget_min, sps)} steps in {s.budget_min} min")
    return {n: known[n] for n in names}


def _segmenter(
    s: Settings, prev: Mapping[str, Any] | None, score_dm: L.LightningDataModule, seg_file: Path
) -> Any:
    """The segmenter every part of the run scores with, saved to ``seg_file``."""
    if prev is not None:
        return load_segmenter(seg_file)
    if s.segmenter:
        seg = load_segmenter(s.segmenter)
    else:
        minutes = s.segmenter_minutes or (None if s.calibration else s.budget_min)
        seg = train_segmenter(score_dm, s.segmenter_steps, minutes, s.accelerator)
    if not (seg_file.exists() and s.segmenter and seg_file.samefile(s.segmenter)):
        save_segmenter(seg, seg_file)
    return seg


def _figure_row(
    name: str,
    path: Path,
    batch: Mapping[str, Any],
    train_dm: L.LightningDataModule,
    s: Settings,
    picks: Sequence[int],
    table: MethodTable,
) -> torch.Tensor:
    """Seed-0 samples of the figure slices from checkpoint ``path`` (a resumed run without figure.pt)."""
    sub = {k: v[picks] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    sub["keys"] = [batch["keys"][i] for i in picks]
    model = load_model(name, path, train_dm, s.device, table)
    return synthesize(model, sub, 0, s.opts)


def run_quality(
    s: Settings,
    methods: Sequence[str],
    out: str | Path,
    score_dm: L.LightningDataModule,
    train_dm: L.LightningDataModule | None = None,
    table: MethodTable = METHODS,
    organs: Mapping[str, int] = TARGET_ORGANS,
    header: Mapping[str, Any] | None = None,
    log: Log = _print,
    extra: Extra | None = None,
    batch_hook: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train, score and report ``methods`` of ``table`` (the quality protocol); returns the result
    written to ``<out>/quality.json``.

    Args:
        s: The settings.
        methods: Names in ``table``, in training order.
        out: The output folder; one with results is refused unless ``s.resume``.
        score_dm: The data in the segmenter's label set: the segmenter's training slices, the
            test slices scored, the reference rows.
        train_dm: The data the methods train on (None: ``score_dm``); the same images labelled
            with the methods' label set, its test slices those of ``score_dm``.
        organs: Metric name -> id in the segmenter's label set.
        header: Extra entries of the result (e.g. ``{"dataset": "..."}``, the table's title).
        extra: More metrics of every row (:data:`~.scoring.Extra`), e.g. the real CT's HU medians.
        batch_hook: Called once with the evaluation slices before any scoring, to add what
            ``extra`` needs (e.g. masks in another label set).

    Raises:
        ResumeError: before any training, for an output folder that cannot take this run.
        CalibrationError: before any training, for a calibration file that cannot serve it.
    """
    out = Path(out)
    if s.reuse_checkpoints and not s.calibration:
        raise ValueError(
            "--reuse-checkpoints needs --calibration: only a step budget tells which checkpoints fit"
        )
    prev = previous_results(out, s.resume)  # before any work: a folder with results is never overwritten
    if prev is not None and s.segmenter:
        raise ResumeError(
            "--segmenter: a resumed run scores with the earlier part's checkpoints/segmenter.pt"
        )
    train_dm = score_dm if train_dm is None else train_dm
    todo = [n for n in methods if n not in (prev or {}).get("methods", {})]

    def with_steps(entries: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        return {
            n: {**e, "steps": step_budget(s.budget_min, e["seconds_per_step"])} for n, e in entries.items()
        }

    # Before any long work: a calibration file that cannot serve, an earlier part that differs.
    calibration = with_steps(known_calibration(methods, s, train_dm, table)) if s.calibration else None
    _prepare(score_dm, train_dm)
    batch = eval_slices(score_dm, s.num_eval)
    picks = figure_slices(len(batch["mask"]))
    settings = {
        "label_set": s.label_set,
        "budget_min": s.budget_min,
        "num_eval": len(batch["mask"]),
        "seeds": list(range(s.seeds)),
        "sampler": s.sampler,
        "num_steps": s.num_steps,
    }
    if prev is not None:
        check_settings(prev, {**settings, "calibration": calibration})
    if s.calibration:  # time the methods the file lacks (on an idle machine), record them in it
        calibration = {**calibration, **with_steps(calibrate_methods(todo, s, train_dm, table, log))}
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if train_dm is not score_dm:  # the same slices labelled with the training set, for generate()
        other = eval_slices(train_dm, s.num_eval)
        if other["keys"] != batch["keys"] or not torch.equal(other["image"], batch["image"]):
            raise RuntimeError("the training and the scoring data modules gave different test slices")
        batch["gen_mask"] = other["mask"]
    if batch_hook is not None:
        batch_hook(batch)
    seg_file = ckpt_dir / "segmenter.pt"
    seg = _segmenter(s, prev, score_dm, seg_file).to(s.device)
    features = SegmenterFeatures(seg)
    real_feats, real_row, paint_row = reference_rows(score_dm, batch, features, s.device, organs, extra)
    rich_painting = None
    if train_dm is not score_dm:  # the bound of the richer mask: each pixel painted with its class's mean
        rich_painting = aggregate(
            [painting_row(train_dm, batch["gen_mask"], batch, features, real_feats, organs, extra)]
        )
    results: dict[str, Any] = {
        **(header or {}),
        **settings,
        "device": s.device,
        "threads": torch.get_num_threads(),
        "real": aggregate([real_row]),
        "painting": aggregate([paint_row]),
        **({"painting_rich": rich_painting} if rich_painting else {}),
        "segmenter_sha256": sha256(seg_file),
        "methods": {},
        "recipes": recipes(list(methods), table),
        "runs": {},
    }
    if calibration is not None:
        results["calibration"] = {n: calibration[n] for n in methods if n in calibration}
    figure: dict[str, torch.Tensor] = {}
    if prev is not None:  # continue the earlier part: same settings, segmenter, recipes, references
        check_compatible(prev, {**results, "recipes": recipes(list(table), table)})
        results["methods"] = dict(prev["methods"])
        results["runs"] = dict(prev.get("runs", {}))
        results["recipes"] = {**prev.get("recipes", {}), **results["recipes"]}
        if calibration is not None:  # the budgets the earlier rows were trained with stay theirs
            results["calibration"] = {**prev["calibration"], **{n: calibration[n] for n in todo}}
        if (out / "figure.pt").is_file():
            figure.update(torch.load(out / "figure.pt", weights_only=True))
        for name in results["methods"]:
            if name not in figure and (ckpt_dir / f"{name}_100.ckpt").is_file():
                figure[name] = _figure_row(
                    name, ckpt_dir / f"{name}_100.ckpt", batch, train_dm, s, picks, table
                )
    for name in (n for n in methods if n not in todo):
        log(f"=== {name}: kept from the earlier part of this run")
    for name in todo:
        steps = results["calibration"][name]["steps"] if calibration is not None else None
        log(f"=== {name}: training {s.budget_min} min" + (f" ({steps} steps)" if steps else ""))
        results["runs"][name] = machine(s.device)
        ckpts = trained_checkpoints(name, ckpt_dir, steps) if s.reuse_checkpoints else None
        if ckpts is not None:
            log(
                f"  reusing its checkpoints in {ckpt_dir} (saved at steps {[i['step'] for i in ckpts.values()]})"
            )
            results["runs"][name]["reused_checkpoints"] = True
        else:
            model = build_model(name, train_dm.image_size, s.label_set, table, window=data_window(train_dm))
            budget = {"steps": steps} if steps else {"minutes": s.budget_min}
            ckpts = train_method(model, name, train_dm, ckpt_dir, s.accelerator, **budget)
        per: dict[str, Any] = {}
        for frac, info in ckpts.items():
            if frac not in s.score_fractions:
                continue
            model = load_model(name, info["path"], train_dm, s.device, table)
            t0 = time.perf_counter()
            rows = []
            for seed in range(s.seeds):
                synth = synthesize(model, batch, seed, s.opts)
                rows.append(score(synth, batch, features, real_feats, organs, extra))
                if frac == 1.0 and seed == 0:
                    figure[name] = synth[picks]
            per[str(frac)] = {
                "step": info["step"],
                "train_seconds": info["seconds"],
                "sample_seconds": time.perf_counter() - t0,
                "metrics": aggregate(rows),
                "per_seed": rows,
            }
            log(
                f"  {round(100 * frac)}% (step {info['step']}): "
                + ", ".join(
                    f"{k} {v['mean']:.3f}"
                    for k, v in per[str(frac)]["metrics"].items()
                    if k in ("psnr", "background", "err/max", "dice/mean")
                )
            )
        results["methods"][name] = per
        write_quality(results, out, batch, figure, picks)  # after every method
    if not todo:  # a resumed run with nothing new to train still rewrites the table and the figure
        write_quality(results, out, batch, figure, picks)
    return results


def run_samplers(
    s: Settings,
    out: str | Path,
    targets: Mapping[str, tuple[str, str | Path]],
    score_dm: L.LightningDataModule,
    settings: Sequence[tuple[str, int]],
    reference: Sequence[tuple[str, int]] = (("ddpm", 1000),),
    table: MethodTable = METHODS,
    organs: Mapping[str, int] = TARGET_ORGANS,
    log: Log = _print,
) -> dict[str, Any]:
    """Sampler comparison: every ``(sampler, steps)`` of ``reference`` + ``settings`` on each
    target (``{label: (method, checkpoint)}``), scored as in :func:`run_quality`; writes
    ``samplers.json`` / ``samplers.md`` to ``out`` after every setting.

    The segmenter is ``s.segmenter``, else ``<out>/checkpoints/segmenter.pt``, else one trained
    now (``s.segmenter_minutes`` or 10 minutes) and saved there.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _prepare(score_dm)
    batch = eval_slices(score_dm, s.num_eval)
    seg_path = Path(s.segmenter or out / "checkpoints" / "segmenter.pt")
    if s.segmenter or seg_path.is_file():
        seg = load_segmenter(seg_path)
    else:
        seg = train_segmenter(score_dm, s.segmenter_steps, s.segmenter_minutes or 10.0, s.accelerator)
        seg_path.parent.mkdir(parents=True, exist_ok=True)
        save_segmenter(seg, seg_path)
    features = SegmenterFeatures(seg.to(s.device))
    real_feats, real_row, paint_row = reference_rows(score_dm, batch, features, s.device, organs)
    ref = {"sampler": "—", "num_steps": 0, "seconds_per_slice": 0.0, "within_2pct": "—"}
    results: dict[str, Any] = {
        "real slices": [{**ref, "metrics": aggregate([real_row])}],
        "class-mean painting": [{**ref, "metrics": aggregate([paint_row])}],
    }
    for label, (name, path) in targets.items():
        model = load_model(name, path, score_dm, s.device, table)
        rows = []
        for sampler, steps in (*reference, *settings):
            t0 = time.perf_counter()
            per_seed = [
                score(
                    synthesize(model, batch, seed, {"sampler": sampler, "num_steps": steps}),
                    batch,
                    features,
                    real_feats,
                    organs,
                )
                for seed in range(s.seeds)
            ]
            rows.append(
                {
                    "sampler": sampler,
                    "num_steps": steps,
                    "seconds_per_slice": (time.perf_counter() - t0) / (s.seeds * len(batch["mask"])),
                    "metrics": aggregate(per_seed),
                    "per_seed": per_seed,
                }
            )
            ok = within_2pct(rows[-1]["metrics"], rows[0]["metrics"])
            if not reference:
                rows[-1]["within_2pct"] = "n/a"
            else:
                rows[-1]["within_2pct"] = "reference" if len(rows) == 1 else ("yes" if ok else "no")
            log(
                f"  {label} {sampler}:{steps} "
                + json.dumps(
                    {
                        k: round(v["mean"], 4)
                        for k, v in rows[-1]["metrics"].items()
                        if k in ("psnr", "err/mean", "dice/mean")
                    }
                )
            )
            results[label] = rows
            atomic_write(out / "samplers.json", json.dumps(results, indent=2, default=float))
            atomic_write(out / "samplers.md", sampler_markdown(results))
    return results
