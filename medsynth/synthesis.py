"""Mask volume -> synthetic CT volume, slice by slice, and nnU-Net dataset export.

The use the paper points to (Zhuang et al., Sec. 4, "Future work"): synthetic CT for data
augmentation. Label volumes (AMOS ids) go through the training preprocessing (canonical
orientation, body class, resize), a trained medsynth model generates every axial slice, and the
slices are put back into the input's geometry (shape, affine, orientation) with intensities
mapped back to HU through the training window. Every input is validated before any slice is
generated, and every file is written atomically (temporary name, then rename).

A 2.5D model (:attr:`~medsynth.models.SynthesisModule.context_spec`) makes a volume in order,
inferior to superior, each slice given its neighbours' masks and the slice(s) made just before
it (:func:`generate_volumes`); several volumes go together, slice index by slice index, so a
volume of N slices costs N sequential ``generate()`` calls of a batch, whatever the number of volumes.

:func:`synthesize_files` runs on Lightning's machinery (``Trainer.predict``), so one call uses one
device or every GPU of several nodes (``devices``, ``num_nodes``, ``strategy``, as ``medsynth fit``
has them). The unit of work is what one process makes at once: a volume, or a group of volumes
for a model that makes them in order together (:func:`volume_group_size`); Lightning's
distributed sampler gives each process its own work items and a prediction writer saves each
volume on the process that made it, so no file has two writers. Slices draw their noise from
per-slice generators, so the files do not depend on the number of processes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter

from medsynth.data.context import SliceContext, neighbour_positions, volume_context
from medsynth.data.geometry import reassemble_volume, window_to_hu
from medsynth.io import (
    LabelCase,
    copy_file,
    find_image,
    nifti_inputs,
    read_label_case,
    save_nifti,
    write_json,
)
from medsynth.labels import BUILTIN_LABEL_SETS, LabelSet
from medsynth.models.base import CHECKPOINT_CLASS_KEY, LABEL_SET_KEY, SynthesisModule
from medsynth.random import slice_generators

__all__ = [
    "load_model",
    "set_context_sample_noise",
    # re-exported from medsynth.io, where they live
    "find_image",
    "nifti_inputs",
    "LabelCase",
    "read_label_case",
    "generate_volumes",
    "case_slices",
    "synthesize_cases",
    "volume_group_size",
    "synthesize_volume",
    "synthesize_files",
    "RUN_MANIFEST",
]

#: The file in a ``synthesize_files`` output folder that records the run writing into it.
RUN_MANIFEST = "medsynth_synthesis.json"

_SEGMENTER = "medsynth.models.segmenter.OrganSegmenter"


def _looks_like_segmenter(ckpt: object) -> bool:
    """An OrganSegmenter checkpoint written before segmenters recorded their class."""
    if not isinstance(ckpt, dict):
        return False
    hp, state = ckpt.get("hyper_parameters") or {}, ckpt.get("state_dict") or {}
    keys = {"image_size", "num_classes", "model_channels", "lr", "dropout"}
    optional = {"label_set", "window_level", "window_width"}
    return keys <= set(hp) <= keys | optional and any(str(k).startswith("net.conv_0.") for k in state)


def load_model(checkpoint: str | Path, map_location: str | torch.device = "cpu") -> SynthesisModule:
    """Rebuild a medsynth synthesis model from a Lightning checkpoint written by medsynth.

    Raises:
        FileNotFoundError: naming the checkpoint when it does not exist.
        ValueError: naming the file when it is not a medsynth synthesis checkpoint (and saying
            where an OrganSegmenter checkpoint goes instead).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    class_path = ckpt.get(CHECKPOINT_CLASS_KEY) if isinstance(ckpt, dict) else None
    if class_path == _SEGMENTER or (not class_path and _looks_like_segmenter(ckpt)):
        raise ValueError(
            f"{path} is an OrganSegmenter checkpoint (it scores organ Dice), not a synthesis model: "
            "--checkpoint needs a synthesis method's checkpoint (ConditionalDDPM, MaskGuidedDDPM, "
            "EdgeGuidedDDPM, SDM, Pix2Pix, SPADE, OASIS; e.g. outputs/demo/checkpoints/mask_guided_ddpm.ckpt "
            "or runs/phantom/<method>/checkpoints/last.ckpt). The segmenter goes to "
            "`medsynth evaluate --segmenter`."
        )
    if not class_path:
        raise ValueError(f"{path}: not a medsynth model checkpoint (no {CHECKPOINT_CLASS_KEY!r} entry)")
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{path}: names class {class_path!r}, which this medsynth cannot import") from err
    if not (isinstance(cls, type) and issubclass(cls, SynthesisModule)):
        raise ValueError(f"{path}: {class_path} is not a medsynth synthesis method")
    # The label set as recorded, where the dataset.json that defined it is not at hand any more.
    extra = {}
    named = (ckpt.get("hyper_parameters") or {}).get("label_set", "amos")
    if ckpt.get(LABEL_SET_KEY) and isinstance(named, str) and named not in BUILTIN_LABEL_SETS:
        if not Path(named).exists():
            if "_instantiator" in (ckpt.get("hyper_parameters") or {}):
                raise ValueError(
                    f"{path}: its label set file {named} is missing; the checkpoint records the table, but a "
                    "checkpoint written by `medsynth fit` re-reads the file: put it back at that path"
                )
            extra = {"label_set": ckpt[LABEL_SET_KEY]}
    # weights_only=False as above: a checkpoint trained on an nnU-Net data module records its
    # data module's hyperparameters, Path objects among them, which torch's weights-only loader refuses.
    model = cls.load_from_checkpoint(path, map_location=map_location, weights_only=False, **extra)
    return model.eval()


