"""Mask volume -> synthetic CT volume, slice by slice, and nnU-Net dataset export.

The use the paper points to (Zhuang et al., Sec. 4, "Future work"): synthetic CT for data
augmentation. Label volumes (AMOS ids) go through the training preprocessing (canonical
orientation, body class, resize), a trained medsynth model generates every axial slice, and the
slices are put back into the input's geometry (shape, affine, orientation) with intensities
mapped back to HU through the training window. Every input is validated before any slice is
generated, and every file is written atomically (temporary name, then rename).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.data.geometry import reassemble_volume, window_to_hu
from medsynth.io import LabelCase, find_image, nifti_inputs, read_label_case, save_nifti
from medsynth.labels import BUILTIN_LABEL_SETS, LabelSet
from medsynth.models.base import CHECKPOINT_CLASS_KEY, LABEL_SET_KEY, SynthesisModule
from medsynth.random import slice_generators

__all__ = [
    "load_model",
    # re-exported from medsynth.io, where they live
    "find_image",
    "nifti_inputs",
    "LabelCase",
    "read_label_case",
    "synthesize_volume",
    "synthesize_files",
]

_SEGMENTER = "medsynth.models.segmenter.OrganSegmenter"


def _looks_like_segmenter(ckpt: object) -> bool:
    """An OrganSegmenter checkpoint written before segmenters recorded their class."""
    if not isinstance(ckpt, dict):
        return False
    hp, state = ckpt.get("hyper_parameters") or {}, ckpt.get("state_dict") or {}
    keys = {"image_size", "num_classes", "model_channels", "lr", "dropout"}
    return keys <= set(hp) <= keys | {"label_set"} and any(str(k).startswith("net.conv_0.") for k in state)


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
    model = cls.load_from_checkpoint(path, map_location=map_location, **extra)
    return model.eval()


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

    Returns:
        float32 ``[X, Y, Z]`` in HU, same shape and orientation as the input file.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    level, width = model.window if window is None else window
    size = model.image_size
    mask = torch.from_numpy(np.ascontiguousarray(np.moveaxis(case.mask, 2, 0))).long()  # [D, H, W]
    depth = mask.shape[0]
    small = F.interpolate(mask[:, None].float(), size=(size, size), mode="nearest-exact")[
        :, 0
    ].long()  # [D, S, S]
    out = torch.empty(depth, size, size)
    from medsynth.callbacks.progress import progress_bar

    bar = progress_bar(depth, f"synthesize {case.name}", unit="slice", disable=not progress)
    for start in range(0, depth, batch_size):
        batch = small[start : start + batch_size].to(model.device)
        # One generator per slice, keyed on (case, slice): the output does not depend on batch_size.
        # Coherent volumes key every slice on the case alone: the same noise for all of them.
        keys = [(case.name, -1 if coherent else k) for k in range(start, start + batch.shape[0])]
        opts = {"num_steps": num_steps, "sampler": sampler, "guidance_scale": guidance_scale}
        with model.autocast(precision):
            x = model.generate(batch, generator=slice_generators(keys, seed, model.device), **opts)
        out[start : start + batch.shape[0]] = x[:, 0].float().cpu()  # [b, S, S] in [0, 1]
        bar.update(batch.shape[0])
    bar.close()
    # Back to the file's geometry (the inverse of the slice pipeline), then to HU.
    return window_to_hu(reassemble_volume(out, case.geometry), level, width).astype(np.float32)


def _nnunet_labels(labels: LabelSet) -> dict[str, int]:
    """dataset.json ``labels`` of an export: every class but body (the files carry no body)."""
    return {c.name: c.index for c in labels.classes if c.index != labels.body}


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
) -> list[Path]:
    """Synthesize a CT volume for each label file; optionally also write an nnU-Net v2 raw dataset.

    All inputs are read and validated first; nothing is written when any is bad. Each output file
    appears atomically; the nnU-Net folder appears only once complete.

    ``precision`` is that of ``generate()`` (see :func:`synthesize_volume`).

    Returns:
        The written CT volumes (``<output>/<case>.nii.gz``).
    """
    import re

    if nnunet is not None and not re.fullmatch(r"Dataset\d{3}_[A-Za-z0-9_\-]+", nnunet):
        raise ValueError(f"--nnunet must look like 'Dataset123_Name', got {nnunet!r}")
    if not inputs:
        raise ValueError("no label volumes given")
    cases = []
    for path in inputs:
        image = find_image(path, images) if images is not None else None
        cases.append(read_label_case(path, image, label_set=model.label_set))
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError(
            f"duplicate case names among the inputs: {sorted(n for n in names if names.count(n) > 1)}"
        )
    output.mkdir(parents=True, exist_ok=True)
    final_nnunet = output / nnunet if nnunet else None
    if final_nnunet is not None and final_nnunet.exists():
        raise ValueError(f"{final_nnunet} exists already; refusing to overwrite an nnU-Net dataset")
    staging = output / f".{nnunet}.partial" if nnunet else None
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
    written = []
    try:
        for case in cases:
            hu = synthesize_volume(
                model,
                case,
                batch_size=batch_size,
                num_steps=num_steps,
                sampler=sampler,
                guidance_scale=guidance_scale,
                seed=seed,
                progress=progress,
                precision=precision,
                coherent=coherent,
            )
            hu16 = np.round(hu).astype(np.int16)
            target = output / f"{case.name}.nii.gz"
            save_nifti(target, hu16, case.geometry.affine)
            written.append(target)
            if staging is not None:
                save_nifti(staging / "imagesTr" / f"{case.name}_0000.nii.gz", hu16, case.geometry.affine)
                organs = np.where(case.labels == model.label_set.body, 0, case.labels).astype(np.uint8)
                save_nifti(staging / "labelsTr" / f"{case.name}.nii.gz", organs, case.geometry.affine)
        if staging is not None:
            meta = {
                "name": nnunet,
                "description": "Synthetic abdominal CT generated by medsynth",
                "channel_names": {"0": "CT"},
                "labels": _nnunet_labels(model.label_set),
                "numTraining": len(cases),
                "file_ending": ".nii.gz",
            }
            (staging / "dataset.json").write_text(json.dumps(meta, indent=2))
            os.replace(staging, final_nnunet)
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return written
