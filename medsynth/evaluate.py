"""``medsynth evaluate``: the metric suite for one or more checkpoints, written as the paper's tables.

Every checkpoint is tested on a data module's test split with
:class:`~medsynth.callbacks.SynthesisMetrics` (PSNR, SSIM, FID, organ Dice; Zhuang et al., Sec. 3
"Evaluation metrics"; and FRD, organ statistics in HU and the memorization check), then one
report holds a row per method in the layout of the paper's Table 2 (with the published rows for
reference) as Markdown, CSV and LaTeX, sections for the other metrics, and a figure like the
paper's Fig. 4 shows masks, real slices and each method's output side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from medsynth.data.config import build_datamodule, data_sections
from medsynth.models.base import SynthesisModule, check_data_label_set, check_data_window

__all__ = [
    "METRICS",
    "build_datamodule",
    "data_sections",
    "evaluate_models",
    "totalseg_dice",
    "figure_batch",
    "write_evaluation",
    "metric_problems",
    "evaluate_checkpoints",
]


def evaluate_models(
    models: Mapping[str, SynthesisModule],
    datamodule: L.LightningDataModule,
    *,
    metrics: Sequence[str] = ("psnr", "ssim", "fid", "dice"),
    segmenter: L.LightningModule | str | Path | None = None,
    fid_weights: str | Path | None = None,
    sampler: str | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    accelerator: str = "auto",
    devices: int | str | list[int] = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    log_dir: str | Path | None = None,
    callbacks: Sequence[L.Callback] = (),
) -> dict[str, dict[str, float]]:
    """Test every model on ``datamodule``'s test split; returns ``{name: {"test/psnr": ...}}``.

    Options that do not apply to a method (a sampler for a GAN) are dropped for that method.
    ``callbacks`` join the test loop (e.g. a :class:`~medsynth.callbacks.SynthesisImageGrid`).
    ``accelerator``, ``devices``, ``num_nodes`` and ``strategy`` are Lightning's: on several
    processes each tests its share of the slices and :class:`~medsynth.callbacks.SynthesisMetrics`
    gathers them, so every process returns the numbers of one process.
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    from medsynth.callbacks import SynthesisMetrics
    from medsynth.callbacks.progress import default_progress_bar

    for name, model in models.items():  # before any sampling: masks of other classes, another window
        for check in (check_data_label_set, check_data_window):
            try:
                check(model, datamodule)
            except ValueError as e:
                raise ValueError(
                    f"{name}: {e}. To evaluate, give data as the model was trained on (--data_config)"
                ) from None
    rows = {}
    for name, model in models.items():
        opts = model.generate_kwargs(sampler=sampler, num_steps=num_steps, guidance_scale=guidance_scale)
        callback = SynthesisMetrics(
            metrics=tuple(metrics), segmenter=segmenter, fid_weights=fid_weights, seed=seed, **opts
        )
        logger = (
            TensorBoardLogger(log_dir, name="evaluate", version=name.replace(" ", "_")) if log_dir else False
        )
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            logger=logger,
            callbacks=[callback, *callbacks, default_progress_bar()],
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        result = trainer.test(model, datamodule=datamodule, verbose=False)[0]
        rows[name] = {k: float(v) for k, v in result.items() if k.startswith("test/") and k != "test/loss"}
    return rows


