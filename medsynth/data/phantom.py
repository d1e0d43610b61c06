"""A procedural abdominal CT phantom: labelled volumes that look like portal-venous CT.

Demos, tests and quick experiments need data without the AMOS22 download. Each case is a
volume in HU with the 15 AMOS organ labels (no body class: the data pipeline adds it exactly as
for AMOS, Zhuang et al., Sec. 3), covering the abdomen from the pelvic floor to the lung bases.

Geometry is defined in millimetres in a patient frame (x to the patient's left, y anterior,
z superior), so a case looks the same at any resolution; the returned arrays are RAS+ (axis 0
toward the patient's right, as NIfTI's x, so the liver sits at high axis-0 indices). Organs sit
where they belong and span their usual craniocaudal extent, so slices at different levels show different
organ sets (liver and bladder never share a slice; the esophagus only near the top; adrenals
above the kidneys; bladder and prostate/uterus in the pelvis). The seed varies size, position,
rotation, organ shapes and contrast timing.
"""

from __future__ import annotations

import functools
import json
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsynth.labels import CLASSES

__all__ = [
    "PhantomCase",
    "make_phantom_case",
    "write_phantom_dataset",
    "FOV_MM",
    "EXTENT_MM",
    "check_irregularity",
]

FOV_MM = 400.0  # in-plane field of view
EXTENT_MM = 380.0  # craniocaudal coverage: pelvic floor (u = 0) to lung bases (u = 1)
MAX_IRREGULARITY = 0.5  # the strongest lobulation measured (docs/data.md: ellipse IoU ~0.8)


def check_irregularity(value: object, name: str = "irregularity") -> float:
    """``value`` as a float in [0, MAX_IRREGULARITY]; a ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= MAX_IRREGULARITY:
        raise ValueError(f"{name} must be a number in [0, {MAX_IRREGULARITY}], got {value!r}")
    return float(value)


# Tissue intensities in HU, portal-venous phase; enhancing organs are scaled per case.
HU = {
    "air": -1000.0,
    "lung": -860.0,
    "fat": -100.0,
    "skin": 30.0,
    "muscle": 50.0,
    "bone": 650.0,
    "marrow": 230.0,
    "canal": 20.0,
    "table": 250.0,
    "bowel": 35.0,
    "gas": -1000.0,
    1: 115.0,  # spleen
    2: 160.0,  # right kidney
    3: 160.0,  # left kidney
    4: 8.0,  # gallbladder (bile)
    5: 45.0,  # esophagus
    6: 105.0,  # liver
    7: 40.0,  # stomach wall and contents
    8: 175.0,  # aorta, contrast-filled: brighter than liver
    9: 125.0,  # inferior vena cava
    10: 90.0,  # pancreas
    11: 40.0,  # right adrenal
    12: 40.0,  # left adrenal
    13: 45.0,  # duodenum
    14: 8.0,  # bladder (urine)
    15: 45.0,  # prostate / uterus
}
# Texture amplitude (HU) of the smooth parenchymal variation per organ.
TEXTURE = {1: 8.0, 2: 12.0, 3: 12.0, 6: 8.0, 7: 10.0, 10: 12.0, 13: 10.0, 15: 8.0}

# Vertebral levels by height u (0 = pelvic floor, 1 = lung bases), for the "totalseg" labels.
_VERTEBRA_LEVELS = (
    (-1.0, 0.2, "sacrum"),
    (0.2, 0.3, "vertebrae_L5"),
    (0.3, 0.4, "vertebrae_L4"),
    (0.4, 0.5, "vertebrae_L3"),
    (0.5, 0.6, "vertebrae_L2"),
    (0.6, 0.7, "vertebrae_L1"),
    (0.7, 0.8, "vertebrae_T12"),
    (0.8, 0.9, "vertebrae_T11"),
    (0.9, 2.0, "vertebrae_T10"),
)


@functools.lru_cache(maxsize=1)
def _totalseg_ids() -> dict[str, int]:
    """TotalSegmentator ``total`` name -> id, from the installed package's table."""
    from totalsegmentator.map_to_binary import class_map

    return {name: int(i) for i, name in class_map["total"].items()}


