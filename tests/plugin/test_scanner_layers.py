"""Scanner files in napari: micro-CT TIFFs, DICOM, SkyScan and OME-Zarr open to scale, lazily when large,
and the micro-CT widget segments a lazy, multiscale or uncalibrated layer."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.io.omezarr import write_omezarr
from napari_mousesegment.io.tiff import write_stack, write_tiff
from napari_mousesegment.plugin import reader
from napari_mousesegment.plugin.reader import get_composite_reader, get_scan_reader
from tests.skyscan_folder import write_skyscan_folder

PLUGIN = "napari-mousesegment"


@pytest.fixture(scope="module")
def scan():
    return ct_phantom(seed=7, condition="contrast", shape=(80, 56, 64))


def test_a_micro_ct_tiff_is_claimed_and_an_ultrasound_stack_is_not(tmp_path, scan):
    write_tiff(tmp_path / "scan.tif", scan.image, scan.spacing)
    write_stack(tmp_path / "frames.tif", np.zeros((5, 20, 30), np.uint8))
    assert get_scan_reader(str(tmp_path / "frames.tif")) is None
    [(data, kwargs, kind)] = get_scan_reader(str(tmp_path / "scan.tif"))(str(tmp_path / "scan.tif"))
    assert kind == "image" and kwargs["scale"] == pytest.approx(scan.spacing) and kwargs["units"] == ("mm",) * 3
    assert np.array_equal(data, scan.image)


def test_large_scans_open_lazily(tmp_path, scan, monkeypatch):
    write_tiff(tmp_path / "scan.tif", scan.image, scan.spacing)
    monkeypatch.setattr(reader, "LAZY_BYTES", 1000)  # as if the file were several GB
    [(data, _, _)] = reader.read_scan_layers(str(tmp_path / "scan.tif"))
    assert isinstance(data, da.Array) and np.array_equal(data[40].compute(), scan.image[40])


def test_ome_zarr_opens_multiscale_and_skyscan_is_not_taken_for_a_composite(tmp_path, scan):
    write_omezarr(tmp_path / "scan.zarr", scan.image, scan.spacing, levels=3)
    [(levels, kwargs, _)] = get_scan_reader(str(tmp_path / "scan.zarr"))(str(tmp_path / "scan.zarr"))
    assert kwargs["multiscale"] and [lv.shape for lv in levels] == [(80, 56, 64), (40, 28, 32), (20, 14, 16)]
    raw = (scan.image.astype(np.int32) + 1024).astype(np.uint16)
    write_skyscan_folder(tmp_path / "mouse", raw, 280.0, fmt="png")
    assert get_composite_reader(str(tmp_path / "mouse")) is None
    [(data, kwargs, _)] = get_scan_reader(str(tmp_path / "mouse"))(str(tmp_path / "mouse"))
    assert data.dtype == np.uint16 and kwargs["metadata"]["hu"] is False  # shown as stored; the widget calibrates
    assert kwargs["scale"] == pytest.approx((0.28,) * 3)


def test_widget_segments_a_lazy_multiscale_layer_and_calibrates_grey_values(make_napari_viewer, tmp_path, scan):
    from napari_mousesegment.plugin.widgets.ct import CTWidget

    viewer = make_napari_viewer()
    write_omezarr(tmp_path / "scan.zarr", scan.image, scan.spacing, levels=2)
    [zarr_layer] = viewer.open(str(tmp_path / "scan.zarr"), plugin=PLUGIN)
    assert zarr_layer.multiscale
    widget = CTWidget(viewer)
    lazy = widget.run(zarr_layer, model="mosnet-synthetic", condition="contrast").wait(300)
    raw = (scan.image.astype(np.int32) + 1024).astype(np.uint16)
    write_skyscan_folder(tmp_path / "mouse", raw, 280.0, fmt="tif")
    [grey] = viewer.open(str(tmp_path / "mouse"), plugin=PLUGIN)
    calibrated = widget.run(grey, hu=(24.0, 1024.0)).wait(300)
    assert np.array_equal(lazy.data, calibrated.data) and len(np.unique(lazy.data)) > 5
    assert widget.hu == (24.0, 1024.0)
    with pytest.raises(ValueError, match="--hu"):
        widget.hu = "water"


def test_an_uncalibrated_layer_is_refused_until_a_calibration_is_chosen(make_napari_viewer, tmp_path, scan, monkeypatch):
    from napari_mousesegment.plugin.widgets.ct import CTWidget

    viewer = make_napari_viewer()
    write_skyscan_folder(tmp_path / "mouse", (scan.image.astype(np.int32) + 1024).astype(np.uint16), 280.0, fmt="tif")
    [grey] = viewer.open(str(tmp_path / "mouse"), plugin=PLUGIN)
    widget = CTWidget(viewer)
    shown = []
    monkeypatch.setattr("napari_mousesegment.plugin.widgets.ct.show_error", shown.append)
    assert widget.run(grey, model="mosnet-synthetic", condition="contrast") is None
    assert "not in HU" in shown[0] and "grey values" in shown[0]


def test_predicted_labels_tif_opens_as_named_organ_labels(tmp_path, scan):
    import json

    (tmp_path / "case").mkdir()
    write_tiff(tmp_path / "case" / "labels.tif", scan.labels, scan.spacing)
    (tmp_path / "case" / "labels.json").write_text(json.dumps({"organs": {"heart": 1, "liver": 3}}))
    [(data, kwargs, kind)] = get_scan_reader(str(tmp_path / "case" / "labels.tif"))(str(tmp_path / "case" / "labels.tif"))
    assert kind == "labels" and np.array_equal(data, scan.labels) and kwargs["scale"] == pytest.approx(scan.spacing)
    assert kwargs["metadata"]["organs"] == {"heart": 1, "liver": 3}
