"""Shared fixtures: tiny configs of every method, trainers, the phantom, and NIfTI volumes/folders.

Test modules import the plain helpers (``from conftest import tiny_trainer, tiny_phantom``);
``TINY`` is the registry tests/test_contract.py runs every synthesis method with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

# Under pytest-xdist (`make test` runs `-n 2`) the machine's threads are shared by the workers:
# each worker, and the processes it starts, get an equal part instead of all of them each.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = max(1, int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    _share = max(1, _share // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_share)
    import torch

    torch.set_num_threads(_share)

# ---- every synthesis method at test size ---------------------------------------------------------
# One entry per concrete SynthesisModule in medsynth.models (tests/test_contract.py fails for a
# method without one): ``kwargs`` for a 32x32 model with widths 8-16, ``options`` for a cheap
# generate() call, and whether generate() draws random numbers (``stochastic``).
_DIFFUSION = {
    "model_channels": 8,
    "channel_mult": (1, 2),
    "num_res_blocks": 1,
    "attention_resolutions": (16,),
}
TINY: dict[str, dict[str, Any]] = {
    "ConditionalDDPM": {"kwargs": _DIFFUSION, "options": {"num_steps": 2}, "stochastic": True},
    "MaskGuidedDDPM": {"kwargs": _DIFFUSION, "options": {"num_steps": 2}, "stochastic": True},
    "EdgeGuidedDDPM": {"kwargs": _DIFFUSION, "options": {"num_steps": 2}, "stochastic": True},
    "SDM": {
        "kwargs": {**_DIFFUSION, "spade_hidden": 8},
        "options": {"num_steps": 2, "guidance_scale": 1.0},
        "stochastic": True,
    },
    "Pix2Pix": {"kwargs": {"model_channels": 8, "disc_channels": 8}, "options": {}, "stochastic": False},
    "SPADE": {
        "kwargs": {"model_channels": 8, "disc_channels": 8, "spade_hidden": 16, "lambda_vgg": 0.0},
        "options": {},
        "stochastic": False,
    },
    "OASIS": {
        "kwargs": {"model_channels": 8, "disc_channels": 8, "spade_hidden": 16, "z_dim": 8},
        "options": {},
        "stochastic": True,
    },
}
TINY_SIZE = 32


def tiny_model(cls: type, **kwargs: Any):
    """``cls`` at test size (``TINY[cls.__name__]["kwargs"]``, overridden by ``kwargs``)."""
    if cls.__name__ not in TINY:
        raise KeyError(
            f"{cls.__name__} has no entry in tests/conftest.py TINY: add tiny kwargs (widths 8-16, 32x32), "
            "generate options and whether it is stochastic, so the contract suite covers it"
        )
    return cls(image_size=TINY_SIZE, **{**TINY[cls.__name__]["kwargs"], **kwargs})


def tiny_trainer(**kwargs: Any):
    """A quiet CPU Trainer: no logger, checkpointing, progress bar or summary (``kwargs`` override)."""
    import lightning as L

    settings = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**settings, **kwargs})


def tiny_phantom(batch_size: int = 2, depth: int = 4, size: int = TINY_SIZE, **kwargs: Any):
    """One phantom case per split, ``depth`` slices of ``size`` x ``size``."""
    from medsynth.data import PhantomDataModule

    settings = dict(num_train_cases=1, num_val_cases=1, num_test_cases=1, seed=0)
    return PhantomDataModule(**{**settings, **kwargs}, depth=depth, image_size=size, batch_size=batch_size)


# Tiny synthetic CT in RAS+ array order: axis 0 toward the patient's right, axis 1 anterior,
# axis 2 superior. Sizes differ per axis so a wrong transpose cannot go unnoticed.
SHAPE = (32, 28, 8)
SPACING = (1.5, 1.6, 5.0)
HU_FAT, HU_LIVER, HU_SPLEEN, HU_TABLE, HU_GAS, HU_AIR = -100.0, 100.0, 120.0, 250.0, -1000.0, -1000.0


def make_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A body ellipse with gas inside, a table below, liver on the right, spleen on the left.

    Returns:
        ``(hu float32 [X, Y, Z], label uint8 [X, Y, Z], affine [4, 4])`` in RAS+.
    """
    x = np.arange(SHAPE[0])[:, None, None]
    y = np.arange(SHAPE[1])[None, :, None]
    z = np.arange(SHAPE[2])[None, None, :]
    body = ((x - 15.5) / 13.0) ** 2 + ((y - 15.0) / 10.0) ** 2 < 1.0
    body = np.broadcast_to(body, SHAPE)
    hu = np.full(SHAPE, HU_AIR, dtype=np.float32)
    hu[body] = HU_FAT
    gas = np.broadcast_to((np.abs(x - 15) <= 1) & (np.abs(y - 18) <= 1), SHAPE)  # bowel gas, inside
    hu[gas] = HU_GAS
    hu[:, 0:5, :] = HU_TABLE  # table: posterior (low y), 5 voxels thick, a 1-voxel gap below the body
    label = np.zeros(SHAPE, dtype=np.uint8)
    liver = body & (x >= 20) & (x <= 24) & (y >= 14) & (y <= 20) & (z >= 4)  # patient right, upper slices
    spleen = body & (x >= 6) & (x <= 9) & (y >= 10) & (y <= 13) & (z >= 5)  # patient left
    bladder = body & (np.abs(x - 15) <= 2) & (y >= 21) & (y <= 23) & (z <= 1)  # anterior, pelvis
    label[liver], label[spleen], label[bladder] = 6, 1, 14
    hu[liver], hu[spleen], hu[bladder] = HU_LIVER, HU_SPLEEN, 10.0
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = [-20.0, -30.0, 100.0]
    return hu, label, affine


