"""medsynth.masks: organ scaling and elastic deformation, checked against direct voxel counts,
connected components and distance transforms; the ``medsynth masks`` command end to end."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import make_volume, save_nifti
from scipy import ndimage

from medsynth.commands.masks import main
from medsynth.labels import BODY
from medsynth.masks import deform, resolve_organ, scale_organ, voxel_spacing

SHAPE = (48, 40, 14)
SPACING = (1.5, 1.5, 4.0)  # anisotropic: z voxels are 2.7x longer


def ellipsoid(center_mm, radii_mm, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center_mm, radii_mm)) <= 1.0


def phantom_labels() -> tuple[np.ndarray, np.ndarray]:
    """Body cylinder, a liver ellipsoid, a spleen touching it and a kidney; ``(labels, affine)``."""
    lab = np.zeros(SHAPE, np.uint8)
    lab[ellipsoid((36, 30, 28), (32, 26, 1e6))] = BODY
    lab[ellipsoid((24, 30, 28), (9, 8, 16))] = 6  # liver
    lab[ellipsoid((50, 30, 28), (6, 6, 12))] = 1  # spleen, 1 voxel of body between it and the liver
    lab[ellipsoid((36, 16, 24), (4, 3, 8))] = 3  # kidney
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 80.0]
    return lab, affine


def extent_mm(region: np.ndarray, axis: int) -> float:
    idx = np.nonzero(region.any(axis=tuple(a for a in range(3) if a != axis)))[0]
    return float((idx.max() - idx.min() + 1) * SPACING[axis])


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.3, 2.0])
def test_scale_organ_changes_the_count_by_the_factor_and_nothing_else(factor: float) -> None:
    lab, affine = phantom_labels()
    out = scale_organ(lab, affine, "liver", factor)
    n0, n1 = int((lab == 6).sum()), int((out == 6).sum())
    assert abs(n1 - factor * n0) <= 0.1 * factor * n0
    # Only liver <-> body voxels change; the outline and every other organ stay as they were.
    changed = lab != out
    assert set(np.unique(lab[changed])) | set(np.unique(out[changed])) <= {6, BODY}
    assert np.array_equal(lab != 0, out != 0)
    for organ in (1, 3):
        assert np.array_equal(lab == organ, out == organ)
    if factor > 1:
        assert np.all(out[lab == 6] == 6)  # grows: a superset
        assert ndimage.label(out == 6)[1] == 1  # no detached pieces
    else:
        assert np.all(lab[out == 6] == 6)  # shrinks: a subset


def brute_force_distance_mm(region: np.ndarray) -> np.ndarray:
    """Distance in mm from every voxel to the nearest voxel of ``region``, by exhaustive search."""
    pts = np.stack(np.nonzero(region), 1) * np.array(SPACING)  # [N, 3] mm
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).reshape(-1, 3)
    grid = grid * np.array(SPACING)
    out = np.empty(len(grid))
    for i in range(0, len(grid), 4096):
        d = ((grid[i : i + 4096, None, :] - pts[None]) ** 2).sum(-1)
        out[i : i + 4096] = np.sqrt(d.min(1))
    return out.reshape(SHAPE)


@pytest.mark.parametrize("factor", [1.3, 2.0])
def test_scale_organ_grows_by_distance_in_millimetres(factor: float) -> None:
    """Every added voxel is at most as far (in mm, anisotropic spacing) from the old organ as any
    body voxel left out. Growing by voxel steps instead would break this: with 4 mm z voxels a
    one-voxel z step is 2.7 one-voxel x steps."""
    lab, affine = phantom_labels()
    out = scale_organ(lab, affine, "liver", factor)
    dist = brute_force_distance_mm(lab == 6)
    added = (out == 6) & (lab != 6)
    left = (out == BODY) & (lab == BODY)
    assert added.any()
    assert dist[added].max() <= dist[left].min() + 1e-9


def test_scale_organ_bad_input_is_named() -> None:
    lab, affine = phantom_labels()
    with pytest.raises(ValueError, match="unknown organ 'livr'.*liver"):
        scale_organ(lab, affine, "livr", 1.2)
    with pytest.raises(ValueError, match="not an organ"):
        scale_organ(lab, affine, "body", 1.2)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="factor must be"):
            scale_organ(lab, affine, "liver", bad)
    with pytest.raises(ValueError, match="'pancreas'.*absent"):
        scale_organ(lab, affine, "pancreas", 1.2)
    with pytest.raises(ValueError, match="no body outline"):
        scale_organ(np.where(lab == BODY, 0, lab), affine, "liver", 1.2)
    with pytest.raises(ValueError, match="largest reachable factor"):
        scale_organ(lab, affine, "liver", 1000.0)


def test_resolve_organ_accepts_names_and_ids() -> None:
    assert resolve_organ("liver") == resolve_organ(6) == resolve_organ("6") == 6
    with pytest.raises(ValueError, match="organ id 16"):
        resolve_organ(16)


def test_voxel_spacing_of_a_rotated_affine() -> None:
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.8, 3.0])
    assert voxel_spacing(affine) == pytest.approx((0.7, 0.8, 3.0))


def test_deform_is_smooth_bounded_and_keeps_every_class() -> None:
    """Every output voxel of class c lies within magnitude_mm (plus half a voxel diagonal of
    rounding) of an input voxel of class c: an independent bound from distance transforms."""
    lab, affine = phantom_labels()
    magnitude = 6.0
    out = deform(lab, affine, magnitude, smoothness_mm=30.0, seed=1)
    assert out.shape == lab.shape and out.dtype == np.uint8
    assert set(np.unique(out)) == set(np.unique(lab))
    assert ndimage.label(out != 0)[1] == 1
    assert (out != lab).mean() > 0.01  # it did move things
    slack = 0.5 * float(np.linalg.norm(SPACING))
    for c in np.unique(lab):
        dist = ndimage.distance_transform_edt(lab != c, sampling=SPACING)  # mm to class c in the input
        assert dist[out == c].max() <= magnitude + slack
    assert np.array_equal(deform(lab, affine, magnitude, 30.0, seed=1), out)
    assert not np.array_equal(deform(lab, affine, magnitude, 30.0, seed=2), out)
    assert np.array_equal(deform(lab, affine, 0.0, 30.0, seed=1), lab)


def test_deform_bad_input() -> None:
    lab, affine = phantom_labels()
    with pytest.raises(ValueError, match="magnitude_mm"):
        deform(lab, affine, -1.0)
    with pytest.raises(ValueError, match="smoothness_mm"):
        deform(lab, affine, 2.0, smoothness_mm=0.0)
    with pytest.raises(ValueError, match="0..16"):
        deform(lab + 10, affine, 2.0)


def test_masks_command_writes_varied_volumes_in_the_input_geometry(tmp_path, capsys) -> None:
    lab, affine = phantom_labels()
    src = save_nifti(tmp_path / "in" / "case_a.nii.gz", lab, affine)
    out_dir = tmp_path / "out"
    args = ["--input", str(src.parent), "--output", str(out_dir), "--num", "3", "--seed", "0"]
    rc = main([*args, "--scale", "liver=0.7:1.4", "--deform", "4", "--no_progress"])
    assert rc == 0
    files = sorted(out_dir.glob("*.nii.gz"))
    assert [f.name for f in files] == [f"case_a_var{k:03d}.nii.gz" for k in range(3)]
    vols = [nib.load(f) for f in files]
    for v in vols:
        assert v.shape == lab.shape and np.allclose(v.affine, affine)
        assert (np.asarray(v.dataobj) == BODY).any()
    assert not np.array_equal(np.asarray(vols[0].dataobj), np.asarray(vols[1].dataobj))
    assert not any(p.name.startswith(".") for p in out_dir.iterdir())  # no staging left
    # A second run refuses to overwrite, and the existing files stay as they were.
    before = [f.read_bytes() for f in files]
    assert main([*args, "--deform", "4", "--no_progress"]) == 2
    assert "already holds NIfTI" in capsys.readouterr().err
    assert [f.read_bytes() for f in files] == before


def test_masks_command_derives_the_body_from_the_ct_and_rejects_bad_specs(tmp_path, capsys) -> None:
    hu, label, affine = make_volume()  # AMOS-style: no body class in the labels
    lab_path = save_nifti(tmp_path / "labelsTr" / "c1.nii.gz", label, affine)
    save_nifti(tmp_path / "imagesTr" / "c1_0000.nii.gz", hu, affine)  # nnU-Net channel naming
    out_dir = tmp_path / "out"
    base = ["--input", str(lab_path), "--output", str(out_dir), "--no_progress"]
    assert main([*base, "--num", "1", "--scale", "liver=1.2"]) == 2
    assert "no body label" in capsys.readouterr().err
    for spec, msg in [("livr=1.2", "unknown organ"), ("liver=0", "> 0"), ("liver", "ORGAN=FACTOR")]:
        assert main([*base, "--images", str(tmp_path / "imagesTr"), "--scale", spec]) == 2
        assert msg in capsys.readouterr().err
    assert main([*base, "--images", str(tmp_path / "imagesTr"), "--num", "2", "--scale", "liver=1.2"]) == 2
    assert "identical" in capsys.readouterr().err
    assert not out_dir.exists() or not any(out_dir.iterdir())
    rc = main([*base, "--images", str(tmp_path / "imagesTr"), "--num", "1", "--scale", "liver=1.3"])
    assert rc == 0
    out = np.asarray(nib.load(out_dir / "c1_var000.nii.gz").dataobj)
    n0, n1 = int((label == 6).sum()), int((out == 6).sum())
    assert abs(n1 - 1.3 * n0) <= 0.1 * 1.3 * n0
    assert (out == BODY).sum() > 0


def test_vary_files_is_what_the_command_writes_and_names_its_arguments(tmp_path) -> None:
    """The library call gives byte-identical volumes to ``medsynth masks`` with the same settings;
    its errors name the Python argument, the command's the flag."""
    from medsynth.commands.common import in_cli_words
    from medsynth.commands.masks import FLAGS
    from medsynth.masks import vary_files

    lab, affine = phantom_labels()
    src = save_nifti(tmp_path / "in" / "case_a.nii.gz", lab, affine)
    settings = ["--num", "2", "--seed", "3", "--scale", "liver=0.8:1.2", "--deform", "3", "--no_progress"]
    assert main(["--input", str(src), "--output", str(tmp_path / "cli"), *settings]) == 0
    written = vary_files(
        [src], tmp_path / "py", num=2, seed=3, scales=[("liver", 0.8, 1.2)], deform_mm=3.0, progress=False
    )
    assert [p.name for p in written] == ["case_a_var000.nii.gz", "case_a_var001.nii.gz"]
    for p in written:
        ours = np.asarray(nib.load(p).dataobj)
        np.testing.assert_array_equal(ours, np.asarray(nib.load(tmp_path / "cli" / p.name).dataobj))
    with pytest.raises(ValueError, match=r"^num=0: must be >= 1$") as err:
        vary_files([src], tmp_path / "bad", num=0, deform_mm=1.0)
    assert in_cli_words(str(err.value), FLAGS) == "--num 0: must be >= 1"
    with pytest.raises(ValueError, match=r"scales= names organ 'liver' twice") as err:
        vary_files([src], tmp_path / "bad", scales=[("liver", 1.1, 1.1), (6, 1.2, 1.2)], num=1)
    assert in_cli_words(str(err.value), FLAGS) == "--scale names organ 'liver' twice"
    with pytest.raises(ValueError, match="nothing to vary") as err:
        vary_files([src], tmp_path / "bad")
    assert in_cli_words(str(err.value), FLAGS).endswith("give --scale ORGAN=FACTOR and/or --deform MM")
    assert not (tmp_path / "bad").exists()


