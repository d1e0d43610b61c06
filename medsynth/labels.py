"""The class table: AMOS22 organ ids, the added body class, overlay colours and TotalSegmentator names.

Ids 1..15 follow the AMOS22 label order (Ji et al., 2022). Class 16 ("body") is added as in
Zhuang et al., Sec. 3: the inside of the patient outline that carries no organ label. Colours
follow the paper's Fig. 3/4 where it names them (body beige, spleen green, liver dark red, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    "LabelSet",
    "AMOS",
    "BUILTIN_LABEL_SETS",
    "get_label_set",
    "totalseg_label_set",
    "label_set_from_dataset_json",
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


# ----------------------------------------------------------------------------- label sets
@dataclass(frozen=True)
class LabelSet:
    """A table of mask classes: background 0, the structures, the body class last.

    Attributes:
        name: ``"amos"``, ``"totalseg"`` or the path of the dataset.json it was read from.
        classes: One :class:`ClassInfo` per id, in id order (ids ``0..num_classes-1``).
        body: Id of the body class (the inside of the patient outline without a label).
    """

    name: str
    classes: tuple[ClassInfo, ...]
    body: int

    def __post_init__(self) -> None:
        ids = [c.index for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError(f"label set {self.name!r}: class ids must run 0..{len(ids) - 1} in order")
        names = [c.name for c in self.classes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"label set {self.name!r}: duplicate class names {dup}")
        if not 0 < self.body < len(self.classes):
            raise ValueError(f"label set {self.name!r}: body id {self.body} outside 1..{len(ids) - 1}")

    @property
    def num_classes(self) -> int:
        """Classes counting background and body."""
        return len(self.classes)

    @property
    def structure_ids(self) -> tuple[int, ...]:
        """Every id but background and body."""
        return tuple(c.index for c in self.classes if c.index not in (BACKGROUND, self.body))

    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def by_name(self, name: str) -> ClassInfo:
        """A class by name (or its TotalSegmentator name); KeyError naming the known ones."""
        for c in self.classes:
            if name in (c.name, c.totalseg):
                return c
        raise KeyError(f"label set {self.name!r} has no class {name!r}; classes: {', '.join(self.names())}")

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """Integer mask ``[..., H, W]`` -> RGB uint8 ``[..., H, W, 3]``."""
        mask = np.asarray(mask)
        if mask.size and (mask.min() < 0 or mask.max() >= self.num_classes):
            raise ValueError(
                f"mask values must lie in 0..{self.num_classes - 1} ({self.name}), got {mask.min()}..{mask.max()}"
            )
        lut = np.array([c.color for c in self.classes], dtype=np.uint8)
        return lut[mask.astype(np.int64)]

    def lookup_to(self, target: LabelSet, extra: dict[str, str] | None = None) -> np.ndarray:
        """A lookup table ``[num_classes]`` mapping this set's ids onto ``target``'s, by name.

        A class matches the target class with the same name or TotalSegmentator name; ``extra``
        adds ``{source name: target name}`` pairs. Background stays background; every other
        class without a counterpart becomes the target's body (it lies inside the patient).

        Raises:
            ValueError: naming the classes of ``extra`` that either set does not have.
        """
        extra = dict(extra or {})
        bad = [k for k in extra if k not in {n for c in self.classes for n in (c.name, c.totalseg) if n}]
        bad += [
            v
            for v in extra.values()
            if v not in {n for c in target.classes for n in (c.name, c.totalseg) if n}
        ]
        if bad:
            raise ValueError(
                f"remap names unknown classes {bad} (source {self.name!r}: {', '.join(self.names())}; "
                f"target {target.name!r}: {', '.join(target.names())})"
            )
        keys: dict[str, int] = {}
        for c in target.classes:
            for n in (c.name, c.totalseg):
                if n:
                    keys.setdefault(n, c.index)
        lut = np.full(self.num_classes, target.body, dtype=np.int64)
        lut[BACKGROUND] = BACKGROUND
        lut[self.body] = target.body
        for c in self.classes[1:]:
            if c.index == self.body:
                continue
            for n in (c.name, c.totalseg):
                if n in extra:
                    n = extra[n]
                if n and n in keys and keys[n] not in (BACKGROUND,):
                    lut[c.index] = keys[n]
                    break
        return lut

    def to_dict(self) -> dict:
        """JSON-able form (what checkpoints record)."""
        return {
            "name": self.name,
            "body": self.body,
            "classes": [[c.index, c.name, list(c.color), c.totalseg] for c in self.classes],
        }

    @classmethod
    def from_dict(cls, d: dict) -> LabelSet:
        return cls(
            str(d["name"]),
            tuple(
                ClassInfo(int(i), str(n), tuple(int(x) for x in col), ts) for i, n, col, ts in d["classes"]
            ),
            int(d["body"]),
        )


def _color(i: int) -> tuple[int, int, int]:
    """A distinct, deterministic colour for class ``i`` (golden-ratio hue steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


AMOS = LabelSet("amos", CLASSES, BODY)
BUILTIN_LABEL_SETS = ("amos", "totalseg")
_BODY_COLOR = CLASSES[BODY].color


def _with_body(name: str, entries: list[tuple[int, str, str | None]]) -> LabelSet:
    """Background 0 + ``entries`` (id, name, TotalSegmentator name) + body (appended if absent)."""
    amos_colors = {c.name: c.color for c in CLASSES} | {c.totalseg: c.color for c in CLASSES if c.totalseg}
    classes = [CLASSES[0]]
    body = None
    for i, n, ts in sorted(entries):
        if n == "body":
            body = i
            classes.append(ClassInfo(i, n, _BODY_COLOR, None))
            continue
        classes.append(ClassInfo(i, n, amos_colors.get(n, amos_colors.get(ts, _color(i))), ts))
    if body is None:
        body = len(classes)
        classes.append(ClassInfo(body, "body", _BODY_COLOR, None))
    return LabelSet(name, tuple(classes), body)


def totalseg_label_set() -> LabelSet:
    """TotalSegmentator v2 ``total`` task: its 117 classes with its own ids, body appended (118).

    Names and ids come from the installed package's table
    (``totalsegmentator.map_to_binary.class_map["total"]``).
    """
    try:
        from totalsegmentator.map_to_binary import class_map
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("the 'totalseg' label set needs the totalsegmentator package") from err
    table = class_map["total"]
    return _with_body("totalseg", [(int(i), str(n), str(n)) for i, n in table.items()])


def label_set_from_dataset_json(path: str | Path) -> LabelSet:
    """The label set of an nnU-Net v2 ``dataset.json`` (``labels``: name -> id); body appended if absent.

    Raises:
        ValueError: naming the file when it is unreadable, has no ``labels``, uses region-based
            labels (lists of ids), or its ids are not 0 (background) .. n-1.
    """
    import json

    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read dataset.json ({err})") from err
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f'{path}: no \'labels\' mapping (nnU-Net v2: {{"background": 0, "liver": 1, ...}})')
    entries = []
    for n, i in labels.items():
        if isinstance(i, (list, tuple)):
            raise ValueError(f"{path}: region-based label {n!r}: {i} is not supported; give one id per class")
        if isinstance(i, str) and not i.isdigit():  # the older name <- id form ("1": "liver")
            n, i = i, n
        try:
            i = int(i)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: label {n!r} has a non-integer id {i!r}") from None
        entries.append((i, str(n)))
    ids = sorted(i for i, _ in entries)
    if ids != list(range(len(ids))):
        raise ValueError(f"{path}: label ids must be 0..{len(ids) - 1} without gaps, got {ids}")
    if dict((i, n) for i, n in entries)[0] != "background":
        raise ValueError(f"{path}: id 0 must be 'background'")
    ts_names = _totalseg_names()
    return _with_body(str(path), [(i, n, n if n in ts_names else None) for i, n in entries if i != 0])


def _totalseg_names() -> set[str]:
    try:
        from totalsegmentator.map_to_binary import class_map
    except ImportError:  # pragma: no cover
        return set()
    return set(class_map["total"].values())


def get_label_set(name_or_path: str | Path | LabelSet = "amos") -> LabelSet:
    """``"amos"`` (the default 17-class table), ``"totalseg"``, or a dataset.json path.

    Raises:
        ValueError: for an unknown name that is no existing file, listing the built-ins.
    """
    if isinstance(name_or_path, LabelSet):
        return name_or_path
    key = str(name_or_path)
    if key == "amos":
        return AMOS
    if key == "totalseg":
        return totalseg_label_set()
    path = Path(key)
    if path.is_dir():
        path = path / "dataset.json"
    if path.is_file():
        return label_set_from_dataset_json(path)
    raise ValueError(
        f"unknown label set {key!r}: give one of {', '.join(BUILTIN_LABEL_SETS)} or the path of a dataset.json"
    )