def set_context_sample_noise(
    model: SynthesisModule, level: float, where: str = "context_sample_noise"
) -> None:
    """Set the noise level (fraction of T) a 2.5D model's slice below gets when generating.

    Args:
        model: A 2.5D diffusion model that sees the previous slice (``context_previous >= 1``).
        level: In ``[0, 1]``; 0 gives the generated slice below as it is (docs/synthesis.md,
            "Guarding against drift").
        where: Names the option in errors (a CLI flag and the checkpoint).

    Raises:
        ValueError: naming ``where``, for a model without previous slices or a level outside [0, 1].
    """
    spec = model.context_spec
    if spec is None or not spec.previous:
        what = "a 2D model" if spec is None else f"a 2.5D model without previous slices ({spec.describe()})"
        raise ValueError(f"{where}: {type(model).__name__} is {what}; there is no slice below to noise")
    try:
        model.context_sample_noise = level
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def _generation_waves(indices: np.ndarray, previous: int) -> np.ndarray:
    """``[D]``: the step at which each slice can be made when it needs its ``previous`` slices first.

    0 for a slice without an existing previous slice (a volume's first, one after a gap in z), else
    one more than the latest of its previous slices. Without previous slices every slice is 0.
    """
    wave = np.zeros(len(indices), dtype=np.int64)
    if not previous:
        return wave
    prev = neighbour_positions(indices, range(-1, -previous - 1, -1))  # [D, p]
    for d in np.argsort(indices, kind="stable"):  # previous slices have lower indices: done first
        have = prev[d][prev[d] >= 0]
        wave[d] = 1 + wave[have].max() if len(have) else 0
    return wave


def _ranges(values: Sequence[int]) -> str:
    """``0-3, 7, 9-10`` for sorted ints."""
    out, values = [], list(values)
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ", ".join(out)


