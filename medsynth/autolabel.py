"""Training pairs from unlabelled CT: TotalSegmentator masks -> an nnU-Net v2 raw dataset.

``medsynth label --input CT_DIR --output DATASET_DIR`` runs TotalSegmentator (Wasserthal et al.,
2023; task ``total``, usage statistics off) on every CT volume of a folder and writes
``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz`` (TotalSegmentator's own ids) and a
``dataset.json`` whose labels are the ``totalseg`` label set, ready for
:class:`medsynth.data.NNUNetDataModule` (``label_set=None`` for all 117 structures, or
``label_set="amos", remap="by_name"`` for AMOS's 15 organs).

Resumable: a case is done when its label file exists; each file is written under a temporary
name and renamed, the label last, so an interrupted run leaves no half-written case, and a rerun
skips the finished cases. ``dataset.json`` is rewritten after every case (by the calling process
alone; with ``workers`` the cases run in worker processes, each writing only its own case's files).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.io import atomic_path, case_name, copy_file, nifti_files, save_nifti, write_json

__all__ = ["label_folder"]


def _label_case(
    path: Path,
    name: str,
    output_dir: Path,
    segment: dict[str, Any],
    segment_fn: Callable[[object], object] | None,
) -> str:
    """Segment one CT volume and write its image and label files (the label last); returns ``name``."""
    import nibabel as nib

    from medsynth.labels import totalseg_label_set
    from medsynth.metrics.dice import run_totalsegmentator

    body = totalseg_label_set().body
    ct = nib.load(str(path))
    if len(ct.shape) == 4:
        ct = nib.Nifti1Image(np.asanyarray(ct.dataobj)[..., 0], ct.affine, ct.header)
    if segment_fn is not None:
        seg = segment_fn(ct)
    else:
        seg = run_totalsegmentator(
            ct, segment["roi_subset"], segment["fast"], segment["device"], segment["weights_dir"]
        )
    seg = np.asanyarray(seg.dataobj) if hasattr(seg, "dataobj") else np.asarray(seg)
    if seg.shape[:3] != tuple(ct.shape[:3]):
        raise ValueError(f"{path}: segmentation shape {seg.shape} does not match the CT {ct.shape}")
    if seg.size and (seg.min() < 0 or seg.max() >= body):
        raise ValueError(f"{path}: segmentation ids {seg.min()}..{seg.max()} outside 0..{body - 1}")
    image_out = output_dir / "imagesTr" / f"{name}_0000.nii.gz"
    if path.name.endswith(".nii.gz"):
        copy_file(path, image_out)
    else:
        with atomic_path(image_out) as tmp:
            nib.save(ct, str(tmp))
    # The label last: the case now counts as done.
    save_nifti(output_dir / "labelsTr" / f"{name}.nii.gz", seg.astype(np.uint8), ct.affine)
    return name


def _labelled(
    todo: Sequence[tuple[Path, str]],
    output_dir: Path,
    segment: dict[str, Any],
    segment_fn: Callable[[object], object] | None,
    workers: int,
) -> Iterator[str]:
    """The case names of ``todo`` as each is done: in order here, as they finish in ``workers`` processes."""
    if workers == 1:
        for path, name in todo:
            yield _label_case(path, name, output_dir, segment, segment_fn)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a fresh interpreter per worker (a forked copy of a process that has run OpenMP or CUDA can hang)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(_label_case, path, name, output_dir, segment, segment_fn) for path, name in todo
        ]
        try:
            for future in as_completed(futures):
                yield future.result()  # a worker's error stops the run; cases already written stay
        finally:
            for future in futures:
                future.cancel()  # those not started yet


def label_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    roi_subset: Sequence[str] | None = None,
    fast: bool = False,
    device: str = "cpu",
    weights_dir: str | Path | None = None,
    segment_fn: Callable[[object], object] | None = None,
    progress: bool = True,
    workers: int = 1,
) -> list[str]:
    """Segment every CT volume of ``input_dir`` and write an nnU-Net raw dataset to ``output_dir``.

    Args:
        input_dir: Folder of CT volumes (``*.nii.gz`` / ``*.nii``; a ``_0000`` suffix is dropped
            from the case name).
        output_dir: The dataset folder (created; finished cases in it are kept and skipped).
        roi_subset: TotalSegmentator structures to segment (None: all).
        fast: TotalSegmentator's 3 mm model.
        device: "cpu", "gpu" or "gpu:N".
        weights_dir: TotalSegmentator home folder (None: its default); missing weights are an
            error naming the folder and the download command, before any work.
        segment_fn: Replaces the TotalSegmentator call (nibabel CT -> label ids); tests use it.
            With ``workers > 1`` it must be picklable (a module-level function).
        progress: Show a progress bar.
        workers: Cases segmented at once, each in its own process (1: in this process). On one
            GPU every worker holds its own TotalSegmentator model.

    Returns:
        The case names segmented in this call (finished ones from earlier runs excluded), in the
        order they finished.

    Raises:
        ValueError / FileNotFoundError: naming the folder, file or structure at fault.
    """
    import nibabel as nib

    from medsynth.callbacks.progress import progress_bar
    from medsynth.labels import totalseg_label_set
    from medsynth.metrics.dice import check_totalseg_weights

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"--workers must be a positive int, got {workers!r}")
    if not input_dir.is_dir():
        raise FileNotFoundError(f"--input {input_dir} is not a folder")
    files = nifti_files(input_dir)
    if not files:
        raise ValueError(f"--input {input_dir}: no .nii or .nii.gz files")
    names = [case_name(p) for p in files]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--input {input_dir}: several files give the case name(s) {dup}")
    ts = totalseg_label_set()
    if roi_subset:
        known = {c.name for c in ts.classes}
        bad = [r for r in roi_subset if r not in known]
        if bad:
            raise ValueError(
                f"--roi {bad} not TotalSegmentator 'total' structures; e.g. liver, spleen, colon"
            )
    if segment_fn is None:
        check_totalseg_weights(weights_dir, fast)
    for path in files:  # headers only: cheap, and a bad file stops us before any segmentation
        try:
            shape = nib.load(str(path)).shape
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{path}: cannot read CT volume ({err})") from err
        if len(shape) != 3 and not (len(shape) == 4 and shape[3] == 1):
            raise ValueError(f"{path}: expected a 3D CT volume, got shape {shape}")
    images, labels = output_dir / "imagesTr", output_dir / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for stale in [*images.glob(".*.partial*"), *labels.glob(".*.partial*")]:
        stale.unlink()  # left by an interrupted run
    meta = {
        "name": output_dir.name,
        "description": "CT labelled by TotalSegmentator (task total) with medsynth label",
        "channel_names": {"0": "CT"},
        "labels": {c.name: c.index for c in ts.classes if c.index != ts.body},
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }
    done = []
    todo = [(p, n) for p, n in zip(files, names) if not (labels / f"{n}.nii.gz").is_file()]
    segment = {"roi_subset": roi_subset, "fast": fast, "device": device, "weights_dir": weights_dir}
    bar = progress_bar(len(todo), "label", unit="case", disable=not progress)
    try:
        for name in _labelled(todo, output_dir, segment, segment_fn, min(workers, max(len(todo), 1))):
            done.append(name)
            meta["numTraining"] = len(list(labels.glob("*.nii.gz")))
            write_json(output_dir / "dataset.json", meta)
            bar.update(1)
    finally:
        bar.close()
    meta["numTraining"] = len(list(labels.glob("*.nii.gz")))
    write_json(output_dir / "dataset.json", meta)
    return done
