"""Real label maps as phantom anatomy: reading, pose, warping into phantoms, the `synth ct --atlas` pool.

The maps are built here (a tiny NIfTI with its organ names in a JSON beside it), so nothing needs
../shared; the Rosenhain maps themselves are tried in the one test that skips without them.
"""

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_mousesegment.cli import main
from napari_mousesegment.data.atlas import load_atlases, organ_of, read_atlas
from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.metrics import dice
from napari_mousesegment.organs import CT_ORGANS

from ..conftest import SHARED_DATA

SPACING = 0.4
SHAPE = (64, 40, 52)
#: The map's own numbering and names, as a database writes them (tumour: a class we do not model).
CLASSES = {"Heart": 10, "Lung": 11, "Liver": 12, "KidneyLeft": 13, "KidneyRight": 14, "Tumor": 20}


def _blob(labels, centre, radii, value):
    z, y, x = np.ogrid[: labels.shape[0], : labels.shape[1], : labels.shape[2]]
    inside = sum(((a - c) / r) ** 2 for a, c, r in zip((z, y, x), centre, radii)) <= 1
    labels[inside] = value


def _mouse() -> np.ndarray:
    """A (z, y, x) map: thorax at the head end, back (kidneys) at low y, the heart on the left (high x)."""
    labels = np.zeros((90, 40, 48), np.uint8)
    for x in (16, 32):
        _blob(labels, (20, 18, x), (12, 8, 6), CLASSES["Lung"])
    _blob(labels, (22, 24, 27), (7, 6, 6), CLASSES["Heart"])
    _blob(labels, (42, 22, 24), (9, 12, 16), CLASSES["Liver"])
    _blob(labels, (58, 12, 14), (6, 4, 4), CLASSES["KidneyRight"])
    _blob(labels, (60, 12, 34), (6, 4, 4), CLASSES["KidneyLeft"])
    _blob(labels, (75, 25, 24), (3, 3, 3), CLASSES["Tumor"])
    return labels


def _write_map(folder, name, labels):
    """A NIfTI label map in RAS (x, y, z) order with its class names in NAME.json."""
    nibabel = pytest.importorskip("nibabel")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.nii.gz"
    nibabel.save(nibabel.Nifti1Image(labels.transpose(2, 1, 0).copy(), np.diag([SPACING] * 3 + [1.0])), str(path))
    (folder / f"{name}.json").write_text(json.dumps({"organs": CLASSES}))
    return path


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    mouse = _mouse()
    return {"a": _write_map(root, "mouse_a", mouse),
            "turned": _write_map(root, "mouse_turned", mouse[::-1, ::-1, :])}  # tail first, back up


def test_class_names_map_to_our_organs():
    assert organ_of("Lung") == "lungs" and organ_of("KidneyLeft") == "kidneys" and organ_of("right_kidney") == "kidneys"
    assert organ_of("Tumor") is None and organ_of("Trachea") is None and organ_of("spleen") == "spleen"


def test_reads_organs_volumes_and_pose(maps):
    atlas = read_atlas(maps["a"])
    assert atlas.name == "mouse_a" and atlas.spacing == pytest.approx((SPACING,) * 3)
    assert atlas.organs == ("heart", "lungs", "liver", "kidneys")  # tumour dropped, both kidneys one organ
    mouse = _mouse()
    for organ, names in {"kidneys": ("KidneyLeft", "KidneyRight"), "liver": ("Liver",)}.items():
        truth = np.isin(mouse, [CLASSES[n] for n in names]).sum() * SPACING**3
        assert atlas.volumes[organ] == pytest.approx(truth, rel=0.02)
    c = atlas.centroids
    assert c["heart"][0] < c["liver"][0] < c["kidneys"][0]  # head first
    assert c["kidneys"][1] < c["liver"][1]  # back at low y
    assert c["heart"][2] > c["lungs"][2]  # the animal's left at high x
    turned = read_atlas(maps["turned"])  # stored tail first and back up: put in the same pose
    assert np.array_equal(turned.labels, atlas.labels)