@dataclass
class PhantomCase:
    """One phantom volume.

    Attributes:
        case_id: Identifier, e.g. ``"phantom_0003"``.
        image: float32 ``[X, Y, Z]`` in HU.
        label: uint8 ``[X, Y, Z]`` with AMOS ids 0..15 (no body class).
        affine: float64 ``[4, 4]`` voxel -> RAS millimetres.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


class _Frame:
    """Voxel grid in patient millimetres, rotated and shifted per case."""

    def __init__(self, size: int, depth: int, spacing: tuple[float, float, float], angle: float, shift):
        self.shape = (size, size, depth)
        sx, sy, sz = spacing
        x = (np.arange(size) - (size - 1) / 2) * sx
        y = (np.arange(size) - (size - 1) / 2) * sy
        self.gx = x[:, None, None].astype(np.float32)  # [X, 1, 1] scanner frame
        self.gy = y[None, :, None].astype(np.float32)  # [1, Y, 1]
        self.z = (np.arange(depth) * sz).astype(np.float32)[None, None, :]  # [1, 1, Z]
        self.u = self.z / max(EXTENT_MM, 1e-6)  # craniocaudal level, 0 pelvis .. 1 lung bases
        c, s = np.cos(angle), np.sin(angle)
        # Patient frame = scanner frame rotated about z and shifted: [X, Y, 1] each.
        self.px = (c * (self.gx - shift[0]) + s * (self.gy - shift[1])).astype(np.float32)
        self.py = (-s * (self.gx - shift[0]) + c * (self.gy - shift[1])).astype(np.float32)
        self.spacing = spacing

    def view(self, sl: tuple[slice, slice, slice] | None = None) -> _View:
        """The frame restricted to a box of voxels (the whole volume when ``sl`` is None)."""
        sl = sl or (slice(None), slice(None), slice(None))
        return _View(self.px[sl[0], sl[1]], self.py[sl[0], sl[1]], self.z[..., sl[2]], sl)

    def box(self, cx: float, cy: float, r: float, z0: float, z1: float) -> tuple[slice, slice, slice] | None:
        """Voxel box holding the patient-frame square ``|x-cx|, |y-cy| <= r`` over ``z0 <= z <= z1``."""
        inside = (np.abs(self.px[..., 0] - cx) <= r) & (np.abs(self.py[..., 0] - cy) <= r)  # [X, Y]
        zi = np.nonzero((self.z[0, 0] >= z0) & (self.z[0, 0] <= z1))[0]
        if not inside.any() or zi.size == 0:
            return None
        xi, yi = np.nonzero(inside.any(1))[0], np.nonzero(inside.any(0))[0]
        return slice(xi[0], xi[-1] + 1), slice(yi[0], yi[-1] + 1), slice(zi[0], zi[-1] + 1)


@dataclass
class _View:
    """Patient coordinates of a box of voxels: px, py ``[x, y, 1]``, z ``[1, 1, z]``."""

    px: np.ndarray
    py: np.ndarray
    z: np.ndarray
    sl: tuple[slice, slice, slice]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.px.shape[0], self.px.shape[1], self.z.shape[2])


def _waves(
    rng: np.random.Generator, n: int = 5, wavelengths: tuple[float, float] = (50.0, 160.0)
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """A smooth random field (sum of plane waves, ``wavelengths`` mm), values roughly in [-1, 1]."""
    k = rng.normal(size=(n, 3))
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    k *= (2 * np.pi / rng.uniform(*wavelengths, size=n))[:, None]
    phase = rng.uniform(0, 2 * np.pi, size=n)
    amp = rng.uniform(0.5, 1.0, size=n)
    amp /= amp.sum()

    def field(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = 0.0
        for i in range(n):
            out = out + amp[i] * np.sin(k[i, 0] * x + k[i, 1] * y + k[i, 2] * z + phase[i])
        return out

    return field


def _lobulated(coarse, fine, weight: float) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """``coarse + weight * fine``: a wobble field with short-wavelength lobules on top."""

    def field(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return coarse(x, y, z) + weight * fine(x, y, z)

    field.reach = 1.0 + weight  # |field| <= 1 + weight: how far the drawing boxes must reach
    return field


def _in_box(f: _Frame, box, fn) -> np.ndarray:
    """Full-volume boolean mask, ``fn(view)`` evaluated only inside ``box`` (False elsewhere)."""
    out = np.zeros(f.shape, dtype=bool)
    if box is not None:
        out[box] = fn(f.view(box))
    return out


def _ellipsoid(f: _Frame, center, radii, wobble, amount: float = 0.15) -> np.ndarray:
    """Boolean mask of a wobbly ellipsoid (mm), evaluated in the patient frame."""
    cx, cy, cz = center
    rx, ry, rz = radii
    grow = 1.0 + amount * getattr(wobble, "reach", 1.0)
    box = f.box(cx, cy, max(rx, ry) * grow, cz - rz * grow, cz + rz * grow)

    def fn(v: _View) -> np.ndarray:
        d = ((v.px - cx) / rx) ** 2 + ((v.py - cy) / ry) ** 2 + ((v.z - cz) / rz) ** 2
        return d < (1.0 + amount * wobble(v.px, v.py, v.z)) ** 2

    return _in_box(f, box, fn)


def _capsule(f: _Frame, a, b, radius: float, wobble=None, amount: float = 0.15) -> np.ndarray:
    """Boolean mask of a tube of ``radius`` mm around the segment a-b (mm, patient frame)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    ab = b - a
    denom = float(ab @ ab) or 1.0
    reach = radius * (1.0 + amount * getattr(wobble, "reach", 1.0))
    lo, hi = np.minimum(a, b) - reach, np.maximum(a, b) + reach
    center = (lo + hi) / 2
    box = f.box(center[0], center[1], float(max(hi[0] - lo[0], hi[1] - lo[1]) / 2), lo[2], hi[2])

    def fn(v: _View) -> np.ndarray:
        t = ((v.px - a[0]) * ab[0] + (v.py - a[1]) * ab[1] + (v.z - a[2]) * ab[2]) / denom
        t = np.clip(t, 0.0, 1.0)
        d2 = (v.px - a[0] - t * ab[0]) ** 2 + (v.py - a[1] - t * ab[1]) ** 2 + (v.z - a[2] - t * ab[2]) ** 2
        r = radius if wobble is None else radius * (1.0 + amount * wobble(v.px, v.py, v.z))
        return d2 < r**2

    return _in_box(f, box, fn)


