"""The inverse of the slice pipeline: model-size canonical slices -> a volume in the file's geometry.

:mod:`medsynth.data.transforms` reorients a volume to the canonical ``"PLS"`` layout, takes axial
slices, windows and resizes them. Volume synthesis (:mod:`medsynth.synthesis`) and the
TotalSegmentator Dice (:mod:`medsynth.metrics.dice`) need the way back: :class:`VolumeGeometry`
records where the slices of one case sit in its original NIfTI volume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medsynth.data.transforms import CANONICAL_AXCODES, WINDOW_LEVEL, WINDOW_WIDTH

__all__ = ["VolumeGeometry", "window_to_hu", "reassemble_volume", "WINDOW_LEVEL", "WINDOW_WIDTH"]


@dataclass(frozen=True)
class VolumeGeometry:
    """How the slices of one case sit in its original NIfTI volume.

    The slice pipeline (:mod:`medsynth.data.transforms`) reorients a volume to ``axcodes``
    (:data:`~medsynth.data.transforms.CANONICAL_AXCODES`, "PLS"), takes axial slices
    ``canonical[:, :, k]`` (``slice_index = k``), transposes them when ``transpose_slices``
    and resizes them to the model's square size. :meth:`from_canonical_slices` inverts that.

    Attributes:
        shape: Voxel shape of the original volume.
        affine: Original voxel -> world (mm) affine, ``[4, 4]``.
        axcodes: Canonical orientation of the pipeline.
        transpose_slices: Whether slice rows run along the canonical second axis.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray = field(repr=False)
    axcodes: tuple[str, str, str] = tuple(CANONICAL_AXCODES)
    transpose_slices: bool = False

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be three positive ints, got {self.shape!r}")
        if np.asarray(self.affine).shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {np.asarray(self.affine).shape}")

    @classmethod
    def from_nifti(
        cls, img, axcodes: tuple[str, str, str] = tuple(CANONICAL_AXCODES), transpose_slices: bool = False
    ):
        """Geometry of a nibabel image (or a path to one)."""
        import nibabel as nib

        if not hasattr(img, "affine"):
            img = nib.load(str(img))
        return cls(
            tuple(int(s) for s in img.shape[:3]),
            np.asarray(img.affine, np.float64),
            axcodes,
            transpose_slices,
        )

    def _transforms(self) -> tuple[np.ndarray, np.ndarray]:
        import nibabel.orientations as nio

        orig = nio.io_orientation(np.asarray(self.affine))
        canon = nio.axcodes2ornt(self.axcodes)
        return nio.ornt_transform(orig, canon), nio.ornt_transform(canon, orig)

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        fwd, _ = self._transforms()
        out = [0, 0, 0]
        for i, (axis, _flip) in enumerate(fwd):
            out[int(axis)] = self.shape[i]
        return tuple(out)

    @property
    def num_slices(self) -> int:
        return self.canonical_shape[2]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(np.asarray(self.affine)[:3, :3], axis=0))

    def to_canonical(self, volume: np.ndarray) -> np.ndarray:
        """Original voxel array -> canonical orientation."""
        import nibabel.orientations as nio

        return np.ascontiguousarray(nio.apply_orientation(np.asarray(volume), self._transforms()[0]))

    def from_canonical(self, volume: np.ndarray) -> np.ndarray:
        """Canonical voxel array -> original orientation (same shape as the original volume)."""
        import nibabel.orientations as nio

        out = np.ascontiguousarray(nio.apply_orientation(np.asarray(volume), self._transforms()[1]))
        if tuple(out.shape[:3]) != tuple(self.shape):
            raise ValueError(f"canonical volume {volume.shape} does not match the geometry {self.shape}")
        return out

    def from_canonical_slices(self, slices: Tensor | np.ndarray, mode: str = "bilinear") -> np.ndarray:
        """Resized canonical slices ``[Z, H, W]`` (in slice-index order) -> original voxel array.

        Args:
            slices: One slice per canonical axial index, at the model's resolution.
            mode: "bilinear" for intensities, "nearest" for labels.
        """
        s = torch.as_tensor(slices)
        if s.dim() != 3 or s.shape[0] != self.num_slices:
            raise ValueError(
                f"slices must have shape [{self.num_slices}, H, W] (one per axial index), got {tuple(s.shape)}"
            )
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        nx, ny, _ = self.canonical_shape
        size = (ny, nx) if self.transpose_slices else (nx, ny)
        x = s[:, None].double()  # [Z, 1, H, W]
        if mode == "bilinear":
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        else:
            x = F.interpolate(x, size=size, mode="nearest-exact")
        plane = x[:, 0]  # [Z, nx, ny] or [Z, ny, nx]
        if self.transpose_slices:
            plane = plane.transpose(1, 2)
        canonical = plane.permute(1, 2, 0).numpy()  # [nx, ny, Z]
        if mode == "nearest":
            canonical = np.rint(canonical).astype(np.int64)
        return self.from_canonical(canonical)


def window_to_hu(
    x: np.ndarray | Tensor, level: float = WINDOW_LEVEL, width: float = WINDOW_WIDTH
) -> np.ndarray:
    """Windowed [0, 1] intensities -> Hounsfield units (inverse of the level 40 / width 400 window)."""
    return np.asarray(x, np.float64) * width + (level - width / 2)


def reassemble_volume(
    slices: Mapping[int, Tensor | np.ndarray] | Sequence[Tensor | np.ndarray] | Tensor,
    geometry: VolumeGeometry,
    mode: str = "bilinear",
) -> np.ndarray:
    """Stack one case's 2-D slices (``{slice_index: [H, W] or [1, H, W]}`` or a sequence in index
    order) into a volume in the original geometry; every axial index must be present."""
    if isinstance(slices, Mapping):
        missing = sorted(set(range(geometry.num_slices)) - {int(k) for k in slices})
        if missing:
            raise ValueError(f"slices missing for axial indices {missing[:10]} (of {geometry.num_slices})")
        items = [slices[k] for k in sorted(slices, key=int)]
    else:
        items = list(slices)
    stack = torch.stack(
        [torch.as_tensor(s).reshape(torch.as_tensor(s).shape[-2:]) for s in items]
    )  # [Z, H, W]
    return geometry.from_canonical_slices(stack, mode=mode)


# ----------------------------------------------------------------------------- TotalSegmentator
