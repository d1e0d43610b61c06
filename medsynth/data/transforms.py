"""CT preprocessing shared by AMOS22 and the phantom (Zhuang et al., Sec. 3 "Data").

One path turns a labelled CT volume (HU array, AMOS label array 0..15, voxel-to-RAS affine) into
the slices the models see:

0. values below :data:`AIR_HU` (-1024, the scan circle's padding) are read as air;
1. canonical orientation (MONAI ``Orientation``) to :data:`CANONICAL_AXCODES` = ``"PLS"``, so the
   same anatomy gives the same axial slice whatever orientation the file is stored in;
2. body mask on the HU volume (threshold, 3D largest connected component, holes filled per
   slice): body voxels without an organ label get :data:`medsynth.labels.BODY` (16);
3. CT window (the paper's level 40, width 400; configurable), clipped and scaled to [0, 1]
   (MONAI ``ScaleIntensityRange``);
4. every axial slice resized to ``image_size`` x ``image_size`` (image: bilinear with
   anti-aliasing; mask: nearest).

Display convention of a canonical slice ``[H, W]`` (radiological, as every CT viewer shows it):
row 0 is the patient's anterior side (rows run anterior -> posterior), column 0 is the patient's
right side (columns run right -> left), so ``plt.imshow(slice)`` shows the patient's right on the
image left and the belly at the top. Slice index 0 is the most inferior slice (indices run
inferior -> superior). In nibabel axis codes this volume layout ``[H, W, D]`` is ``"PLS"``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medsynth.labels import BODY, NUM_ORGANS

#: The CT window of every batch (Zhuang et al.): level 40 HU, width 400 HU, i.e. [-160, 240] HU -> [0, 1].
#: The one home of these constants; geometry, the data modules and synthesis use them.
WINDOW_LEVEL = 40.0
WINDOW_WIDTH = 400.0
#: Air in HU; every value below it (the scan circle's -2048 or -3024 padding) is read as air.
AIR_HU = -1024.0

__all__ = [
    "WINDOW_LEVEL",
    "WINDOW_WIDTH",
    "AIR_HU",
    "CANONICAL_AXCODES",
    "PREPROCESS_VERSION",
    "PreprocessConfig",
    "SliceVolume",
    "load_nifti",
    "canonicalize",
    "window",
    "body_mask",
    "add_body_class",
    "resize_slices",
    "preprocess_volume",
    "load_case",
]

#: Array axes of a canonical volume: rows toward posterior, columns toward the patient's left,
#: slices toward superior (radiological display of ``volume[:, :, k]``).
CANONICAL_AXCODES = "PLS"
#: Bump whenever the preprocessing changes its output: part of every slice-cache key.
PREPROCESS_VERSION = 1
_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel / MONAI RAS convention, explicit


@dataclass(frozen=True)
class PreprocessConfig:
    """Every parameter of the slice preprocessing (the slice cache is keyed on all of them).

    Args:
        image_size: Output slice size (square), 256 in the paper.
        window_level: CT window centre in HU (40, paper).
        window_width: CT window width in HU (400, paper).
        body_threshold: HU above which a voxel may belong to the body outline.
        axcodes: Canonical orientation of the volume axes ``[H, W, D]``.
        body_label: Id given to body voxels without a label (the label set's body, 16 for AMOS).
        max_label: Largest id kept from the label files after ``label_lut`` (15 for AMOS: the
            files carry no body class); larger values are clipped (validation rejects them first).
        label_lut: Optional lookup table from the files' ids to the training label set's
            (a remap by name, :meth:`medsynth.labels.LabelSet.lookup_to`).
    """

    image_size: int = 256
    window_level: float = WINDOW_LEVEL
    window_width: float = WINDOW_WIDTH
    body_threshold: float = -500.0
    axcodes: str = CANONICAL_AXCODES
    body_label: int = BODY
    max_label: int = NUM_ORGANS
    label_lut: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {self.image_size!r}")
        if not self.window_width > 0:
            raise ValueError(f"window_width must be > 0, got {self.window_width!r}")
        if len(self.axcodes) != 3:
            raise ValueError(f"axcodes must have 3 letters, got {self.axcodes!r}")
        if not 0 < self.body_label <= 255 or not 0 < self.max_label <= 255:
            raise ValueError(
                f"body_label and max_label must lie in 1..255, got {self.body_label}, {self.max_label}"
            )

    def key(self) -> dict:
        """The parameters plus :data:`PREPROCESS_VERSION`, for cache keys.

        The label-set fields enter only when they differ from AMOS's, so caches built before
        label sets existed stay valid.
        """
        key = {**asdict(self), "version": PREPROCESS_VERSION}
        if (self.body_label, self.max_label, self.label_lut) == (BODY, NUM_ORGANS, None):
            for k in ("body_label", "max_label", "label_lut"):
                key.pop(k)
        return key


@dataclass
class SliceVolume:
    """A preprocessed case, slices first.

    Attributes:
        case_id: Case name.
        image: float32 ``[D, S, S]`` in [0, 1].
        mask: uint8 ``[D, S, S]`` in 0..16.
    """

    case_id: str
    image: np.ndarray
    mask: np.ndarray


def load_nifti(path: str | Path, label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume with nibabel.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        label: Return the stored values (no float conversion) for label maps.

    Returns:
        ``(array [X, Y, Z], affine [4, 4])``; float32 HU for images.
    """
    import nibabel as nib

    img = nib.load(str(path))
    if label:
        data = np.asanyarray(img.dataobj)
    else:
        data = img.get_fdata(dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64)


def canonicalize(
    volume: np.ndarray, affine: np.ndarray, axcodes: str = CANONICAL_AXCODES
) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a volume to ``axcodes`` with MONAI ``Orientation`` (axis flips/permutations only).

    Args:
        volume: ``[X, Y, Z]`` array.
        affine: ``[4, 4]`` voxel -> RAS mm.
        axcodes: Target axis codes, default ``"PLS"`` (radiological display, see module doc).

    Returns:
        ``(volume, affine)`` reoriented; no interpolation, values are untouched.
    """
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    t = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume))[None], affine=torch.as_tensor(affine))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = Orientation(axcodes=axcodes, labels=_LABELS)(t)
    return np.ascontiguousarray(out.as_tensor()[0].numpy()), out.affine.numpy().astype(np.float64)


def window(hu: np.ndarray, level: float = WINDOW_LEVEL, width: float = WINDOW_WIDTH) -> np.ndarray:
    """CT windowing: ``clip((hu - (level - width / 2)) / width, 0, 1)`` (MONAI ``ScaleIntensityRange``).

    Args:
        hu: Intensities in HU, any shape.
        level: Window centre (40 in the paper).
        width: Window width (400 in the paper).

    Returns:
        float32 array of the same shape in [0, 1].
    """
    from monai.transforms import ScaleIntensityRange

    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    lo = level - width / 2.0
    scale = ScaleIntensityRange(a_min=lo, a_max=lo + width, b_min=0.0, b_max=1.0, clip=True, dtype=np.float32)
    return np.asarray(scale(np.asarray(hu, dtype=np.float32)), dtype=np.float32)


def body_mask(hu: np.ndarray, threshold: float = -500.0) -> np.ndarray:
    """The inside of the patient outline (Zhuang et al.: "thresholding and morphological operations").

    ``hu > threshold``; a small in-plane opening cuts thin bridges (a cushion touching the
    back); the largest 3D connected component is kept (table, clothing and lines outside the
    body are dropped, both legs stay since they join in the pelvis); the opening is undone
    inside that component; holes are filled slice by slice, so bowel gas and lung inside the
    outline are body.

    Args:
        hu: ``[H, W, D]`` volume in HU, axial slices on the last axis.
        threshold: HU threshold of the outline.

    Returns:
        bool ``[H, W, D]``.
    """
    if hu.ndim != 3:
        raise ValueError(f"hu must be a 3D volume [H, W, D], got shape {hu.shape}")
    fg = hu > threshold
    if not fg.any():
        return fg
    plane = np.zeros((3, 3, 3), dtype=bool)
    plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)  # in-plane 4-neighbourhood
    opened = ndimage.binary_opening(fg, structure=plane, iterations=2)
    if not opened.any():
        opened = fg
    labels, n = ndimage.label(opened)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = labels == int(np.argmax(sizes))
    others = (labels > 0) & ~largest
    # Undo the opening's erosion of the outline, within the thresholded voxels and away from
    # the other components (a table close to the back must not be re-attached).
    keep = ndimage.binary_dilation(largest, structure=plane, iterations=2) & fg
    if others.any():
        keep &= ~ndimage.binary_dilation(others, structure=plane, iterations=2)
    keep |= largest
    out = np.empty_like(keep)
    for k in range(keep.shape[2]):
        out[:, :, k] = ndimage.binary_fill_holes(keep[:, :, k])
    return out


def add_body_class(label: np.ndarray, body: np.ndarray, body_label: int = BODY) -> np.ndarray:
    """Labels stay; body voxels without a label get ``body_label`` (:data:`BODY`, 16, for AMOS); the rest 0."""
    label = np.asarray(label)
    out = label.astype(np.uint8, copy=True)
    out[(label == 0) & body] = body_label
    return out


def resize_slices(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize every axial slice to ``size`` x ``size``; slices first on output.

    The image uses bilinear interpolation with anti-aliasing (torch's separable antialiased
    filter: MONAI's Gaussian ``anti_aliasing`` costs ~100x more on 512^2 slices for the same
    purpose); the mask uses nearest ("nearest-exact", pixel centres aligned).

    Args:
        image: float ``[H, W, D]``.
        mask: integer ``[H, W, D]``.
        size: Output side length.

    Returns:
        ``(image float32 [D, size, size], mask uint8 [D, size, size])``.
    """
    if image.shape != mask.shape:
        raise ValueError(f"image and mask shapes differ: {image.shape} vs {mask.shape}")
    img = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, 2, 0), dtype=np.float32))[:, None]
    msk = torch.from_numpy(np.ascontiguousarray(np.moveaxis(mask, 2, 0), dtype=np.uint8))[:, None]
    # img, msk: [D, 1, H, W]
    if img.shape[-2:] != (size, size):
        img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        msk = F.interpolate(msk.float(), size=(size, size), mode="nearest-exact").to(torch.uint8)
    return img[:, 0].clamp_(0.0, 1.0).numpy(), msk[:, 0].numpy()