def reorient(
    arrays: tuple[np.ndarray, ...], affine: np.ndarray, perm: tuple[int, int, int], flips: tuple[int, ...]
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Store the same anatomy differently: permute the array axes, then flip some of them.

    The affine is updated so that every voxel keeps its world position (an independent,
    closed-form version of what the loader must undo).
    """
    out = tuple(np.transpose(a, perm) for a in arrays)
    aff = affine.copy()
    aff[:, :3] = affine[:, list(perm)]  # new axis i = old axis perm[i]
    for ax in flips:
        n = out[0].shape[ax]
        out = tuple(np.flip(a, ax) for a in out)
        # new index j = n - 1 - old index: world = A_col * (n - 1 - j) + t
        aff[:3, 3] = aff[:3, 3] + aff[:3, ax] * (n - 1)
        aff[:3, ax] = -aff[:3, ax]
    return tuple(np.ascontiguousarray(a) for a in out), aff


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


@pytest.fixture
def volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_volume()


@pytest.fixture
def amos_root(tmp_path: Path) -> Callable[..., Path]:
    """Factory: an AMOS22-layout folder with ``num_train`` + ``num_val`` CT cases and MRI cases.

    ``corrupt`` maps a case number to one of "unreadable", "shape", "label_range", "nan",
    "geometry", "missing".
    """

    def make(
        num_train: int = 2, num_val: int = 2, mri: tuple[int, ...] = (507,), corrupt: dict | None = None
    ) -> Path:
        root = tmp_path / "amos22"
        corrupt = corrupt or {}
        hu0, lab0, aff0 = make_volume()
        meta: dict[str, list] = {"training": [], "validation": []}
        numbers = {"training": list(range(1, num_train + 1)) + list(mri), "validation": []}
        numbers["validation"] = list(range(num_train + 1, num_train + num_val + 1))
        for split, (img_dir, lab_dir) in {
            "training": ("imagesTr", "labelsTr"),
            "validation": ("imagesVa", "labelsVa"),
        }.items():
            for n in numbers[split]:
                name = f"amos_{n:04d}.nii.gz"
                hu, lab, aff = hu0 + n, lab0.copy(), aff0.copy()  # cases differ slightly
                kind = corrupt.get(n)
                if kind == "label_range":
                    lab[0, 0, 0] = 17
                if kind == "nan":
                    hu[3, 3, 3] = np.nan
                img_path = root / img_dir / name
                lab_path = root / lab_dir / name
                save_nifti(img_path, hu.astype(np.float32), aff)
                if kind == "shape":
                    save_nifti(lab_path, lab[:, :, :-1], aff)
                elif kind == "geometry":
                    shifted = aff.copy()
                    shifted[0, 3] += 3.0
                    save_nifti(lab_path, lab, shifted)
                else:
                    save_nifti(lab_path, lab, aff)
                if kind == "unreadable":
                    img_path.write_bytes(b"this is not a NIfTI file")
                if kind == "missing":
                    lab_path.unlink()
                meta[split].append({"image": f"./{img_dir}/{name}", "label": f"./{lab_dir}/{name}"})
        (root / "dataset.json").write_text(json.dumps(meta))
        return root

    return make
