"""medsynth.labels label sets: built-ins against their sources, dataset.json parsing, remapping by name."""

import json

import numpy as np
import pytest
from totalsegmentator.map_to_binary import class_map

from medsynth.labels import (
    BODY,
    CLASSES,
    NUM_CLASSES,
    TOTALSEG_TO_AMOS,
    LabelSet,
    get_label_set,
)


def test_amos_set_is_the_class_table() -> None:
    amos = get_label_set()
    assert amos.name == "amos" and amos.classes == CLASSES
    assert (amos.num_classes, amos.body) == (NUM_CLASSES, BODY) == (17, 16)
    assert amos.structure_ids == tuple(range(1, 16))
    np.testing.assert_array_equal(amos.colorize(np.array([[6]])), [[CLASSES[6].color]])


def test_totalseg_set_follows_the_installed_table() -> None:
    ts = get_label_set("totalseg")
    table = class_map["total"]
    assert ts.num_classes == len(table) + 2 and ts.body == len(table) + 1  # background + 117 + body
    for i, name in table.items():
        assert ts.classes[i].name == name and ts.classes[i].totalseg == name
    assert ts.classes[ts.body].name == "body"
    assert ts.by_name("liver").color == CLASSES[6].color  # AMOS colours where the organ is shared


def test_dataset_json_label_sets(tmp_path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2}}))
    s = get_label_set(path)
    assert s.names() == ("background", "liver", "tumour", "body") and s.body == 3
    assert s.classes[1].totalseg == "liver" and s.classes[2].totalseg is None
    assert get_label_set(tmp_path).names() == s.names()  # the folder holding it works too
    path.write_text(json.dumps({"labels": {"background": 0, "body": 1, "liver": 2}}))
    assert get_label_set(path).body == 1  # a body class of its own is kept
    for labels, msg in [
        ({"background": 0, "liver": 2}, "without gaps"),
        ({"background": 0, "organs": [1, 2]}, "region-based"),
        ({"bg": 0, "liver": 1}, "'background'"),
    ]:
        path.write_text(json.dumps({"labels": labels}))
        with pytest.raises(ValueError, match=msg):
            get_label_set(path)
    path.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="no 'labels'"):
        get_label_set(path)
    with pytest.raises(ValueError, match="amos, totalseg"):
        get_label_set("amoss")


def test_totalseg_onto_amos_by_name() -> None:
    """Every TotalSegmentator id goes to its AMOS organ (the AMOS table's own TotalSegmentator
    names, independently), everything else inside the patient to body."""
    ts, amos = get_label_set("totalseg"), get_label_set("amos")
    lut = ts.lookup_to(amos)
    expected = np.full(ts.num_classes, BODY)
    expected[0] = 0
    for i, name in class_map["total"].items():
        if name in TOTALSEG_TO_AMOS:
            expected[i] = TOTALSEG_TO_AMOS[name]
    np.testing.assert_array_equal(lut, expected)
    assert lut[ts.by_name("urinary_bladder").index] == 14 and lut[ts.by_name("vertebrae_L1").index] == BODY
    back = amos.lookup_to(ts)
    assert back[6] == ts.by_name("liver").index and back[BODY] == ts.body
    extra = ts.lookup_to(amos, {"colon": "duodenum"})
    assert extra[ts.by_name("colon").index] == 13
    with pytest.raises(ValueError, match=r"unknown classes \['colonn'\]"):
        ts.lookup_to(amos, {"colonn": "duodenum"})


def test_label_set_round_trip_and_validation() -> None:
    ts = get_label_set("totalseg")
    assert LabelSet.from_dict(json.loads(json.dumps(ts.to_dict()))) == ts
    with pytest.raises(ValueError, match="ids must run"):
        LabelSet("x", (CLASSES[0], CLASSES[2]), 1)
    with pytest.raises(KeyError, match="no class 'lung'"):
        get_label_set().by_name("lung")