def totalseg_dice(
    model: SynthesisModule,
    cases: Sequence[tuple[Path, Path]],
    scorer: Any,
    *,
    batch_size: int = 16,
    sampler: str | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Organ Dice as the paper measures it (Zhuang et al., Sec. 3): TotalSegmentator on synthetic *volumes*.

    Each case's label volume (with the body class from its CT) is synthesized slice by slice
    into a CT volume in the file's geometry (:func:`medsynth.synthesis.synthesize_volume`),
    ``scorer`` (a :class:`~medsynth.metrics.TotalSegmentatorScorer`) segments it, and Dice per
    organ is taken against the ground-truth labels, then averaged over cases (NaN-skipping).

    Args:
        model: A synthesis method.
        cases: ``(image, label)`` NIfTI paths of the test cases.
        scorer: Has ``segment(nibabel image) -> AMOS label volume``.

    Returns:
        ``{"test/dice/<organ>": mean Dice, ..., "test/dice/mean": ...}``.
    """
    import nibabel as nib
    import numpy as np

    from medsynth.io import read_label_case
    from medsynth.labels import PAPER_DICE_ORDER
    from medsynth.metrics.dice import dice_per_class
    from medsynth.synthesis import synthesize_volume

    if not cases:
        raise ValueError("no test cases to score")
    labels = model.label_set
    ids = list(labels.structure_ids)
    per_case = []
    for image, label in cases:
        case = read_label_case(label, image, label_set=labels)
        hu = synthesize_volume(
            model, case, batch_size=batch_size, sampler=sampler, num_steps=num_steps,
            guidance_scale=guidance_scale, seed=seed, progress=progress,
        )  # fmt: skip
        pred = scorer.segment(nib.Nifti1Image(hu, case.geometry.affine))  # [X, Y, Z] ids of the set
        truth = np.where(case.labels == labels.body, 0, case.labels)
        per_case.append(dice_per_class(pred, truth, labels.num_classes).numpy())
    dice = np.stack(per_case)[:, ids]  # [cases, structures]
    present = ~np.isnan(dice)
    out = {}
    for j, organ in enumerate(ids):
        if present[:, j].any():
            out[f"test/dice/{labels.classes[organ].name}"] = float(np.nanmean(dice[:, j]))
    # AMOS: the mean over the paper's 14 Dice columns (Tables 1-2; prostate/uterus is not among
    # them); another label set: over its structures.
    columns = PAPER_DICE_ORDER if labels.name == "amos" else ids
    keys = [f"test/dice/{labels.classes[i].name}" for i in columns]
    organ_means = [out[k] for k in keys if k in out]
    out["test/dice/mean"] = float(np.mean(organ_means)) if organ_means else float("nan")
    return out


def figure_batch(datamodule: L.LightningDataModule, num_slices: int = 4) -> dict[str, Any]:
    """``num_slices`` test slices spread evenly over the split (different anatomical levels)."""
    datamodule.prepare_data()  # e.g. the AMOS slice cache, when no test loop has built it yet
    datamodule.setup("test")
    dataset = datamodule.test_dataloader().dataset
    n = len(dataset)
    if n == 0:
        raise ValueError("the test split is empty")
    picks = sorted({round(i * (n - 1) / max(num_slices - 1, 1)) for i in range(num_slices)})
    items = [dataset[i] for i in picks]
    from medsynth.data.context import CONTEXT_KEYS

    return {
        "image": torch.stack([it["image"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "case_id": [it["case_id"] for it in items],
        "slice_index": torch.stack([torch.as_tensor(it["slice_index"]) for it in items]),
        **{k: torch.stack([it[k] for it in items]) for k in CONTEXT_KEYS if k in items[0]},
    }


@torch.no_grad()
def write_evaluation(
    rows: Mapping[str, Mapping[str, float]],
    output: str | Path,
    *,
    models: Mapping[str, SynthesisModule] | None = None,
    batch: Mapping[str, Any] | None = None,
    reference: int | None = 2,
    seed: int = 0,
    sampler: str | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    name: str = "report",
    zoom: float | None = None,
) -> list[Path]:
    """Write the paper-style tables (``<name>.md/.csv/.tex``) and, given models and a batch, ``<name>.png``.

    Slices in the figure are generated with the same per-slice seeds as the metrics; ``zoom``
    adds a crop row under each slice (:func:`medsynth.metrics.report.comparison_figure`).
    """
    from medsynth.data.context import batch_context
    from medsynth.metrics.report import comparison_figure, normalize_row, write_report
    from medsynth.random import slice_generators

    out = Path(output)
    paths = list(
        write_report(
            {k: normalize_row(v) for k, v in rows.items()}, out, reference=reference, name=name
        ).values()
    )
    if models and batch is not None:
        outputs = {}
        for label, model in models.items():
            opts = model.generate_kwargs(sampler=sampler, num_steps=num_steps, guidance_scale=guidance_scale)
            keys = list(zip(batch["case_id"], batch["slice_index"].tolist()))
            gens = slice_generators(keys, seed, model.device)
            context = batch_context(model, batch)  # a 2.5D model's: the real neighbours
            outputs[label] = model.generate(
                batch["mask"].to(model.device), generator=gens, context=context, **opts
            ).cpu()
        label_set = next(iter(models.values())).label_set  # the masks' classes (the data's, checked)
        paths.append(
            comparison_figure(
                batch["mask"],
                outputs,
                out / f"{name}.png",
                real=batch["image"],
                label_set=label_set,
                zoom=zoom,
            )
        )
    return paths


#: The metrics of the suite: the paper's (Zhuang et al., Sec. 3), then FRD (Konz, Osuala et al.),
#: organ statistics in HU and the memorization check.
METRICS = ("psnr", "ssim", "fid", "dice", "frd", "hu", "memorization")


def metric_problems(
    *, fid_weights: str | Path | None = None, segmenter: str | Path | None = None, totalseg: bool = False
) -> dict[str, str]:
    """Why a metric cannot be computed with these arguments: ``{"fid": reason, ...}``.

    FID needs clean-fid's Inception file (:func:`medsynth.metrics.image.find_inception_weights`);
    organ Dice an OrganSegmenter checkpoint or TotalSegmentator; FRD the optional ``frd-score``
    package (:func:`medsynth.metrics.frd.check_frd_available`). A metric that can run is absent.
    The reasons name the argument to give (``fid_weights=...``, ``segmenter=...``) or the install.
    """
    from medsynth.metrics.frd import check_frd_available
    from medsynth.metrics.image import find_inception_weights

    problems = {}
    try:
        find_inception_weights(fid_weights)
    except FileNotFoundError as err:
        problems["fid"] = f"fid: {str(err).rstrip('.')}"
    if segmenter is None and not totalseg:
        problems["dice"] = (
            "dice needs segmenter=ORGAN_SEGMENTER.ckpt (e.g. outputs/demo/checkpoints/organ_segmenter.ckpt) "
            "or totalseg=True"
        )
    try:
        check_frd_available()
    except ImportError as err:
        problems["frd"] = f"frd: {err}"
    return problems


def evaluate_checkpoints(
    checkpoints: Sequence[str | Path],
    output: str | Path,
    *,
    names: Sequence[str] | None = None,
    data_config: str | Path | None = None,
    metrics: Sequence[str] = ("psnr", "ssim"),
    segmenter: str | Path | None = None,
    fid_weights: str | Path | None = None,
    totalseg: bool = False,
    totalseg_weights: str | Path | None = None,
    totalseg_fast: bool = False,
    sampler: str | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    figure_slices: int = 4,
    figure_zoom: float | None = None,
    reference: int | None = 2,
    accelerator: str = "auto",
    devices: int | str | list[int] = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
) -> list[Path]:
    """``medsynth evaluate`` as a function: checkpoints -> the paper-style report in ``output``.

    Checks every argument and that the checkpoints fit together (one image size, one label set)
    before any slice is generated; then tests each model on the data module's test split
    (:func:`evaluate_models`; with ``totalseg``, organ Dice from TotalSegmentator on synthetic
    volumes, :func:`totalseg_dice`), and writes the tables and figure (:func:`write_evaluation`).

    Args:
        checkpoints: medsynth synthesis checkpoints (:func:`medsynth.synthesis.load_model`).
        output: Folder for ``report.md/.csv/.tex/.png`` and the TensorBoard logs.
        names: Row names, one per checkpoint (None: the method class names).
        data_config: Experiment YAML whose ``data:`` section gives the test split
            (:func:`build_datamodule`); None: the phantom at the checkpoints' image size.
        metrics: Any of :data:`METRICS`; each must be computable (:func:`metric_problems`).
        segmenter: OrganSegmenter checkpoint for slice Dice.
        fid_weights: clean-fid's Inception file (None: looked up in its caches).
        totalseg: Organ Dice as in the paper, TotalSegmentator on synthetic volumes (needs a data
            module with ``splits``, such as the AMOS layout).
        totalseg_weights, totalseg_fast: TotalSegmentator's home folder (None: its default) and
            its 3 mm model.
        sampler, num_steps, guidance_scale: ``generate()`` options (dropped where a method takes none).
        seed: Seeds each slice's noise.
        figure_slices: Rows of the figure (0: none).
        figure_zoom: Under each slice of the figure, a crop of its organs of this side (a
            fraction of the slice's, in (0, 1); 0.4 is x2.5); None: no crops.
        reference: Paper table whose rows join the report (1, 2; None: none).
        accelerator: Lightning accelerator ("auto": a GPU when there is one).
        devices, num_nodes, strategy: Lightning's, for the metric suite on several processes
            (every process calls this function and loads the same checkpoint files; global rank 0
            alone computes ``totalseg`` Dice and the figure and writes the report).

    Returns:
        The written files (none on the other processes).

    Raises:
        ValueError / FileNotFoundError: naming the argument (``names=``, ``segmenter=``, ...) or
            file at fault.
    """
    from medsynth.synthesis import load_model

    if names is not None and len(names) != len(checkpoints):
        raise ValueError(f"names={list(names)} gives {len(names)} names for {len(checkpoints)} checkpoints")
    if figure_zoom is not None and not 0.0 < figure_zoom < 1.0:
        raise ValueError(
            f"figure_zoom={figure_zoom}: the crop's side is a fraction of the slice's, in (0, 1)"
        )
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"metrics={list(metrics)}: unknown {unknown}; choose from {list(METRICS)}")
    problems = metric_problems(fid_weights=fid_weights, segmenter=segmenter, totalseg=totalseg)
    for metric in metrics:
        if metric in problems:
            raise ValueError(problems[metric])
    if segmenter is not None and not Path(segmenter).is_file():
        raise ValueError(f"segmenter={segmenter}: file not found")
    device = "cuda" if accelerator != "cpu" and torch.cuda.is_available() else "cpu"
    # On the CPU: Lightning moves each process's copy to its device (loading on "cuda" would put
    # every process's copy on the first GPU).
    loaded = [load_model(c, map_location="cpu") for c in checkpoints]
    row_names = list(names) if names is not None else [type(m).__name__ for m in loaded]
    if len(set(row_names)) != len(row_names):
        raise ValueError(f"row names must be unique, got {row_names}; pass distinct names=[...]")
    models = dict(zip(row_names, loaded))
    sizes = {m.image_size for m in loaded}
    if len(sizes) != 1:
        raise ValueError(
            f"the checkpoints were trained at different image sizes {sorted(sizes)}; evaluate them apart"
        )
    size = sizes.pop()
    label_sets = {m.label_set.names(): m.label_set for m in loaded}
    if len(label_sets) != 1:
        raise ValueError(
            f"the checkpoints use different label sets {[s.name for s in label_sets.values()]}; "
            "evaluate them apart"
        )
    scorer = None
    if totalseg:
        from medsynth.metrics import TotalSegmentatorScorer

        scorer = TotalSegmentatorScorer(
            weights_dir=totalseg_weights,
            device="gpu" if device == "cuda" else "cpu",
            fast=totalseg_fast,
            label_set=next(iter(label_sets.values())),
        )
    contexts = {m.context_spec for m in loaded if m.context_spec is not None}
    if len(contexts) > 1:
        raise ValueError(
            f"the checkpoints are 2.5D models with different contexts {sorted(map(str, contexts))}; evaluate them apart"
        )
    overrides = {} if data_config else {"image_size": size}
    dm = build_datamodule(data_config, overrides or None)
    # A 2.5D model is tested on the same data with its context in the batches (a data module of its
    # own: Lightning refuses a model and data module whose shared hyperparameters differ).
    context_dm = {
        spec: build_datamodule(
            data_config, {**overrides, "context_slices": spec.neighbours, "context_previous": spec.previous}
        )
        for spec in contexts
    }
    if getattr(dm, "image_size", size) != size:
        raise ValueError(
            f"{data_config}: data image_size={dm.image_size} but the checkpoints were trained at {size}"
        )
    cases = None
    if scorer is not None:
        splits = getattr(dm, "splits", None)
        if not splits or not splits.get("test"):
            raise ValueError(
                "totalseg=True needs an AMOS-layout data module with test cases (see docs/evaluation.md; "
                "`medsynth phantom` writes the phantom in that layout)"
            )
        cases = [(c.image, c.label) for c in splits["test"]]
    output = Path(output)
    opts = {"sampler": sampler, "num_steps": num_steps, "guidance_scale": guidance_scale}
    slice_metrics = [m for m in metrics if not (m == "dice" and scorer is not None)]
    rows: dict[str, dict[str, float]] = {name: {} for name in models}
    for data in {id(d): d for d in [dm, *context_dm.values()]}.values():
        group = {n: m for n, m in models.items() if context_dm.get(m.context_spec, dm) is data}
        if slice_metrics and group:
            rows.update(
                evaluate_models(
                    group, data, metrics=slice_metrics, segmenter=segmenter, fid_weights=fid_weights, seed=seed,
                    accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                    log_dir=output / "tensorboard", **opts,
                )
            )  # fmt: skip
    if rank_zero_only.rank != 0:
        return []  # every process has the same rows; rank 0 writes them
    for model in loaded:
        model.to(device)  # Lightning leaves a tested module on the CPU
    if scorer is not None:
        for name, model in models.items():
            rows[name].update(totalseg_dice(model, cases, scorer, seed=seed, **model.generate_kwargs(**opts)))
    # the figure's slices with the context a 2.5D model needs (2D models ignore it)
    batch = figure_batch(next(iter(context_dm.values()), dm), figure_slices) if figure_slices > 0 else None
    return write_evaluation(
        rows, output, models=models, batch=batch, reference=reference, seed=seed, zoom=figure_zoom, **opts
    )
