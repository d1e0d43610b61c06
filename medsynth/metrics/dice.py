"""Organ Dice: learned correspondence between a mask and the CT synthesised from it.

Zhuang et al., Sec. 4, run TotalSegmentator (Wasserthal et al., 2023) on synthetic CT
*volumes* and compare its organ masks with the ground-truth labels by Dice. This module holds
the Dice itself, the inverse of the slice pipeline (synthetic slices -> a volume in the original
NIfTI geometry) and :class:`TotalSegmentatorScorer`, which ties them together.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from medsynth.data.geometry import WINDOW_LEVEL, WINDOW_WIDTH, VolumeGeometry, reassemble_volume, window_to_hu
from medsynth.labels import (
    CLASSES,
    NUM_CLASSES,
    ORGAN_IDS,
    TOTALSEG_TO_AMOS,
    LabelSet,
    get_label_set,
    totalseg_label_set,
)

__all__ = [
    "dice_counts",
    "dice_from_counts",
    "dice_per_class",
    "VolumeGeometry",
    "window_to_hu",
    "reassemble_volume",
    "totalseg_weights_root",
    "required_totalseg_folders",
    "check_totalseg_weights",
    "map_totalseg_labels",
    "TotalSegmentatorScorer",
]


def _labels(x: Tensor | np.ndarray, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}")
    return t.long()


def dice_counts(
    pred: Tensor | np.ndarray, target: Tensor | np.ndarray, num_classes: int = NUM_CLASSES
) -> Tensor:
    """Per-class voxel counts ``[3, num_classes]`` int64: intersection, predicted, ground truth.

    Counts add up over slices and processes, so Dice over a whole split (or a volume) is exact
    whatever the batching: see :func:`dice_from_counts`.
    """
    p, t = _labels(pred, "pred"), _labels(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} must have the same shape")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    for name, x in (("pred", p), ("target", t)):
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_classes):
            raise ValueError(
                f"{name} values must lie in 0..{num_classes - 1}, got {int(x.min())}..{int(x.max())}"
            )
    p, t = p.reshape(-1).cpu(), t.reshape(-1).cpu()
    inter = torch.bincount(p[p == t], minlength=num_classes)
    return torch.stack(
        [inter, torch.bincount(p, minlength=num_classes), torch.bincount(t, minlength=num_classes)]
    ).long()


def dice_from_counts(counts: Tensor | np.ndarray) -> Tensor:
    """Dice ``2|P∩T| / (|P| + |T|)`` per class from :func:`dice_counts`; NaN where both are empty."""
    c = torch.as_tensor(counts).double()
    denom = c[1] + c[2]
    return torch.where(denom > 0, 2.0 * c[0] / denom.clamp(min=1.0), torch.full_like(denom, float("nan")))


def dice_per_class(
    pred: Tensor | np.ndarray, target: Tensor | np.ndarray, num_classes: int = NUM_CLASSES
) -> Tensor:
    """Dice of every class over all voxels of ``pred`` and ``target`` (any equal shapes).

    Returns:
        float64 ``[num_classes]``; NaN where the class is absent from both.
    """
    return dice_from_counts(dice_counts(pred, target, num_classes))


def totalseg_weights_root(weights_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding TotalSegmentator's nnU-Net results (``<home>/nnunet/results``).

    ``weights_dir`` is a TotalSegmentator home folder (like ``$TOTALSEG_HOME_DIR``); None follows
    TotalSegmentator itself: ``$TOTALSEG_WEIGHTS_PATH``, else ``$TOTALSEG_HOME_DIR``, else
    ``~/.totalsegmentator``.
    """
    if weights_dir is not None:
        return Path(weights_dir).expanduser() / "nnunet" / "results"
    from totalsegmentator.config import get_weights_dir

    return Path(get_weights_dir())


def required_totalseg_folders(fast: bool = False) -> list[str]:
    """nnU-Net result folders the ``total`` task with ``roi_subset`` loads (TotalSegmentator 2.x):
    the 3 mm model (fast) or the five 1.5 mm part models, plus the 6 mm model used for cropping
    (the same sets ``totalseg_download_weights -t total`` / ``-t total_fast`` fetch)."""
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS

    ids = [297, 298] if fast else [291, 292, 293, 294, 295, 298]
    out = []
    for tid in ids:
        info = TASK_ID_WEIGHTS_CONFIGS[tid]
        rel = info.get("rel_path")
        out.append(str(Path(rel) / info["foldername"]) if rel else info["foldername"])
    return out