def preprocess_volume(
    hu: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    config: PreprocessConfig | None = None,
    case_id: str = "",
) -> SliceVolume:
    """The whole preprocessing of one labelled CT volume (see module doc).

    Args:
        hu: ``[X, Y, Z]`` intensities in HU, stored in any orientation.
        label: ``[X, Y, Z]`` AMOS labels 0..15 on the same grid.
        affine: ``[4, 4]`` voxel -> RAS mm of both.
        config: Preprocessing parameters; defaults to the paper's.
        case_id: Name carried along.

    Returns:
        :class:`SliceVolume` with ``[D, S, S]`` slices in canonical orientation.
    """
    config = config or PreprocessConfig()
    if hu.shape != label.shape:
        raise ValueError(f"image and label shapes differ: {hu.shape} vs {label.shape}")
    # Below -1024 HU is no tissue: scanners fill the outside of the reconstruction circle with
    # -2048 or -3024. Read it as air, so that no window or statistic sees it as a value of its own.
    hu = np.maximum(np.asarray(hu, dtype=np.float32), AIR_HU)
    hu_c, _ = canonicalize(hu, affine, config.axcodes)  # [H, W, D]
    lab = np.rint(np.asarray(label, dtype=np.float32))
    if config.label_lut is not None:
        lut = np.asarray(config.label_lut, dtype=np.int64)
        lab = lut[lab.clip(0, len(lut) - 1).astype(np.int64)]
    lab = lab.clip(0, config.max_label).astype(np.uint8)
    lab_c, _ = canonicalize(lab, affine, config.axcodes)
    mask = add_body_class(lab_c, body_mask(hu_c, config.body_threshold), config.body_label)
    image = window(hu_c, config.window_level, config.window_width)
    image, mask = resize_slices(image, mask, config.image_size)
    return SliceVolume(case_id, image, mask)


def load_case(
    image_path: str | Path, label_path: str | Path, config: PreprocessConfig | None = None, case_id: str = ""
) -> SliceVolume:
    """Read an image/label NIfTI pair and preprocess it (the image's affine is used for both)."""
    hu, affine = load_nifti(image_path)
    label, _ = load_nifti(label_path, label=True)
    return preprocess_volume(hu, label, affine, config, case_id or Path(image_path).name.split(".")[0])
