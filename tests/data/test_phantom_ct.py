import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.organs import CT_ORGANS

from ..conftest import shared_file

SMALL = (48, 32, 40)

# Plausible organ volumes in mm³ for an adult mouse (Rosenhain label map: heart 265, lungs 470,
# liver 1882, kidneys 437) with room for the seed-to-seed variation.
VOLUME_RANGES = {
    "heart": (120, 400), "lungs": (300, 900), "liver": (1000, 2600), "kidneys": (200, 650),
    "spleen": (30, 200), "bladder": (30, 600), "intestine": (400, 2000), "stomach": (80, 1000),
    "bone": (300, 1200),
}


def _mean(scan, organ):
    return float(scan.image[scan.labels == CT_ORGANS[organ]].mean())


def test_shape_dtype_and_spacing(ct_native):
    assert ct_native.image.shape == (200, 110, 150)
    assert ct_native.image.dtype == np.int16 and ct_native.labels.dtype == np.uint8
    assert ct_native.spacing == (0.28, 0.28, 0.28)
    assert set(np.unique(ct_native.labels)) == {0, *CT_ORGANS.values()}


@pytest.mark.parametrize("organ", list(VOLUME_RANGES))
def test_organ_volume_plausible(ct_native, organ):
    low, high = VOLUME_RANGES[organ]
    assert low <= ct_native.organ_volumes()[organ] <= high


def test_liver_is_largest_soft_organ(ct_native):
    volumes = ct_native.organ_volumes()
    soft = {k: v for k, v in volumes.items() if k != "bone"}
    assert max(soft, key=soft.get) == "liver"


def test_two_kidneys_either_side_of_spine(ct_native):
    kidneys = ct_native.labels == CT_ORGANS["kidneys"]
    components, n = ndi.label(kidneys, structure=np.ones((3, 3, 3)))
    assert n == 2
    centres_x = [c[2] for c in ndi.center_of_mass(kidneys, components, [1, 2])]
    spine_x = np.argwhere(ct_native.labels == CT_ORGANS["bone"])[:, 2].mean()
    assert min(centres_x) < spine_x < max(centres_x)


def test_native_hu_ranges(ct_native):
    scan = ct_native
    assert np.median(scan.image[:, :5, :5]) < -900  # air around the animal
    assert -650 < _mean(scan, "lungs") < -200
    assert _mean(scan, "bone") > 500
    soft = [_mean(scan, o) for o in ("heart", "liver", "kidneys", "spleen")]
    assert all(0 < v < 100 for v in soft)
    assert max(soft) - min(soft) < 30  # native soft organs are barely distinguishable
    assert scan.image[scan.labels == CT_ORGANS["liver"]].std() > 20  # noise like a real scan


def test_contrast_brightens_liver_and_spleen_only(ct_native, ct_contrast):
    assert np.array_equal(ct_native.labels, ct_contrast.labels)  # same animal
    for organ in ("liver", "spleen"):
        assert _mean(ct_contrast, organ) > 200
        assert _mean(ct_contrast, organ) - _mean(ct_native, organ) > 150
    for organ in ("kidneys", "bladder", "lungs"):
        assert abs(_mean(ct_contrast, organ) - _mean(ct_native, organ)) < 20


def test_deterministic_by_seed():
    a, b = ct_phantom(3, shape=SMALL), ct_phantom(3, shape=SMALL)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)


def test_anatomy_varies_with_seed():
    volumes = [ct_phantom(seed, shape=SMALL).organ_volumes() for seed in (1, 2)]
    assert volumes[0]["liver"] != volumes[1]["liver"]
    assert not np.array_equal(ct_phantom(1, shape=SMALL).labels, ct_phantom(2, shape=SMALL).labels)


def test_hollow_organs_fill_and_empty():
    """Stomach and bladder volumes vary between animals as a map's do (ORGAN_VOLUME: x0.5-2.5 and
    x0.4-2.5), not by the +-10 % per axis of the solid organs; the heart varies less."""
    volumes = [ct_phantom(seed, shape=(100, 55, 75), spacing=0.56).organ_volumes() for seed in range(8)]
    spread = {organ: max(v[organ] for v in volumes) / min(v[organ] for v in volumes)
              for organ in ("stomach", "bladder", "heart")}
    assert spread["stomach"] > 2.0 and spread["bladder"] > 2.0, spread
    assert spread["heart"] < 1.6, spread


def test_layout_and_proportions_match_real_rosenhain_map(ct_native):
    pygff = pytest.importorskip("pygff")
    real = pygff.load(str(shared_file("rosenhain", "CT280_organs.segff")))
    info = real.info.meta["Project info"]
    names = dict(zip(map(int, info["ClassIndices"].split("|")), info["ClassNames"].split("|")))
    labels = np.asarray(real).squeeze()[::-1]  # the file runs tail to head along axis 0
    real_by_name = {n.lower(): labels == v for v, n in names.items()}
    real_mask = {"heart": real_by_name["heart"], "lungs": real_by_name["lung"],
                 "liver": real_by_name["liver"], "kidneys": real_by_name["kidneys"]}
    ours = {o: ct_native.labels == CT_ORGANS[o] for o in real_mask}

    def z_centre(mask):
        return np.argwhere(mask)[:, 0].mean() / mask.shape[0]

    for masks in (real_mask, ours):  # head-to-tail order: thorax, then liver, then kidneys
        assert z_centre(masks["heart"]) < z_centre(masks["liver"]) < z_centre(masks["kidneys"])
        assert z_centre(masks["lungs"]) < z_centre(masks["liver"])
    for organ in ("liver", "lungs", "kidneys"):
        real_ratio = real_mask[organ].sum() / real_mask["heart"].sum()
        our_ratio = ours[organ].sum() / ours["heart"].sum()
        assert 0.5 < our_ratio / real_ratio < 2.0, organ


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"condition": "arterial"}, "condition"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"shape": (64, 64)}, "three integers"),
        ({"shape": (10, 64, 64)}, "too small"),
        ({"shape": (2000, 64, 64)}, "too large"),
        ({"spacing": 0}, "spacing"),
        ({"spacing": float("nan")}, "spacing"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ct_phantom(**kwargs)