def test_warped_map_drives_the_phantom(maps):
    atlas = read_atlas(maps["a"])
    a, b = (ct_phantom(seed, "native", shape=SHAPE, atlas=atlas) for seed in (1, 2))
    plain = ct_phantom(1, "native", shape=SHAPE)
    assert a.anatomy == "mouse_a" and plain.anatomy == "ellipsoids"
    assert set(np.unique(a.labels)) == {0, *CT_ORGANS.values()}  # all 9 organs, whatever the map has
    volumes = a.organ_volumes()
    for organ in ("lungs", "liver", "kidneys"):  # the map's proportions, within the warp's jitter
        ours, real = volumes[organ] / volumes["heart"], atlas.volumes[organ] / atlas.volumes["heart"]
        assert 0.6 < ours / real < 1.6, organ
    assert not np.array_equal(a.labels, b.labels)  # each seed warps the map its own way
    assert dice(a.labels == CT_ORGANS["liver"], b.labels == CT_ORGANS["liver"]) < 0.97
    liver = dice(a.labels == CT_ORGANS["liver"], plain.labels == CT_ORGANS["liver"])
    assert liver < 0.9  # the map's liver, not the ellipsoid one
    for organ in ("bladder", "intestine", "bone"):  # not in the map: the ellipsoid model's, as without it
        assert dice(a.labels == CT_ORGANS[organ], plain.labels == CT_ORGANS[organ]) > 0.7, organ
    assert ct_phantom(1, "contrast", shape=SHAPE, atlas=atlas).labels.tobytes() == a.labels.tobytes()


def _centre(labels, organ):
    return np.argwhere(labels == CT_ORGANS[organ]).mean(0)


def test_each_organ_of_the_map_varies_on_its_own(maps):
    """Organs move and grow relative to each other from seed to seed, as between mice."""
    atlas = read_atlas(maps["a"])
    scans = [ct_phantom(seed, "native", shape=SHAPE, atlas=atlas) for seed in range(6)]
    offsets = np.array([_centre(s.labels, "heart") - _centre(s.labels, "liver") for s in scans])
    ratios = [s.organ_volumes()["kidneys"] / s.organ_volumes()["liver"] for s in scans]
    assert offsets.std(0).max() > 0.7  # voxels: more than the whole map's warp alone moves them apart
    assert max(ratios) / min(ratios) > 1.3


