"""Grey values to HU: measured air and water, or found in the histogram; refused when it cannot be."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.io.hu import auto_hu, hu_map, parse_hu


def test_parse_hu():
    assert parse_hu("auto") == "auto" and parse_hu(" AUTO ") == "auto"
    assert parse_hu("24,1024") == (24.0, 1024.0)
    for bad in ("1024,24", "1,1", "nan,1", "a,b", "1", "1,2,3", "inf,1e9"):
        with pytest.raises(ValueError, match="--hu"):
            parse_hu(bad)


def test_air_and_water_map_exactly():
    raw = np.array([24, 1024, 2024], np.uint16)
    assert np.array_equal(hu_map(raw, (24.0, 1024.0)).apply(raw), [-1000.0, 0.0, 1000.0])


def test_auto_finds_air_and_soft_tissue_in_an_8bit_export():
    scan = ct_phantom(seed=3, shape=(60, 40, 50))
    raw = np.clip((scan.image.astype(float) + 1000) * 0.12 + 7, 0, 255).astype(np.uint8)
    back = auto_hu(raw, "x.bmp").apply(raw)
    soft = np.isin(scan.labels, [1, 3, 4, 5])  # heart, liver, kidneys, spleen
    assert abs(np.median(back[soft] - scan.image[soft])) < 25  # HU


def test_auto_on_a_real_ct_slice():
    """pydicom's CT_small.dcm (a real CT slice): --hu auto on its stored values, against its own rescale."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    raw = ds.pixel_array[None].astype(np.float64)
    truth = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    back = auto_hu(raw).apply(raw)
    body = truth > -300
    assert np.median(np.abs(back - truth)[body]) < 30


def test_auto_refuses_what_it_cannot_calibrate():
    with pytest.raises(ValueError, match="one value"):
        auto_hu(np.full((3, 8, 8), 7, np.uint8), "flat.tif")
    body_only = np.random.default_rng(0).normal(1000, 5, (4, 32, 32))  # no air outside a body
    with pytest.raises(ValueError, match="body_only.tif: --hu auto"):
        auto_hu(body_only, "body_only.tif")