def _polyline(
    f: _Frame, points: Sequence[Sequence[float]], radii: Sequence[float], wobble=None
) -> np.ndarray:
    out = np.zeros(f.shape, dtype=bool)
    for i in range(len(points) - 1):
        r = 0.5 * (radii[i] + radii[i + 1])
        out |= _capsule(f, points[i], points[i + 1], r, wobble)
    return out


def make_phantom_case(
    seed: int,
    depth: int = 64,
    size: int = 256,
    spacing: tuple[float, float, float] | None = None,
    case_id: str | None = None,
    label_set: str = "amos",
    irregularity: float = 0.0,
) -> PhantomCase:
    """Build one procedural abdominal CT case.

    Args:
        seed: Seeds every per-case variation; the same seed gives the same case.
        depth: Number of axial slices (spread over the 380 mm from pelvis to lung bases).
        size: In-plane matrix size (the 400 mm field of view is sampled at ``size`` pixels).
        spacing: Voxel size in mm; default ``(400/size, 400/size, 380/depth)``.
        case_id: Name of the case; default ``phantom_<seed>``.
        label_set: ``"amos"`` (the 15 organs; the default, unchanged) or ``"totalseg"``: the same
            image, labelled with TotalSegmentator ``total`` ids for everything drawn (the 15
            organs, vertebrae by level, sacrum, spinal cord, ribs, hips, autochthon and iliopsoas
            muscles, lung lower lobes, small bowel, iliac arteries). The random draws are the
            same for both, so the image does not depend on the label set.
        irregularity: Relative amplitude of a second, short-wavelength (15-45 mm) boundary wobble
            of the 15 organs: lobulated outlines instead of near-ellipses (0.5: the stomach's,
            bladder's and spleen's ellipse IoU fall from 0.94-0.98 to 0.79-0.82, docs/data.md);
            islands are dropped (each organ keeps its largest 3D component). Drawn from its own
            random stream, so 0 (the default) gives the same case, byte for byte, as before.

    Returns:
        A :class:`PhantomCase` in RAS orientation.
    """
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    if spacing is None:
        spacing = (FOV_MM / size, FOV_MM / size, EXTENT_MM / depth)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers, got {spacing!r}")
    if label_set not in ("amos", "totalseg"):
        raise ValueError(f"label_set must be 'amos' or 'totalseg' for the phantom, got {label_set!r}")
    irregularity = check_irregularity(irregularity)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    scale = rng.uniform(0.85, 1.12)  # patient size
    angle = np.deg2rad(rng.uniform(-7.0, 7.0))
    shift = rng.uniform(-12.0, 12.0, size=2)
    f = _Frame(size, depth, tuple(float(s) for s in spacing), angle, shift)
    u = f.u
    dz = rng.uniform(-10.0, 10.0)  # craniocaudal shift of the organ block (mm)

    def Z(level: float) -> float:  # noqa: N802 - level (0..1) -> mm
        return level * EXTENT_MM + dz

    # ---- body outline, subcutaneous fat, muscle wall ---------------------------------------
    a = scale * (150.0 + 20.0 * np.exp(-(((u - 0.15) / 0.15) ** 2)) + 8.0 * u)  # [1,1,Z] half width
    b = scale * (100.0 + 8.0 * u)  # half depth
    a, b = a * (1.0 + 0.03 * _waves(rng)(f.px, f.py, f.z)), b
    rho = np.sqrt((f.px / a) ** 2 + (f.py / b) ** 2)  # [X,Y,Z], 1 at the skin
    fat_mm = scale * rng.uniform(12.0, 30.0)
    body = rho < 1.0
    skin = body & (rho > 1.0 - 2.0 / b)
    inner_wall = rho < 1.0 - fat_mm / b  # inside the subcutaneous fat
    cavity = rho < 1.0 - (fat_mm + 10.0 * scale) / b  # inside the muscle wall

    img = np.full(f.shape, HU["air"], dtype=np.float32)
    img[body] = HU["fat"]
    img[skin] = HU["skin"]
    img[inner_wall & ~cavity] = HU["muscle"]
    img[cavity] = HU["fat"] + 10.0  # visceral fat
    rich = np.zeros(f.shape, dtype=np.uint8) if label_set == "totalseg" else None

    def mark(name: str, region: np.ndarray) -> None:
        """Record a drawn structure in the TotalSegmentator label map (no random draws)."""
        if rich is not None:
            rich[np.broadcast_to(region, f.shape)] = _totalseg_ids()[name]

    # ---- lungs at the top, posterior --------------------------------------------------------
    for side in (-1.0, 1.0):
        lung = _ellipsoid(
            f, (side * 75 * scale, -25 * scale, Z(1.12)), (60 * scale, 65 * scale, 110.0), _waves(rng)
        )
        img[lung & cavity] = HU["lung"]
        mark("lung_lower_lobe_left" if side > 0 else "lung_lower_lobe_right", lung & cavity)

    # ---- spine, paraspinal muscles, ribs, pelvis (bone is unlabelled: body class) ---------
    vy = -b * 0.52  # vertebral body centre (y), [1,1,Z]
    vert = (f.px**2 + (f.py - vy) ** 2) < (17.0 * scale) ** 2
    canal = (f.px**2 + (f.py - (vy - 26.0 * scale)) ** 2) < (8.0 * scale) ** 2
    post = (np.abs(f.px) < 6.0 * scale) & (f.py < vy - 30.0 * scale) & (f.py > vy - 50.0 * scale)
    for side in (-1.0, 1.0):
        para = ((f.px - side * 30 * scale) / (20 * scale)) ** 2 + (
            (f.py - (vy - 30 * scale)) / (22 * scale)
        ) ** 2
        img[(para < 1.0) & body] = HU["muscle"]
        lr = "left" if side > 0 else "right"  # the patient frame's x runs to the patient's left
        mark(f"autochthon_{lr}", (para < 1.0) & body)
        psoas_r = 6.0 + 14.0 * np.clip((0.75 - u) / 0.4, 0.0, 1.0)
        psoas = ((f.px - side * 40 * scale) ** 2 + (f.py - vy) ** 2) < (psoas_r * scale) ** 2
        img[psoas & (u > 0.25) & (u < 0.72)] = HU["muscle"]
        mark(f"iliopsoas_{lr}", psoas & (u > 0.25) & (u < 0.72))
    img[vert] = HU["marrow"]
    ring = vert & ((f.px**2 + (f.py - vy) ** 2) > (14.0 * scale) ** 2)
    img[ring | post] = HU["bone"]
    img[canal] = HU["canal"]
    if rich is not None:
        for lo, hi, name in _VERTEBRA_LEVELS:
            mark(name, (vert | post) & (u >= lo) & (u < hi))
        mark("spinal_cord", canal)
    # Ribs: small bony cross-sections inside the wall above the iliac crests.
    rib_angles = np.deg2rad(
        np.array([-160, -135, -110, -70, -45, -20, 20, 45, 70, 110, 135, 160]) + rng.normal(0, 4, 12)
    )
    for k, th in enumerate(rib_angles):
        th_z = th + 0.15 * np.sin(f.z / 40.0)
        rx = np.cos(th_z) * (a - (fat_mm + 5.0 * scale))
        ry = np.sin(th_z) * (b - (fat_mm + 5.0 * scale))
        rib = ((f.px - rx) ** 2 + (f.py - ry) ** 2) < (5.0 * scale) ** 2
        img[rib & (u > 0.55) & body] = HU["bone"]
        # Angles run from the patient's right (-160 deg) to the left: ribs 7..12 on each side.
        mark(f"rib_{'left' if k >= 6 else 'right'}_{7 + (k if k < 6 else 11 - k)}", rib & (u > 0.55) & body)
    # Iliac wings and sacrum in the pelvis.
    for side in (-1.0, 1.0):
        wing = _ellipsoid(
            f, (side * 95 * scale, -45 * scale, Z(0.2)), (45 * scale, 20 * scale, 70.0), _waves(rng)
        )
        img[wing & body] = HU["bone"]
        mark("hip_left" if side > 0 else "hip_right", wing & body)
        img[
            wing
            & body
            & _ellipsoid(
                f, (side * 95 * scale, -45 * scale, Z(0.2)), (38 * scale, 13 * scale, 62.0), _waves(rng), 0.0
            )
        ] = HU["marrow"]

    # ---- bowel loops with gas (unlabelled) in the mid and lower abdomen --------------------
    wob = _waves(rng)
    for _ in range(9):
        cx, cy = rng.uniform(-70, 70) * scale, rng.uniform(-10, 55) * scale
        lv = rng.uniform(0.2, 0.58)
        p0 = (cx, cy, Z(lv))
        p1 = (
            cx + rng.uniform(-40, 40) * scale,
            cy + rng.uniform(-15, 15) * scale,
            Z(lv + rng.uniform(-0.05, 0.05)),
        )
        loop = _capsule(f, p0, p1, rng.uniform(9, 14) * scale, wob) & cavity
        img[loop] = HU["bowel"]
        mark("small_bowel", loop)
        gas = _capsule(f, p0, p1, rng.uniform(3, 7) * scale) & loop & (f.py > cy)
        img[gas] = HU["gas"]

    # ---- the 15 AMOS organs, big ones first so small ones and vessels stay visible ---------
    lab = np.zeros(f.shape, dtype=np.uint8)
    s = scale

    def put(organ: int, region: np.ndarray) -> None:
        region = region & cavity
        if irregularity > 0 and region.any():  # lobules, not islands: keep the largest 3D component
            comp, n = ndimage.label(region)
            if n > 1:
                region = comp == 1 + int(np.argmax(np.bincount(comp.ravel())[1:]))
        lab[region] = organ
        img[region] = HU[organ]
        mark(CLASSES[organ].totalseg, region)

    w = {k: _waves(rng) for k in range(1, 16)}
    if irregularity > 0:  # own stream: the draws above and below stay those of the regular phantom
        rng_shape = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED, 1]))
        for k in w:
            w[k] = _lobulated(w[k], _waves(rng_shape, 8, (15.0, 45.0)), irregularity / 0.15)
    put(
        6,
        _ellipsoid(f, (-50 * s, 5 * s, Z(0.83)), (95 * s, 80 * s, 70.0), w[6], 0.12)
        & ~_ellipsoid(f, (40 * s, 40 * s, Z(0.72)), (60 * s, 50 * s, 60.0), w[7], 0.0),
    )  # liver
    put(7, _ellipsoid(f, (50 * s, 25 * s, Z(0.8)), (42 * s, 35 * s, 55.0), w[7]))  # stomach
    put(1, _ellipsoid(f, (92 * s, -40 * s, Z(0.74)), (28 * s, 40 * s, 45.0), w[1]))  # spleen
    put(2, _ellipsoid(f, (-68 * s, -50 * s, Z(0.55)), (24 * s, 22 * s, 48.0), w[2]))  # right kidney
    put(3, _ellipsoid(f, (68 * s, -48 * s, Z(0.58)), (24 * s, 22 * s, 48.0), w[3]))  # left kidney
    put(4, _ellipsoid(f, (-55 * s, 35 * s, Z(0.66)), (17 * s, 15 * s, 24.0), w[4]))  # gallbladder
    put(
        10,
        _polyline(
            f,
            [(-30 * s, -2 * s, Z(0.6)), (10 * s, -8 * s, Z(0.63)), (65 * s, -25 * s, Z(0.66))],
            [15 * s, 11 * s, 9 * s],
            w[10],
        ),
    )  # pancreas: head -> body -> tail
    put(
        13,
        _polyline(
            f,
            [
                (-30 * s, 25 * s, Z(0.67)),
                (-52 * s, 8 * s, Z(0.62)),
                (-48 * s, 2 * s, Z(0.55)),
                (-15 * s, -5 * s, Z(0.52)),
                (15 * s, -5 * s, Z(0.53)),
            ],
            [10 * s, 11 * s, 11 * s, 10 * s, 9 * s],
            w[13],
        ),
    )  # duodenum, C-loop
    put(11, _ellipsoid(f, (-38 * s, -35 * s, Z(0.7)), (6 * s, 12 * s, 16.0), w[11]))  # right adrenal
    put(12, _ellipsoid(f, (38 * s, -32 * s, Z(0.68)), (6 * s, 12 * s, 16.0), w[12]))  # left adrenal
    put(
        9,
        _polyline(
            f,
            [(-22 * s, -30 * s, Z(0.36)), (-25 * s, -28 * s, Z(0.7)), (-22 * s, -15 * s, Z(0.93))],
            [10 * s, 12 * s, 13 * s],
        ),
    )  # inferior vena cava
    aorta_x = 14 * s + 3.0 * np.sin(f.z / 60.0)
    aorta = (((f.px - aorta_x) ** 2 + (f.py - (vy + 28 * s)) ** 2) < (11 * s) ** 2) & (f.z > Z(0.34))
    put(8, aorta & (f.z < Z(1.05)))  # aorta, down to the bifurcation
    for side in (-1.0, 1.0):  # common iliac arteries (body class, but bright)
        iliac = _capsule(f, (14 * s, -20 * s, Z(0.34)), (side * 55 * s, -25 * s, Z(0.12)), 6 * s) & cavity
        img[iliac & (lab == 0)] = HU[8]
        mark("iliac_artery_left" if side > 0 else "iliac_artery_right", iliac & (lab == 0))
    put(5, _capsule(f, (8 * s, -28 * s, Z(0.86)), (18 * s, -22 * s, Z(1.1)), 8 * s, w[5]))  # esophagus
    put(14, _ellipsoid(f, (0.0, 35 * s, Z(0.1)), (38 * s, 30 * s, 34.0), w[14]))  # bladder
    put(15, _ellipsoid(f, (0.0, 2 * s, Z(0.05)), (18 * s, 15 * s, 20.0), w[15]))  # prostate / uterus

    # Gas in the stomach fundus and duodenal bulb: still labelled as the organ.
    img[(lab == 7) & (f.py > 25 * s + 18 * s)] = HU["gas"]
    img[(lab == 13) & _ellipsoid(f, (-32 * s, 28 * s, Z(0.67)), (5 * s, 5 * s, 8.0), w[13], 0.0)] = HU["gas"]
    # Renal sinus (hypodense) and enhancing cortex.
    for organ, cx in ((2, -68 * s), (3, 68 * s)):
        sinus = _ellipsoid(f, (cx * 0.8, -45 * s, Z(0.56)), (9 * s, 8 * s, 20.0), w[organ], 0.0) & (
            lab == organ
        )
        img[sinus] = 20.0

    # ---- patient table below the body (not body: the body mask must exclude it) ----------
    table_y = -b.max() - 25.0 - shift[1] * 0.0
    table = (np.abs(f.gx) < 180.0) & (f.gy < table_y) & (f.gy > table_y - 8.0)
    img[np.broadcast_to(table, f.shape) & ~body] = HU["table"]

    # ---- contrast timing, texture, partial volume, CT noise ----------------------------------
    contrast = rng.uniform(0.85, 1.15)
    enhancing = np.isin(lab, [1, 2, 3, 6, 8, 9, 10])
    img[enhancing] = 40.0 + (img[enhancing] - 40.0) * contrast
    texture = ndimage.gaussian_filter(rng.standard_normal(f.shape).astype(np.float32), (2.0, 2.0, 0.7))
    texture /= texture.std() + 1e-6
    for organ, amp in TEXTURE.items():
        sel = lab == organ
        img[sel] += amp * texture[sel]
    img = ndimage.gaussian_filter(img, (0.6, 0.6, 0.0))
    noise = ndimage.gaussian_filter(rng.standard_normal(f.shape).astype(np.float32), (0.6, 0.6, 0.0))
    noise *= 12.0 / (noise.std() + 1e-6)
    img = np.clip(img + noise, -1024.0, 3071.0).astype(np.float32)

    # The patient frame's x runs to the patient's LEFT; NIfTI RAS+ x runs to the RIGHT: flip axis 0
    # so the arrays really are RAS (axis 0 toward the right, e.g. the liver at high indices).
    if rich is not None:
        lab = rich
    img, lab = np.ascontiguousarray(img[::-1]), np.ascontiguousarray(lab[::-1])
    sx, sy, sz = f.spacing
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [-(size - 1) / 2 * sx, -(size - 1) / 2 * sy, 0.0]
    return PhantomCase(case_id or f"phantom_{int(seed):04d}", img, lab, affine)