def test_variation_widens_the_maps_anatomy_only(maps, tmp_path, capsys):
    """``variation`` scales how far each organ moves and grows; 1 is the default, bit for bit,
    and the ellipsoid organs, the body and the noise stay the seed's."""
    atlas = read_atlas(maps["a"])

    def spread(variation):
        scans = [ct_phantom(seed, "native", shape=SHAPE, atlas=atlas, variation=variation) for seed in range(6)]
        offsets = np.array([_centre(s.labels, "heart") - _centre(s.labels, "liver") for s in scans])
        ratios = [s.organ_volumes()["kidneys"] / s.organ_volumes()["liver"] for s in scans]
        return offsets.std(0).max(), max(ratios) / min(ratios)

    (move0, grow0), (move1, grow1), (move2, grow2) = spread(0.0), spread(1.0), spread(2.0)
    assert move0 < move1 < move2 and grow0 < grow1 < grow2
    default = ct_phantom(3, "native", shape=SHAPE, atlas=atlas)
    assert ct_phantom(3, "native", shape=SHAPE, atlas=atlas, variation=1.0).image.tobytes() == default.image.tobytes()
    wide = ct_phantom(3, "native", shape=SHAPE, atlas=atlas, variation=2.0)
    assert not np.array_equal(wide.labels, default.labels)
    bladder = CT_ORGANS["bladder"]  # not in the map: the ellipsoid model's, whatever the variation
    assert dice(wide.labels == bladder, default.labels == bladder) > 0.7
    plain = ct_phantom(3, "native", shape=SHAPE)
    assert ct_phantom(3, "native", shape=SHAPE, variation=2.0).image.tobytes() == plain.image.tobytes()
    for bad in (-0.1, 3.5, float("nan")):
        with pytest.raises(ValueError, match="variation must be between 0 and 3"):
            ct_phantom(3, "native", shape=SHAPE, atlas=atlas, variation=bad)
    out = tmp_path / "wide"
    assert main(["synth", "ct", "--out", str(out), "--count", "1", "--seed", "3", "--shape", ",".join(map(str, SHAPE)),
                 "--atlas", str(maps["a"]), "--variation", "2", "--condition", "contrast"]) == 0
    labels = tifffile.imread(out / "labels" / "phantom_0003.tif")  # contrast: all 9 organs labelled
    assert np.array_equal(labels, wide.labels)
    assert main(["synth", "ultrasound", "--out", str(tmp_path / "us"), "--variation", "2"]) == 2
    assert "--variation, --mix-organs and --voids are for `synth ct` only" in capsys.readouterr().err
    assert main(["synth", "ct", "--out", str(tmp_path / "none"), "--variation", "2"]) == 2  # ellipsoids alone
    assert "give --atlas too" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's own one-line usage error
        main(["synth", "ct", "--out", str(tmp_path / "bad"), "--atlas", str(maps["a"]), "--variation", "4"])
    assert "expected a number from 0 to 3, got '4'" in capsys.readouterr().err


def test_replaced_organs_leave_no_fat_capsule(maps):
    """Where the ellipsoid kidneys were, a map's phantom has tissue, not the empty fat ring of a
    "ghost" kidney with no label. (The room inside, solid muscle here, is a sponge of fat and soft
    tissue by default: see the test below.)"""
    atlas = read_atlas(maps["a"])
    for seed in range(3):
        plain = ct_phantom(seed, "native", atlas=None)
        scan = ct_phantom(seed, "native", atlas=atlas, voids="muscle")
        kidneys = plain.labels == CT_ORGANS["kidneys"]
        ring = ndi.binary_dilation(kidneys, iterations=2) & ~kidneys
        far = ~ndi.binary_dilation(scan.labels > 0, iterations=5)  # away from the map's organs and their fat
        ghost = ring & far
        assert ghost.sum() > 100
        assert np.median(plain.image[ghost]) < -40  # the ellipsoid kidney's fat capsule, in the plain phantom
        assert np.median(scan.image[ghost]) > 0, seed  # gone with the organ it held