def check_totalseg_weights(weights_dir: str | os.PathLike | None = None, fast: bool = False) -> Path:
    """Raise FileNotFoundError naming the folder and the download command when weights are missing."""
    root = totalseg_weights_root(weights_dir)
    missing = [f for f in required_totalseg_folders(fast) if not (root / f).is_dir()]
    if missing:
        hint = "totalseg_download_weights -t total" + ("_fast" if fast else "")
        raise FileNotFoundError(
            f"TotalSegmentator weights not found in {root} (missing: {', '.join(missing)}). This machine may be "
            f"offline, so nothing is downloaded: run `{hint}` on a machine with internet access "
            f"(with TOTALSEG_HOME_DIR set to the folder you want) and copy the folder "
            f"{root.parent.parent} here, then pass weights_dir=<that folder> or set TOTALSEG_HOME_DIR."
        )
    return root


def _total_to_amos_lut() -> np.ndarray:
    """Lookup table: TotalSegmentator ``total`` label id -> AMOS id (0 for everything else)."""
    from totalsegmentator.map_to_binary import class_map

    total = class_map["total"]
    lut = np.zeros(max(total) + 1, dtype=np.int64)
    for tid, name in total.items():
        if name in TOTALSEG_TO_AMOS:
            lut[tid] = TOTALSEG_TO_AMOS[name]
    return lut


def map_totalseg_labels(seg: np.ndarray) -> np.ndarray:
    """TotalSegmentator ``total`` labels -> AMOS ids 0..15 (unmapped structures -> 0)."""
    lut = _total_to_amos_lut()
    seg = np.asarray(seg).astype(np.int64)
    if seg.size and (seg.min() < 0 or seg.max() >= lut.size):
        raise ValueError(
            f"TotalSegmentator labels must lie in 0..{lut.size - 1}, got {seg.min()}..{seg.max()}"
        )
    return lut[seg]


