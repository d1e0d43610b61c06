"""Mask volume -> synthetic CT volume, slice by slice, and nnU-Net dataset export.

The use the paper points to (Zhuang et al., Sec. 4, "Future work"): synthetic CT for data
augmentation. Label volumes (AMOS ids) go through the training preprocessing (canonical
orientation, body class, resize), a trained medsynth model generates every axial slice, and the
slices are put back into the input's geometry (shape, affine, orientation) with intensities
mapped back to HU through the training window. Every input is validated before any slice is
generated, and every file is written atomically (temporary name, then rename).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.data.geometry import VolumeGeometry, reassemble_volume, window_to_hu
from medsynth.data.transforms import (
    CANONICAL_AXCODES,
    add_body_class,
    body_mask,
    canonicalize,
    load_nifti,
)
from medsynth.labels import BUILTIN_LABEL_SETS, LabelSet, get_label_set
from medsynth.models.base import CHECKPOINT_CLASS_KEY, LABEL_SET_KEY, SynthesisModule
from medsynth.precision import PRECISIONS
from medsynth.random import slice_generators

__all__ = [
    "load_model",
    "find_image",
    "LabelCase",
    "read_label_case",
    "synthesize_volume",
    "synthesize_files",
    "main",
]

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


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


def find_image(label_path: Path, images: Path) -> Path:
    """The CT volume matching a label volume in folder ``images``.

    Looks for the same file name (AMOS layout: ``imagesTr/amos_0001.nii.gz``) and for nnU-Net's
    first-channel name (``imagesTr/<case>_0000.nii.gz`` beside ``labelsTr/<case>.nii.gz``).

    Raises:
        ValueError: naming both candidates when neither exists.
    """
    label_path, images = Path(label_path), Path(images)
    suffix = ".nii.gz" if label_path.name.endswith(".nii.gz") else label_path.suffix
    candidates = [images / label_path.name, images / f"{_stem(label_path)}_0000{suffix}"]
    for image in candidates:
        if image.is_file():
            return image
    raise ValueError(f"{label_path}: no matching CT image ({candidates[0]} or {candidates[1].name})")


@dataclass
class LabelCase:
    """A validated label volume, ready for synthesis.

    Attributes:
        path: Source file.
        name: Case name (file name without the NIfTI suffix).
        mask: uint8 ``[H, W, D]`` in canonical orientation, values 0..16 with the body class.
        geometry: Shape and affine of the input file (to put synthetic slices back).
        labels: The input labels as stored (AMOS ids, 16 = body kept if present) ``[X, Y, Z]``.
    """

    path: Path
    name: str
    mask: np.ndarray
    geometry: VolumeGeometry
    labels: np.ndarray


def read_label_case(
    path: str | Path,
    image: str | Path | None = None,
    body_threshold: float = -500.0,
    label_set: LabelSet | str | None = None,
) -> LabelCase:
    """Read and validate a label volume; add the body class as in training.

    The body class (16 for AMOS, the label set's ``body`` in general) is taken from the labels
    when present. Otherwise it is derived, exactly as in training, from the matching CT volume
    ``image`` (threshold and morphology). Without either there is no body outline to condition
    on, which is an error.

    Args:
        path: The label volume.
        image: Its CT volume (for the body class), or None.
        body_threshold: HU threshold of the body outline.
        label_set: The label set the values must fit (a model's ``label_set``; None: AMOS).

    Raises:
        ValueError: naming the file for unreadable volumes, non-integer labels, values outside
            the label set (listing them), an image of another shape or geometry, or a missing
            body outline.
    """
    labels_set = get_label_set("amos" if label_set is None else label_set)
    body = labels_set.body
    path = Path(path)
    try:
        raw, affine = load_nifti(path, label=True)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read label volume ({err})") from err
    raw = np.asarray(raw)
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.array_equal(raw, np.round(raw)):
            raise ValueError(
                f"{path}: labels must be integers 0..{labels_set.num_classes - 1}, found non-integer values"
            )
    if raw.size and (raw.min() < 0 or raw.max() >= labels_set.num_classes):
        values = np.unique(raw)
        bad = values[(values < 0) | (values >= labels_set.num_classes)]
        raise ValueError(
            f"{path}: label values {bad[:10].astype(np.int64).tolist()} do not fit the label set "
            f"{labels_set.name!r} (ids 0..{labels_set.num_classes - 1}, {body} = body)"
        )
    labels = raw.astype(np.uint8)
    lab_c, _ = canonicalize(labels, affine, CANONICAL_AXCODES)  # [H, W, D]
    if (lab_c == body).any():
        mask = lab_c
    elif image is not None:
        image = Path(image)
        try:
            hu, img_affine = load_nifti(image)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{image}: cannot read CT volume ({err})") from err
        if hu.shape != labels.shape or not np.allclose(img_affine, affine, atol=1e-3):
            raise ValueError(
                f"{image}: shape/geometry {hu.shape} differs from the label volume {path} {labels.shape}"
            )
        hu_c, _ = canonicalize(hu, img_affine, CANONICAL_AXCODES)
        mask = add_body_class(np.where(lab_c == body, 0, lab_c), body_mask(hu_c, body_threshold), body)
    else:
        raise ValueError(
            f"{path}: no body label ({body}) in the volume and no CT image to derive it from; "
            f"pass the matching CT with --images, or add the body class to the labels"
        )
    return LabelCase(path, _stem(path), mask, VolumeGeometry(tuple(labels.shape), np.asarray(affine)), labels)


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
            sees). With a deterministic sampler (``ddim``) the whole chain is then a fixed
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


def _save_atomic(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.nii.gz")
    nib.save(nib.Nifti1Image(array, affine), tmp)
    os.replace(tmp, path)


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
            _save_atomic(hu16, case.geometry.affine, target)
            written.append(target)
            if staging is not None:
                _save_atomic(hu16, case.geometry.affine, staging / "imagesTr" / f"{case.name}_0000.nii.gz")
                organs = np.where(case.labels == model.label_set.body, 0, case.labels).astype(np.uint8)
                _save_atomic(organs, case.geometry.affine, staging / "labelsTr" / f"{case.name}.nii.gz")
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


def _parser() -> argparse.ArgumentParser:
    from medsynth.cli import HelpFormatter

    p = argparse.ArgumentParser(
        prog="medsynth synthesize",
        description="Label volumes (NIfTI, AMOS ids) -> synthetic CT volumes (NIfTI, HU).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="a medsynth model checkpoint (.ckpt)")
    p.add_argument("--input", required=True, type=Path, help="a label volume .nii.gz or a folder of them")
    p.add_argument("--output", required=True, type=Path, help="output folder")
    p.add_argument(
        "--images", type=Path, default=None, help="folder of the matching CT volumes (for the body class)"
    )
    p.add_argument(
        "--num_steps",
        type=int,
        default=None,
        help="diffusion models: sampling steps, each one network evaluation per slice, so time grows "
        "linearly (default None: the model's 1000 steps, 10x the 100 the docs use)",
    )
    p.add_argument(
        "--sampler",
        default=None,
        help="diffusion models: ddpm (ancestral), ddim or dpm++ (default None: the model's own, "
        "the 1000-step ancestral chain)",
    )
    p.add_argument("--guidance_scale", type=float, default=None, help="classifier-free guidance (SDM)")
    p.add_argument("--batch_size", type=int, default=16, help="slices per generate() call")
    p.add_argument("--seed", type=int, default=0, help="seeds each slice's noise")
    p.add_argument(
        "--coherent",
        action="store_true",
        help="the same noise for every slice of a volume: consistent texture along z (see docs/synthesis.md)",
    )
    p.add_argument(
        "--nnunet", default=None, metavar="DatasetNNN_Name", help="also write an nnU-Net v2 raw dataset"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="32",
        help="sampling precision: 32 (fp32) or bf16 (autocast; fast on CUDA, also allowed on CPU)",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar / progress lines")
    return p


def nifti_inputs(path: Path) -> list[Path]:
    """A NIfTI file, or every ``*.nii``/``*.nii.gz`` directly in a folder (sorted); ValueError naming ``--input``."""
    if path.is_dir():
        inputs = sorted(p for p in path.iterdir() if p.name.endswith(_NIFTI_SUFFIXES))
        if not inputs:
            raise ValueError(f"--input {path}: no .nii or .nii.gz files")
        return inputs
    if path.is_file():
        return [path]
    raise ValueError(f"--input not found: {path}")


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        inputs = nifti_inputs(a.input)
        model = load_model(a.checkpoint, map_location=a.device)
        written = synthesize_files(
            model,
            inputs,
            a.output,
            images=a.images,
            nnunet=a.nnunet,
            batch_size=a.batch_size,
            num_steps=a.num_steps,
            sampler=a.sampler,
            guidance_scale=a.guidance_scale,
            seed=a.seed,
            progress=not a.no_progress,
            precision=a.precision,
            coherent=a.coherent,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"medsynth synthesize: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} synthetic CT volume(s) to {a.output}")
    if a.nnunet:
        print(f"nnU-Net dataset: {a.output / a.nnunet}")
    return 0