@torch.no_grad()
def generate_volumes(
    model: SynthesisModule,
    masks: Sequence[torch.Tensor],
    names: Sequence[str],
    *,
    indices: Sequence[Sequence[int] | np.ndarray] | None = None,
    batch_size: int = 16,
    num_steps: int | None = None,
    sampler: str | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    coherent: bool = False,
    precision: str | None = None,
    progress: bool = False,
) -> list[torch.Tensor]:
    """Generate every slice of several volumes at the model's size, in the order the model needs.

    A 2D model makes the slices in batches of ``batch_size``. A 2.5D model gets each slice's context
    (:mod:`medsynth.data.context`): the masks of its neighbours and, with previous-slice context,
    the slices made before it, so slices are made in steps: step z makes the z-th slice of every
    volume at once (in batches of ``batch_size``). A volume of N slices then costs N sequential
    batches however many volumes come along; slices of one volume never share a step.

    Each slice's noise comes from its own generator seeded from ``(seed, name, slice index)``
    (:func:`medsynth.random.slice_generators`; every slice from ``(seed, name)`` with ``coherent``),
    so the volumes do not depend on ``batch_size`` nor on which volumes are made together (up to
    the float rounding of convolutions over batches of different sizes: up to ~1e-3 measured on a
    CPU for a tiny 2.5D model, carried along a volume made in order).

    Args:
        model: A trained synthesis method.
        masks: Per volume, int ``[D, S, S]`` label slices at the model's ``image_size``.
        names: Per volume, its case name (seeds its noise; unique).
        indices: Per volume, the axial index of each slice (None: ``0..D-1``). Gaps in z are
            missing neighbours: the slices on either side of a gap see none across it.
        batch_size: Slices per ``generate()`` call.
        num_steps, sampler, guidance_scale: Passed to ``generate()`` (None = method default).
        seed: Base seed of every slice's noise.
        coherent: The same noise for every slice of a volume.
        precision: ``generate()`` precision (see :meth:`SynthesisModule.autocast`).
        progress: Show a progress bar.

    Returns:
        Per volume, float32 ``[D, S, S]`` in [0, 1] on the CPU.

    Raises:
        ValueError: naming the volume for a wrong shape, duplicate indices or names.

    A volume with fewer slices than the context spans (``2k + 1`` with neighbour masks) is made
    all the same, with a UserWarning: its slices lack some neighbours, flagged missing as at any
    volume's end.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if len(masks) != len(names) or (indices is not None and len(indices) != len(masks)):
        raise ValueError(
            f"masks, names and indices must have one entry per volume, got {len(masks)}, {len(names)}"
            + (f", {len(indices)}" if indices is not None else "")
        )
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate volume names {sorted({n for n in names if list(names).count(n) > 1})}")
    spec, size = model.context_spec, model.image_size
    vols, idxs = [], []
    for v, (mask, name) in enumerate(zip(masks, names)):
        mask = torch.as_tensor(mask)
        if mask.dim() != 3 or tuple(mask.shape[1:]) != (size, size):
            raise ValueError(
                f"volume {name}: masks must be [D, {size}, {size}] (the model's size), got {tuple(mask.shape)}"
            )
        idx = np.arange(len(mask)) if indices is None else np.asarray(indices[v], dtype=np.int64).reshape(-1)
        if len(idx) != len(mask):
            raise ValueError(f"volume {name}: {len(idx)} indices for {len(mask)} slices")
        try:
            neighbour_positions(idx, ())
        except ValueError as err:
            raise ValueError(f"volume {name}: {err}") from err
        if spec is not None and 0 < len(mask) < spec.span:
            warnings.warn(
                f"volume {name} has {len(mask)} slice(s), fewer than the {spec.span} the model's context spans "
                f"({spec.describe()}): its slices see only the neighbours that exist; the others are flagged "
                "missing, as at any volume's end",
                stacklevel=2,
            )
        vols.append(mask.long())
        idxs.append(idx)
    waves = [_generation_waves(idx, spec.previous if spec else 0) for idx in idxs]
    outs = [torch.zeros(len(m), size, size) for m in vols]
    done = [torch.zeros(len(m), dtype=torch.bool) for m in vols]
    # (step, volume, position) of every slice; steps in order, volumes and slices within a step.
    todo = sorted((int(w), v, d) for v, wave in enumerate(waves) for d, w in enumerate(wave))
    opts = {"num_steps": num_steps, "sampler": sampler, "guidance_scale": guidance_scale}
    from medsynth.callbacks.progress import progress_bar

    label = names[0] if len(names) == 1 else f"{len(names)} volumes"
    bar = progress_bar(len(todo), f"synthesize {label}", unit="slice", disable=not progress)
    start = 0
    while start < len(todo):
        step = todo[start][0]
        stop = start
        while stop < len(todo) and todo[stop][0] == step and stop - start < batch_size:
            stop += 1
        chunk = todo[start:stop]
        start = stop
        batch = torch.stack([vols[v][d] for _, v, d in chunk]).to(model.device)  # [b, S, S]
        keys = [(names[v], -1 if coherent else int(idxs[v][d])) for _, v, d in chunk]
        context = None
        if spec is not None:
            per_volume = {}
            for _, v, d in chunk:
                per_volume.setdefault(v, []).append(d)
            parts = {
                v: volume_context(vols[v], idxs[v], spec, rows, images=outs[v], done=done[v])
                for v, rows in per_volume.items()
            }
            # back into chunk order (volumes are contiguous in it, rows in order)
            context = SliceContext.cat([parts[v] for v in per_volume])
        with model.autocast(precision):
            x = model.generate(
                batch, generator=slice_generators(keys, seed, model.device), context=context, **opts
            )
        x = x[:, 0].float().cpu()  # [b, S, S] in [0, 1]
        for j, (_, v, d) in enumerate(chunk):
            outs[v][d] = x[j]
            done[v][d] = True
        bar.update(len(chunk))
    bar.close()
    return outs


def case_slices(model: SynthesisModule, case: LabelCase) -> tuple[torch.Tensor, np.ndarray]:
    """A label case's axial slices at the model's size and the indices to generate.

    Returns:
        ``(masks [D, S, S] int64, indices)``: all ``D`` slices for a 2D model. For a 2.5D model a
        slice without any label (all 0: no body, no organ) is a gap in z and left out of
        ``indices`` (a UserWarning names them): it is not generated (it stays air, the bottom of
        the window) and its neighbours see it as missing, not as an empty slice.
    """
    size = model.image_size
    mask = torch.from_numpy(np.ascontiguousarray(np.moveaxis(case.mask, 2, 0))).long()  # [D, H, W]
    small = F.interpolate(mask[:, None].float(), size=(size, size), mode="nearest-exact")[
        :, 0
    ].long()  # [D, S, S]
    indices = np.arange(len(small))
    if model.context_spec is not None:
        empty = ~mask.reshape(len(mask), -1).any(dim=1).numpy()  # [D] slices without any label
        if empty.any():
            warnings.warn(
                f"{case.path}: axial slice(s) {_ranges(np.nonzero(empty)[0].tolist())} (canonical order, 0 = "
                "most inferior) hold no label at all: gaps in z. They are not generated (they stay air) and "
                "their neighbours see them as missing",
                stacklevel=2,
            )
            indices = indices[~empty]
    return small, indices


@torch.no_grad()
def synthesize_cases(
    model: SynthesisModule,
    cases: Sequence[LabelCase],
    *,
    window: tuple[float, float] | None = None,
    **options: Any,
) -> list[np.ndarray]:
    """:func:`generate_volumes` over label cases, each returned in HU in its file's geometry.

    Args:
        model: A trained synthesis method.
        cases: From :func:`read_label_case`; they are made together (see :func:`generate_volumes`).
        window: (level, width) mapping [0, 1] back to HU (None: the model's, ``model.window``).
        **options: Of :func:`generate_volumes` (batch_size, num_steps, sampler, guidance_scale,
            seed, coherent, precision, progress).

    Returns:
        Per case, float32 ``[X, Y, Z]`` in HU, same shape and orientation as its input file.
    """
    level, width = model.window if window is None else window
    slices = [case_slices(model, c) for c in cases]
    masks = [m[torch.from_numpy(idx)] for m, idx in slices]
    made = generate_volumes(
        model, masks, [c.name for c in cases], indices=[idx for _, idx in slices], **options
    )
    out = []
    for case, (mask, idx), x in zip(cases, slices, made):
        full = torch.zeros(mask.shape, dtype=torch.float32)  # [D, S, S]; gaps stay 0 (the window's bottom)
        full[torch.from_numpy(idx)] = x
        # Back to the file's geometry (the inverse of the slice pipeline), then to HU.
        out.append(window_to_hu(reassemble_volume(full, case.geometry), level, width).astype(np.float32))
    return out


@torch.no_grad()
def synthesize_volume(
    model: SynthesisModule,
    case: LabelCase,
    *,
    batch_size: int = 16,
    num_steps: int | None = None,
    sampler: str | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    window: tuple[float, float] | None = None,
    progress: bool = True,
    precision: str | None = None,
    coherent: bool = False,
) -> np.ndarray:
    """Generate every axial slice of ``case`` and return a HU volume in the input's geometry.

    Args:
        model: A trained synthesis method.
        case: From :func:`read_label_case`.
        batch_size: Slices per ``generate()`` call.
        num_steps, sampler, guidance_scale: Passed to ``generate()`` (None = method default).
        seed: Seeds each slice's noise from ``(seed, case name, slice index)``; the output does not
            depend on ``batch_size``.
        window: (level, width) of the training window, to map [0, 1] back to HU (None: the
            model's, ``model.window``).
        progress: Show a progress bar.
        precision: ``generate()`` precision: None/"32" (fp32) or "bf16" (autocast; see
            :meth:`SynthesisModule.autocast`).
        coherent: Draw every slice from the same noise (seeded from ``(seed, case name)``), so
            neighbouring slices, whose masks differ little, get consistent texture and brightness
            (slices drawn independently jump from one to the next along z, which a 3D segmenter
            sees). With a deterministic sampler (``ddim``; a flow's ``euler``/``heun``) the chain is a fixed
            function of the mask; with ancestral sampling every step's noise is shared.

    A 2.5D model makes the slices in order with their context (:func:`generate_volumes`); slices
    without any label are gaps (:func:`case_slices`).

    Returns:
        float32 ``[X, Y, Z]`` in HU, same shape and orientation as the input file.
    """
    options = dict(num_steps=num_steps, sampler=sampler, guidance_scale=guidance_scale, seed=seed)
    options.update(batch_size=batch_size, progress=progress, precision=precision, coherent=coherent)
    return synthesize_cases(model, [case], window=window, **options)[0]


def volume_group_size(model: SynthesisModule, batch_size: int) -> int:
    """Volumes :func:`synthesize_files` makes together: ``batch_size`` for a model that makes a
    volume in order (previous-slice context: one step makes a slice of each), else 1."""
    spec = model.context_spec
    return batch_size if spec is not None and spec.previous else 1


def _nnunet_labels(labels: LabelSet) -> dict[str, int]:
    """dataset.json ``labels`` of an export: every class but body (the files carry no body)."""
    return {c.name: c.index for c in labels.classes if c.index != labels.body}


def _model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's class and state dict (names, dtypes, shapes, values): equal for equal weights."""
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, value in sorted(model.state_dict().items()):
        if not isinstance(value, torch.Tensor):  # e.g. a module's extra state
            digest.update(f"\x00{name}\x00{value!r}".encode())
            continue
        digest.update(f"\x00{name}\x00{value.dtype}\x00{tuple(value.shape)}\x00".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_manifest(output: Path, manifest: dict[str, Any]) -> None:
    """Raise a ValueError naming ``output`` when it holds the files of another run."""
    path = output / RUN_MANIFEST
    if not path.is_file():
        return
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--output {output}: unreadable run record {path.name} ({err})") from err
    if found != manifest:
        diff = sorted(k for k in {*found, *manifest} if found.get(k) != manifest.get(k))
        raise ValueError(
            f"--output {output} holds volumes of another run (its {RUN_MANIFEST} differs in {diff}); "
            "rerun with the same checkpoint and settings to complete it, or choose another --output"
        )


class _VolumeSynthesis(L.LightningModule):
    """``predict_step``: a work item (cases made together) -> ``[(case, HU volume)]`` (:func:`synthesize_cases`)."""

    def __init__(self, model: SynthesisModule, options: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.options = options

    def transfer_batch_to_device(
        self, batch: list[LabelCase], device: torch.device, dataloader_idx: int
    ) -> Any:
        return batch  # label volumes stay on the CPU; generate_volumes moves each batch of slices

    def predict_step(self, batch: list[LabelCase], batch_idx: int) -> list[tuple[LabelCase, np.ndarray]]:
        if not batch:  # a placeholder of a process with nothing to make
            return []
        progress = self.options.get("progress", False) and self.trainer.is_global_zero
        return list(zip(batch, synthesize_cases(self.model, batch, **{**self.options, "progress": progress})))


class _VolumeWriter(BasePredictionWriter):
    """Writes each volume of a work item as ``<output>/<case>.nii.gz`` (int16 HU), atomically, on the
    process that made it; global rank 0 records the run (:data:`RUN_MANIFEST`) before any work."""

    def __init__(self, output: Path, manifest: dict[str, Any]) -> None:
        super().__init__(write_interval="batch")
        self.output, self.manifest = output, manifest

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning holds every process at a barrier after the setup hooks: nothing is made before this.
        if trainer.is_global_zero:
            _check_manifest(self.output, self.manifest)  # again: another run may have started since
            if not (self.output / RUN_MANIFEST).is_file():
                write_json(self.output / RUN_MANIFEST, self.manifest)
            for stale in self.output.glob(".*.partial*"):  # left by a killed run; never looks complete
                if stale.is_file():
                    stale.unlink()

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: list[tuple[LabelCase, np.ndarray]],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for case, hu in prediction:
            target = self.output / f"{case.name}.nii.gz"
            if not target.exists():  # a group is remade whole; its finished volumes stay as they are
                save_nifti(target, np.round(hu).astype(np.int16), case.geometry.affine)


def _first(items: list[Any]) -> Any:
    """collate_fn of the work items: one item per ``predict_step``."""
    return items[0]


def _trainer_devices(
    model: SynthesisModule, accelerator: str | None, devices: int | str | list[int]
) -> tuple[str, int | str | list[int]]:
    """Lightning's ``(accelerator, devices)``; ``accelerator=None`` with one device: the model's device."""
    if accelerator is not None:
        return accelerator, devices
    if devices != 1:
        return "auto", devices
    device = model.device
    return {"cuda": "gpu"}.get(device.type, device.type), [device.index] if device.index is not None else 1


def _export_nnunet(model: SynthesisModule, cases: Sequence[LabelCase], output: Path, nnunet: str) -> None:
    """The nnU-Net v2 raw dataset ``<output>/<nnunet>`` from the finished volumes, staged and renamed."""
    staging, final = output / f".{nnunet}.partial", output / nnunet
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for case in cases:
            copy_file(output / f"{case.name}.nii.gz", staging / "imagesTr" / f"{case.name}_0000.nii.gz")
            organs = np.where(case.labels == model.label_set.body, 0, case.labels).astype(np.uint8)
            save_nifti(staging / "labelsTr" / f"{case.name}.nii.gz", organs, case.geometry.affine)
        meta = {
            "name": nnunet,
            "description": "Synthetic abdominal CT generated by medsynth",
            "channel_names": {"0": "CT"},
            "labels": _nnunet_labels(model.label_set),
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
        }
        (staging / "dataset.json").write_text(json.dumps(meta, indent=2))
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def synthesize_files(
    model: SynthesisModule,
    inputs: Sequence[Path],
    output: Path,
    *,
    images: Path | None = None,
    nnunet: str | None = None,
    batch_size: int = 16,
    num_steps: int | None = None,
    sampler: str | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    progress: bool = True,
    precision: str | None = None,
    coherent: bool = False,
    accelerator: str | None = None,
    devices: int | str | list[int] = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
) -> list[Path]:
    """Synthesize a CT volume for each label file; optionally also write an nnU-Net v2 raw dataset.

    All inputs are read and validated first; nothing is written when any is bad. Each output file
    appears atomically; the nnU-Net folder appears only once complete. A 2.5D model with
    previous-slice context makes ``batch_size`` volumes together (:func:`volume_group_size`).

    Runs as ``Trainer.predict`` over the work items (a volume, or such a group), on one device or
    on several processes (``devices``, ``num_nodes``, ``strategy``: Lightning's flags): each
    process makes and writes whole volumes, so the files are the same for any number of
    processes. Every process calls this function with the same model (loaded from the same
    checkpoint, or pickled to spawned processes); global rank 0 writes the nnU-Net dataset after
    every process has finished.

    Resumable: a volume whose file exists is not made again (a group is remade whole when one of
    its volumes is missing, and only the missing ones are written). The folder records the run in
    :data:`RUN_MANIFEST` (model fingerprint and settings); a rerun with another model or other
    settings is refused.

    Args:
        model: A trained synthesis method.
        inputs: Label volumes (NIfTI).
        output: Output folder.
        images: Folder of the matching CT volumes (for the body class).
        nnunet: Also write ``<output>/<nnunet>``, an nnU-Net v2 raw dataset (``Dataset123_Name``).
        batch_size, num_steps, sampler, guidance_scale, seed, coherent: As in :func:`synthesize_volume`.
        progress: Show a progress bar (global rank 0).
        precision: That of ``generate()`` (see :func:`synthesize_volume`).
        accelerator: Lightning accelerator (None: the model's device with ``devices=1``, else "auto").
        devices, num_nodes, strategy: Lightning's (e.g. ``devices=4, strategy="ddp"``).

    Returns:
        The CT volumes (``<output>/<case>.nii.gz``), in input order, made now or before.

    Raises:
        ValueError: naming the file, flag or folder at fault, before any slice is made.
    """
    import re

    if nnunet is not None and not re.fullmatch(r"Dataset\d{3}_[A-Za-z0-9_\-]+", nnunet):
        raise ValueError(f"--nnunet must look like 'Dataset123_Name', got {nnunet!r}")
    if not inputs:
        raise ValueError("no label volumes given")
    if not isinstance(num_nodes, int) or num_nodes < 1:
        raise ValueError(f"--num_nodes must be a positive int, got {num_nodes!r}")
    cases = []
    for path in inputs:
        image = find_image(path, images) if images is not None else None
        cases.append(read_label_case(path, image, label_set=model.label_set))
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError(
            f"duplicate case names among the inputs: {sorted(n for n in names if names.count(n) > 1)}"
        )
    final_nnunet = output / nnunet if nnunet else None
    if final_nnunet is not None and final_nnunet.exists():
        raise ValueError(f"{final_nnunet} exists already; refusing to overwrite an nnU-Net dataset")
    options = dict(num_steps=num_steps, sampler=sampler, guidance_scale=guidance_scale, seed=seed)
    options.update(batch_size=batch_size, precision=precision, coherent=coherent)
    manifest = {"model": _model_fingerprint(model), **options, "precision": str(precision or "32")}
    _check_manifest(output, manifest)  # the folder is made by global rank 0 with the manifest
    targets = [output / f"{name}.nii.gz" for name in names]
    group = volume_group_size(model, batch_size)
    # The work items: groups of the whole input list (so a rerun makes the same groups); done ones out.
    items = [
        cases[i : i + group]
        for i in range(0, len(cases), group)
        if not all(t.exists() for t in targets[i : i + group])
    ]
    accelerator, devices = _trainer_devices(model, accelerator, devices)
    device = model.device
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        logger=False,
        callbacks=[_VolumeWriter(output, manifest)],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        inference_mode=False,
    )
    # Lightning's sampler for predict needs an item per process: idle processes get an empty one.
    # (The world size as the flags give it: before its processes start, a Trainer may say 1.)
    items += [[]] * max(trainer.num_nodes * trainer.num_devices - len(items), 0)
    loader = torch.utils.data.DataLoader(items, batch_size=1, collate_fn=_first)
    trainer.predict(
        _VolumeSynthesis(model, {**options, "progress": progress}), loader, return_predictions=False
    )
    model.to(device)  # Lightning leaves the module on the CPU
    trainer.strategy.barrier("medsynth_volumes_written")
    if trainer.is_global_zero:
        missing = [str(t) for t in targets if not t.is_file()]
        if missing:
            raise RuntimeError(f"volumes missing after synthesis: {missing[:5]}")
        if final_nnunet is not None:
            _export_nnunet(model, cases, output, nnunet)
    return targets
