"""The phantom's TotalSegmentator labelling: same image, richer labels that fold back onto AMOS."""

import hashlib

import numpy as np
import pytest
from totalsegmentator.map_to_binary import class_map

from medsynth.data import PhantomDataModule
from medsynth.data.phantom import make_phantom_case
from medsynth.labels import BODY, get_label_set

# sha256 of make_phantom_case(3, depth=8, size=32) image and label, computed on main before label
# sets existed: the default phantom must stay byte-identical.
GOLDEN = (
    "35bf59ef2c30cffa66e806f531c3f04f0221fff8b58c0ab7d9be4f83a1ff65d8",
    "dcde20080a399effc330ecfd30031ecd2755e7ef4b9962e4f977a7ca930e8e0a",
)


def test_default_phantom_is_byte_identical() -> None:
    c = make_phantom_case(3, depth=8, size=32)
    assert (
        hashlib.sha256(c.image.tobytes()).hexdigest(),
        hashlib.sha256(c.label.tobytes()).hexdigest(),
    ) == GOLDEN


def test_totalseg_labels_refine_the_amos_ones() -> None:
    amos = make_phantom_case(5, depth=16, size=48)
    ts = make_phantom_case(5, depth=16, size=48, label_set="totalseg")
    np.testing.assert_array_equal(ts.image, amos.image)
    names = {class_map["total"][int(i)] for i in np.unique(ts.label) if i}
    for expected in (
        "liver",
        "vertebrae_L3",
        "sacrum",
        "spinal_cord",
        "autochthon_left",
        "iliopsoas_right",
        "hip_left",
        "small_bowel",
        "rib_left_12",
        "lung_lower_lobe_right",
    ):
        assert expected in names
    # Folded back onto AMOS by name, organs give the AMOS labels; everything else was AMOS background.
    lut = get_label_set("totalseg").lookup_to(get_label_set("amos"))
    folded = lut[ts.label.astype(np.int64)]
    folded[folded == BODY] = 0
    np.testing.assert_array_equal(folded, amos.label)
    # Bone is labelled where it is bright.
    bone = np.isin(
        ts.label, [i for i, n in class_map["total"].items() if n.startswith(("vertebrae", "rib", "hip"))]
    )
    assert np.median(ts.image[bone]) > 250


def test_phantom_data_module_with_the_rich_set() -> None:
    dm = PhantomDataModule(
        num_train_cases=1, num_val_cases=0, num_test_cases=0, depth=4, image_size=32, label_set="totalseg"
    )
    dm.setup("fit")
    mask = dm.datasets["train"].masks[0]
    assert mask.max() == 118 and (mask == 118).any()  # body id of the totalseg set
    with pytest.raises(ValueError, match="label_set"):
        PhantomDataModule(label_set="other")
