"""The class table: AMOS22 organ ids, the added body class, overlay colours and TotalSegmentator names.

Ids 1..15 follow the AMOS22 label order (Ji et al., 2022). Class 16 ("body") is added as in
Zhuang et al., Sec. 3: the inside of the patient outline that carries no organ label. Colours
follow the paper's Fig. 3/4 where it names them (body beige, spleen green, liver dark red, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "NUM_CLASSES",
    "NUM_ORGANS",
    "BACKGROUND",
    "BODY",
    "ClassInfo",
    "CLASSES",
    "ORGAN_IDS",
    "class_by_name",
    "colorize",
    "TOTALSEG_TO_AMOS",
    "PAPER_DICE_ORDER",
]


@dataclass(frozen=True)
class ClassInfo:
    """One semantic class.

    Attributes:
        index: Label value in masks (0..16).
        name: Short snake_case name, used in metric keys (``dice/<name>``).
        color: RGB overlay colour, 0..255.
        totalseg: Name of the organ in TotalSegmentator's ``total`` task, or None
            (background and body have no counterpart).
    """

    index: int
    name: str
    color: tuple[int, int, int]
    totalseg: str | None


CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "background", (0, 0, 0), None),
    ClassInfo(1, "spleen", (0, 160, 0), "spleen"),  # green
    ClassInfo(2, "kidney_right", (30, 80, 220), "kidney_right"),  # blue
    ClassInfo(3, "kidney_left", (240, 220, 40), "kidney_left"),  # yellow
    ClassInfo(4, "gallbladder", (120, 200, 80), "gallbladder"),
    ClassInfo(5, "esophagus", (250, 140, 60), "esophagus"),
    ClassInfo(6, "liver", (140, 20, 20), "liver"),  # dark red
    ClassInfo(7, "stomach", (75, 0, 130), "stomach"),  # indigo
    ClassInfo(8, "aorta", (190, 150, 100), "aorta"),  # light brown
    ClassInfo(9, "inferior_vena_cava", (60, 190, 170), "inferior_vena_cava"),  # aqua blue green
    ClassInfo(10, "pancreas", (128, 128, 128), "pancreas"),  # gray
    ClassInfo(11, "adrenal_gland_right", (0, 100, 40), "adrenal_gland_right"),  # dark green
    ClassInfo(12, "adrenal_gland_left", (140, 230, 140), "adrenal_gland_left"),  # light green
    ClassInfo(13, "duodenum", (190, 160, 220), "duodenum"),  # light purple
    ClassInfo(14, "bladder", (200, 160, 120), "urinary_bladder"),  # shallow brown
    ClassInfo(15, "prostate_uterus", (150, 50, 170), "prostate"),  # purple
    ClassInfo(16, "body", (235, 220, 180), None),  # beige
)

NUM_CLASSES: int = len(CLASSES)  # 17
BACKGROUND: int = 0
BODY: int = 16
NUM_ORGANS: int = 15
ORGAN_IDS: tuple[int, ...] = tuple(range(1, NUM_ORGANS + 1))

#: TotalSegmentator ``total`` task name -> AMOS id.
TOTALSEG_TO_AMOS: dict[str, int] = {c.totalseg: c.index for c in CLASSES if c.totalseg is not None}

#: The 14 organ Dice columns of the paper's Tables 1 and 2, in their order
#: (Sple., Liv., Kid_l, Kid_r, Panc., Stom., Aorta, Gall_bld, Espo., Adr_r, Adr_l, Duod., Cava, Bladder).
PAPER_DICE_ORDER: tuple[int, ...] = (1, 6, 3, 2, 10, 7, 8, 4, 5, 11, 12, 13, 9, 14)

_BY_NAME = {c.name: c for c in CLASSES}


def class_by_name(name: str) -> ClassInfo:
    """Look a class up by its name; raises KeyError naming the unknown class."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown class name {name!r}; known: {sorted(_BY_NAME)}") from None


def colorize(mask: np.ndarray) -> np.ndarray:
    """Map an integer mask ``[..., H, W]`` to RGB uint8 ``[..., H, W, 3]`` with the class colours."""
    mask = np.asarray(mask)
    if mask.size and (mask.min() < 0 or mask.max() >= NUM_CLASSES):
        raise ValueError(f"mask values must lie in 0..{NUM_CLASSES - 1}, got {mask.min()}..{mask.max()}")
    lut = np.array([c.color for c in CLASSES], dtype=np.uint8)
    return lut[mask.astype(np.int64)]