def _world_labels(lab: np.ndarray, affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Independent reference: the labels ``[N, 8]`` a nearest-voxel lookup may give at world
    points ``[N, 3]`` (mm): the nearest voxel's, and where a point lies halfway between two voxels
    along an axis, those of both (0 outside the grid)."""
    x = (np.linalg.inv(affine) @ np.c_[points, np.ones(len(points))].T)[:3].T
    tie = np.abs(np.abs(x - np.floor(x)) - 0.5) < 1e-6
    out = []
    for combo in range(8):
        pick = np.array([(combo >> a) & 1 for a in range(3)], bool)
        ijk = np.where(tie & pick, np.floor(x), np.where(tie, np.ceil(x), np.rint(x))).astype(int)
        inside = np.all((ijk >= 0) & (ijk < np.asarray(lab.shape)), axis=1)
        col = np.zeros(len(points), np.uint8)
        col[inside] = lab[tuple(ijk[inside].T)]
        out.append(col)
    return np.stack(out, axis=1)


@pytest.mark.parametrize(
    "spacing, fov", [((1.5, 1.5, 8.0), None), ((3.0, 3.0, 2.0), None), (None, 40.0), ((1.0, 1.0, 5.0), 90.0)]
)
def test_resample_labels_keeps_every_world_position(spacing, fov) -> None:
    """Every new voxel holds the old label found at its world position (nearest voxel, background
    outside the old grid; at a point halfway between old voxels, one of theirs): the new affine
    places the grid where the labels say; the centre stays."""
    from medsynth.masks import resample_labels

    lab, affine = phantom_labels()
    out, new_affine = resample_labels(lab, affine, spacing, fov)
    want = spacing or SPACING
    assert np.allclose(voxel_spacing(new_affine), want)
    if fov is not None:
        assert out.shape[0] * want[0] == pytest.approx(fov, abs=want[0]) and out.shape[1] * want[
            1
        ] == pytest.approx(fov, abs=want[1])
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), -1).reshape(-1, 3)
    world = (new_affine @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T
    candidates = _world_labels(lab, affine, world)
    ok = (candidates == out.reshape(-1)[:, None]).any(axis=1)
    assert ok.all(), f"{(~ok).sum()} voxels hold a label found nowhere near their position"
    assert len(np.unique(out)) == len(np.unique(lab))  # nothing lost at this sampling
    centre = lambda a, shape: a @ [*((np.asarray(shape) - 1) / 2.0), 1.0]  # noqa: E731
    np.testing.assert_allclose(
        centre(new_affine, out.shape), centre(affine, lab.shape), atol=max(want) / 2 + 1e-9
    )


def test_masks_in_the_totalsegmentator_label_set(tmp_path, capsys) -> None:
    """The same operations on TotalSegmentator ids (liver 5, body 118): growth only into body,
    the CLI with --label_set totalseg writes resampled variants, AMOS-only ids are refused."""
    from medsynth.labels import get_label_set

    ts = get_label_set("totalseg")
    lab, affine = phantom_labels()
    to_ts = np.zeros(256, np.uint8)
    to_ts[[BODY, 6, 1, 3]] = [
        ts.body,
        ts.by_name("liver").index,
        ts.by_name("spleen").index,
        ts.by_name("kidney_left").index,
    ]
    tlab = to_ts[lab]
    out = scale_organ(tlab, affine, "liver", 1.3, label_set="totalseg")
    changed = out != tlab
    assert set(np.unique(tlab[changed])) == {ts.body} and set(np.unique(out[changed])) == {5}
    with pytest.raises(ValueError, match=r"0\.\.16 \(label set 'amos'\), found 0\.\.118"):
        scale_organ(tlab, affine, "liver", 1.3)  # read as AMOS: 118 is out of range
    save_nifti(tmp_path / "in" / "case.nii.gz", tlab, affine)
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--num", "2", "--deform", "3"]
    assert (
        main(
            [*args, "--label_set", "totalseg", "--spacing", "1.5", "1.5", "8", "--fov", "60", "--no_progress"]
        )
        == 0
    )
    img = nib.load(str(tmp_path / "out" / "case_var001.nii.gz"))
    assert img.shape[2] == 7 and np.allclose(img.header.get_zooms(), (1.5, 1.5, 8.0))
    assert set(np.unique(np.asanyarray(img.dataobj))) <= {0, 1, 3, 5, ts.body}
    assert main([*args[:4], "--label_set", "totalseg", "--spacing", "1", "0", "2", "--no_progress"]) == 2
    assert "--spacing" in capsys.readouterr().err