def write_phantom_dataset(
    root: str | Path,
    num_train: int,
    num_val: int,
    depth: int = 64,
    size: int = 256,
    seed: int = 0,
    progress: bool = False,
    irregularity: float = 0.0,
) -> Path:
    """Write phantom cases as an AMOS22-layout folder (``dataset.json``, ``imagesTr/`` ...).

    Training cases are ``amos_0001 .. amos_<num_train>``, validation cases follow. Images are
    int16 HU, labels uint8, both with the RAS affine. ``progress`` shows a bar (a terminal) or
    progress lines (a log) per case.

    Returns:
        The root folder.
    """
    import nibabel as nib

    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    irregularity = check_irregularity(irregularity)  # before any file is written
    root = Path(root)
    entries: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    folders = {"training": ("imagesTr", "labelsTr"), "validation": ("imagesVa", "labelsVa")}
    number = 0
    from medsynth.callbacks.progress import progress_bar

    bar = progress_bar(num_train + num_val, "phantom", unit="case", disable=not progress)
    for split, count in (("training", num_train), ("validation", num_val)):
        img_dir, lab_dir = (root / d for d in folders[split])
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            number += 1
            name = f"amos_{number:04d}"
            case = make_phantom_case(
                seed * 100_003 + number, depth=depth, size=size, case_id=name, irregularity=irregularity
            )
            hu = np.round(case.image).astype(np.int16)
            nib.save(nib.Nifti1Image(hu, case.affine), img_dir / f"{name}.nii.gz")
            nib.save(nib.Nifti1Image(case.label, case.affine), lab_dir / f"{name}.nii.gz")
            entries[split].append(
                {"image": f"./{img_dir.name}/{name}.nii.gz", "label": f"./{lab_dir.name}/{name}.nii.gz"}
            )
            bar.update(1)
    bar.close()
    meta = {
        "name": "medsynth-phantom",
        "description": "Procedural abdominal CT phantom in the AMOS22 layout (medsynth)",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(i): n for i, n in _AMOS_NAMES.items()}},
        "numTraining": num_train,
        "numValidation": num_val,
        **entries,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


_AMOS_NAMES = {
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gall bladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "postcava",
    10: "pancreas",
    11: "right adrenal gland",
    12: "left adrenal gland",
    13: "duodenum",
    14: "bladder",
    15: "prostate/uterus",
}