@contextlib.contextmanager
def _env(**values: str | None) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is not None:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_totalsegmentator(
    ct,
    roi_subset: Sequence[str] | None = None,
    fast: bool = False,
    device: str = "cpu",
    weights_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """TotalSegmentator's ``total`` task on a nibabel CT image -> label ids (its own), usage statistics off.

    Args:
        ct: nibabel image in HU.
        roi_subset: Structures to segment (TotalSegmentator names); None: all 117.
        fast: The 3 mm model.
        device: "cpu", "gpu" or "gpu:N".
        weights_dir: TotalSegmentator home folder (None: its own default).
    """
    from totalsegmentator.config import set_config_key, setup_totalseg

    home = None if weights_dir is None else str(weights_dir)
    with _env(TOTALSEG_HOME_DIR=home):
        setup_totalseg()  # creates config.json if needed, then switch usage statistics off
        set_config_key("send_usage_stats", False)
        set_config_key("statistics_disclaimer_shown", True)
        from totalsegmentator.python_api import totalsegmentator

        seg = totalsegmentator(
            ct,
            None,
            ml=True,
            roi_subset=list(roi_subset) if roi_subset else None,
            fast=fast,
            device=device,
            quiet=True,
        )
    return np.asanyarray(seg.dataobj)


class TotalSegmentatorScorer:
    """Organ Dice of synthetic CT volumes by TotalSegmentator (Zhuang et al., Sec. 4).

    Slices of a case are reassembled into a volume in the original geometry
    (:class:`VolumeGeometry`), converted back to HU, segmented with TotalSegmentator's ``total``
    task restricted to the 15 AMOS organs (``roi_subset``), mapped to AMOS ids and compared with
    the ground-truth label volume. Usage statistics are switched off in TotalSegmentator's config.

    Args:
        weights_dir: TotalSegmentator home folder (holding ``nnunet/results``); None follows
            TotalSegmentator (``$TOTALSEG_WEIGHTS_PATH`` / ``$TOTALSEG_HOME_DIR`` / ``~/.totalsegmentator``).
        device: "cpu", "gpu" or "gpu:N" (TotalSegmentator's device strings; "cuda" is read as "gpu").
        fast: TotalSegmentator's 3 mm model.
        segment_fn: Replaces the TotalSegmentator call (``nibabel CT image -> total label ids``, as
            image or array); weights are then not needed. Tests use it.
        label_set: The label set to score in (None: AMOS). TotalSegmentator's structures are
            matched to its classes by name (:meth:`~medsynth.labels.LabelSet.lookup_to`); the ones
            it lacks become background.
    """

    def __init__(
        self,
        weights_dir: str | os.PathLike | None = None,
        device: str = "cpu",
        fast: bool = False,
        segment_fn: Callable[[object], object] | None = None,
        label_set: LabelSet | str | None = None,
    ) -> None:
        if not isinstance(device, str):
            raise ValueError(f"device must be a string such as 'cpu' or 'gpu', got {device!r}")
        self.weights_dir = None if weights_dir is None else Path(weights_dir).expanduser()
        self.device = device.replace("cuda", "gpu")
        self.fast = bool(fast)
        self.segment_fn = segment_fn
        self.label_set = get_label_set("amos" if label_set is None else label_set)
        if self.label_set.name == "amos":
            self.roi_subset = [c.totalseg for c in CLASSES if c.index in ORGAN_IDS]
            self._lut = _total_to_amos_lut()
        else:
            lut = totalseg_label_set().lookup_to(self.label_set)
            lut[lut == self.label_set.body] = 0  # structures the set lacks: not scored
            self._lut = lut
            ts = totalseg_label_set()
            known = {ts.classes[i].name for i in ts.structure_ids}
            names = {
                self.label_set.classes[i].totalseg or self.label_set.classes[i].name
                for i in self.label_set.structure_ids
            }
            self.roi_subset = sorted(names & known)  # TotalSegmentator structures the set has
        if segment_fn is None:
            check_totalseg_weights(self.weights_dir, self.fast)

    def _run_totalsegmentator(self, ct) -> np.ndarray:
        return run_totalsegmentator(ct, self.roi_subset, self.fast, self.device, self.weights_dir)

    def segment(self, ct) -> np.ndarray:
        """CT volume (nibabel image, HU) -> label volume of ``label_set`` (AMOS ids by default)."""
        seg = self.segment_fn(ct) if self.segment_fn is not None else self._run_totalsegmentator(ct)
        seg = np.asanyarray(seg.dataobj) if hasattr(seg, "dataobj") else np.asarray(seg)
        if seg.shape[:3] != tuple(ct.shape[:3]):
            raise ValueError(f"segmentation shape {seg.shape} does not match the CT volume {ct.shape}")
        seg = seg.astype(np.int64)
        if seg.size and (seg.min() < 0 or seg.max() >= self._lut.size):
            raise ValueError(
                f"TotalSegmentator labels must lie in 0..{self._lut.size - 1}, got {seg.min()}..{seg.max()}"
            )
        return self._lut[seg]

    def score_case(
        self,
        slices: Mapping[int, Tensor | np.ndarray] | Sequence[Tensor | np.ndarray] | Tensor,
        geometry: VolumeGeometry,
        label_volume: np.ndarray,
        window: tuple[float, float] = (WINDOW_LEVEL, WINDOW_WIDTH),
    ) -> Tensor:
        """Dice per class ``[17]`` (float64, NaN where absent from both) of one synthetic case.

        Args:
            slices: Synthetic slices in [0, 1] (see :func:`reassemble_volume`).
            geometry: Where the slices go in the original volume.
            label_volume: Ground-truth AMOS labels in the original geometry; ids above 15
                (e.g. the body class) are ignored.
            window: ``(level, width)`` in HU of the slices' [0, 1] scale (the model's ``window``).
        """
        import nibabel as nib

        labels = np.asarray(label_volume).astype(np.int64)
        if labels.shape != tuple(geometry.shape):
            raise ValueError(f"label_volume {labels.shape} does not match the geometry {geometry.shape}")
        hu = window_to_hu(reassemble_volume(slices, geometry, mode="bilinear"), *window)
        ct = nib.Nifti1Image(hu.astype(np.float32), np.asarray(geometry.affine))
        pred = self.segment(ct)
        labels = np.where(labels <= max(ORGAN_IDS), labels, 0)
        return dice_per_class(pred, labels, NUM_CLASSES)