def test_pool_round_robin_and_hold_out(maps, tmp_path):
    folder = maps["a"].parent
    pool = load_atlases(["ellipsoids", folder], hold_out=["mouse_turned"])  # the folder's own map only
    assert [None if p is None else p.name for p in pool] == [None, "mouse_a"]
    with pytest.raises(ValueError, match="--hold-out mouse_x"):
        load_atlases([folder], hold_out=["mouse_x"])
    with pytest.raises(ValueError, match="every map is held out"):
        load_atlases([maps["a"]], hold_out=["mouse_a"])
    bare = tmp_path / "bare.nii.gz"
    bare.write_bytes(maps["a"].read_bytes())
    with pytest.raises(ValueError, match="no organ names beside it"):
        read_atlas(bare)
    out = tmp_path / "data"
    assert main(["synth", "ct", "--out", str(out), "--count", "3", "--seed", "5", "--shape", "40,28,32",
                 "--atlas", "ellipsoids", "--atlas", str(maps["a"]), "--condition", "native"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert {c: p["anatomy"] for c, p in meta["phantoms"].items()} == {
        "phantom_0005": "ellipsoids", "phantom_0006": "mouse_a", "phantom_0007": "ellipsoids"}
    assert "stomach" not in meta["organs"]  # the native dataset's organs, as without --atlas


def _wide_heart_mouse() -> np.ndarray:
    """The same mouse with a heart 1.7 times as large, long across the body instead of round."""
    labels = _mouse()
    labels[labels == CLASSES["Heart"]] = 0
    _blob(labels, (22, 24, 27), (5, 6, 14), CLASSES["Heart"])
    return labels


def _spread(labels, organ):
    """How far an organ reaches across the body (x) against along it (z): coordinate SDs."""
    zyx = np.argwhere(labels == CT_ORGANS[organ])
    return zyx[:, 2].std() / zyx[:, 0].std()


def test_mixed_organs_take_another_maps_shape_in_this_maps_layout(maps, tmp_path, capsys):
    """``mix`` gives each organ of a map another map's shape, scaled to this map's volume and put
    where this map has it; ``mix=0`` is the phantom without donors, bit for bit."""
    atlas = read_atlas(maps["a"])
    wide = read_atlas(_write_map(tmp_path / "other", "mouse_wide", _wide_heart_mouse()))
    plain = ct_phantom(4, "contrast", shape=SHAPE, atlas=atlas)
    assert ct_phantom(4, "contrast", shape=SHAPE, atlas=atlas, donors=[atlas, wide]).image.tobytes() == \
        plain.image.tobytes() and plain.borrowed == {}
    mixed = ct_phantom(4, "contrast", shape=SHAPE, atlas=atlas, donors=[atlas, wide], mix=1.0)
    assert mixed.anatomy == "mouse_a"
    assert mixed.borrowed == {o: "mouse_wide" for o in ("liver", "lungs", "kidneys", "heart")}
    assert _spread(mixed.labels, "heart") > 1.6 * _spread(plain.labels, "heart")  # the donor's wide heart
    ratio = mixed.organ_volumes()["heart"] / plain.organ_volumes()["heart"]
    assert 0.8 < ratio < 1.25  # this map's heart volume, not the donor's 1.7 times
    assert np.linalg.norm(_centre(mixed.labels, "heart") - _centre(plain.labels, "heart")) < 2.0  # voxels
    for organ in ("bladder", "intestine"):  # not in the map: the ellipsoid model's, as without donors
        assert dice(mixed.labels == CT_ORGANS[organ], plain.labels == CT_ORGANS[organ]) > 0.7, organ
    halves = [ct_phantom(seed, "native", shape=SHAPE, atlas=atlas, donors=[wide], mix=0.5).borrowed
              for seed in range(8)]
    assert 0 < sum(map(len, halves)) < 4 * len(halves)  # some organs borrowed, not every one
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="mix must be between 0 and 1"):
            ct_phantom(4, "native", shape=SHAPE, atlas=atlas, donors=[wide], mix=bad)

    out = tmp_path / "mixed"
    assert main(["synth", "ct", "--out", str(out), "--count", "1", "--seed", "4", "--shape", ",".join(map(str, SHAPE)),
                 "--atlas", str(maps["a"]), "--atlas", str(wide_path := tmp_path / "other" / "mouse_wide.nii.gz"),
                 "--mix-organs", "1", "--condition", "contrast"]) == 0
    assert "1/1 seed 4 (mouse_a, liver of mouse_wide" in capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["phantoms"]["phantom_0004"] == {"seed": 4, "anatomy": "mouse_a", "borrowed": mixed.borrowed,
                                                "voids": "viscera"}
    assert np.array_equal(tifffile.imread(out / "labels" / "phantom_0004.tif"), mixed.labels)
    lone = ["synth", "ct", "--out", str(tmp_path / "lone"), "--atlas", "ellipsoids", "--atlas", str(maps["a"]),
            "--atlas", str(wide_path), "--hold-out", "mouse_wide", "--mix-organs", "0.5"]
    assert main(lone) == 2
    assert "give at least two maps (after --hold-out), got 1" in capsys.readouterr().err
    assert main(["synth", "ultrasound", "--out", str(tmp_path / "us"), "--mix-organs", "0.5"]) == 2
    assert "--variation, --mix-organs and --voids are for `synth ct` only" in capsys.readouterr().err


def test_room_the_maps_organs_leave_is_fat_and_soft_tissue(maps, tmp_path, capsys):
    """Where the ellipsoid organs were and the map's are not, a phantom's body cavity holds a mesh
    of fat and soft tissue, not a block of muscle shaped like the replaced organ. ``voids="muscle"``
    draws the earlier phantoms (the same code path; its images and labels matched the hashes of
    the code before the change when this was written), and the two differ only in and near
    those places."""
    atlas = read_atlas(maps["a"])
    mine = [CT_ORGANS[o] for o in atlas.organs]
    for seed in range(2):
        plain = ct_phantom(seed, "native", atlas=None)
        mesh = ct_phantom(seed, "native", atlas=atlas)
        block = ct_phantom(seed, "native", atlas=atlas, voids="muscle")
        assert (mesh.voids, block.voids) == ("viscera", "muscle")
        assert np.array_equal(mesh.labels, block.labels)  # the same anatomy and truth
        room = np.isin(plain.labels, mine) & (mesh.labels == 0)
        room &= ~ndi.binary_dilation(mesh.labels > 0, iterations=3)  # away from the organs' edges and fat
        assert room.sum() > 500, seed
        assert np.mean(block.image[room] < -40) < 0.1  # solid soft tissue
        assert 0.3 < np.mean(mesh.image[room] < -40) < 0.7, seed  # about half fat
        assert np.mean(mesh.image[room] > 0) > 0.25, seed  # and the rest soft tissue
        # elsewhere the same voxels: beyond the render's blur, six voxels out, the images are equal
        elsewhere = ~ndi.binary_dilation(np.isin(plain.labels, mine) & (mesh.labels == 0), np.ones((3, 3, 3)), 6)
        assert elsewhere.mean() > 0.5 and np.array_equal(mesh.image[elsewhere], block.image[elsewhere])
    with pytest.raises(ValueError, match="voids must be one of"):
        ct_phantom(0, "native", shape=SHAPE, atlas=atlas, voids="fat")

    out = tmp_path / "block"
    assert main(["synth", "ct", "--out", str(out), "--seed", "3", "--shape", ",".join(map(str, SHAPE)),
                 "--atlas", str(maps["a"]), "--voids", "muscle"]) == 0
    assert np.array_equal(tifffile.imread(out / "images" / "phantom_0003.tif"),
                          ct_phantom(3, "native", shape=SHAPE, atlas=atlas, voids="muscle").image)
    assert json.loads((out / "dataset.json").read_text())["phantoms"]["phantom_0003"]["voids"] == "muscle"
    assert main(["synth", "ct", "--out", str(tmp_path / "plain"), "--voids", "muscle"]) == 2  # ellipsoids alone
    assert "--voids fills the room the --atlas maps' organs leave; give --atlas too" in capsys.readouterr().err


def test_rosenhain_maps_when_present():
    folder = SHARED_DATA / "rosenhain"
    if not folder.is_dir():
        pytest.skip("../shared/data/rosenhain is not beside this checkout")
    pool = load_atlases([folder])
    assert {a.name: set(a.organs) >= {"heart", "liver", "kidneys"} for a in pool} == {
        "CT280_organs": True, "mouse_b_organs": True, "mouse_c_organs": True}
    mouse_b = next(a for a in pool if a.name == "mouse_b_organs")
    assert {"stomach", "spleen", "kidneys"} <= set(mouse_b.organs)  # left and right kidney merged
    scan = ct_phantom(0, "contrast", shape=(100, 56, 76), atlas=mouse_b)
    assert set(np.unique(scan.labels)) == {0, *CT_ORGANS.values()}
