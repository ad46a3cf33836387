"""The ultrasound widget in a real viewer: split, segment with the shipped U-Nets, threshold, ROIs."""

import numpy as np
import pytest
import tifffile

from napari_mousesegment.data.phantom_us import ultrasound_series
from napari_mousesegment.inference.ultrasound import instances
from napari_mousesegment.io.composites import montage
from napari_mousesegment.io.roi import read_rois, roi_frame

PLUGIN = "napari-mousesegment"


@pytest.fixture(scope="module")
def series():
    return ultrasound_series(seed=260)


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fetal ultrasound")
    return widget


def test_montage_layer_is_split_segmented_thresholded_and_exported(make_napari_viewer, qtbot, series, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(montage(series.frames), name="litter")
    widget = _dock(viewer)
    widget.split()
    assert widget.frames_layer.data.shape == (35, 240, 320)
    assert np.array_equal(widget.frames_layer.data, series.frames) and "5x7" in widget._status.value
    widget._use["placenta"].value = False
    widget.run()
    qtbot.waitUntil(lambda: set(widget.organ_layers) == {"heart", "liver"}, timeout=120_000)
    heart = widget.organ_layers["heart"]
    assert heart.data.shape == (35, 240, 320) and heart.data.max() >= 1
    truth = series.labels["heart"] > 0
    dice = 2 * ((heart.data > 0) & truth).sum() / ((heart.data > 0).sum() + truth.sum())
    assert dice > 0.8
    before = int((heart.data > 0).sum())
    widget.set_threshold("heart", 0.2)  # lower threshold: more pixels, from the kept probabilities
    assert int((heart.data > 0).sum()) > before
    written = widget.export_rois(tmp_path)
    assert sorted(p.name for p in written) == ["heart_RoiSet.zip", "liver_RoiSet.zip"]
    assert np.array_equal(tifffile.imread(tmp_path / "frames.tif"), series.frames)  # what the ROIs land on
    readme = (tmp_path / "README.txt").read_text()
    assert "liver_RoiSet.zip" in readme and "placenta" not in readme and "_labels.tif" not in readme
    rois = read_rois(tmp_path / "heart_RoiSet.zip")
    frames_with_hearts = {k for k in range(35) if heart.data[k].max() > 0}
    assert {roi_frame(r) for r in rois} == frames_with_hearts
    imported = widget.import_rois(tmp_path / "heart_RoiSet.zip")
    assert np.array_equal(imported.data > 0, heart.data > 0)


def test_rgb_montage_is_converted_and_a_stack_layer_is_used_as_it_is(make_napari_viewer, series):
    viewer = make_napari_viewer()
    gray = montage(series.frames)
    layer = viewer.add_image(np.stack([gray] * 3, -1), name="rgb", rgb=True)
    widget = _dock(viewer)
    widget._source.value = layer
    widget.split()
    assert np.array_equal(widget.frames_layer.data, series.frames) and "RGB converted" in widget._status.value
    stack = viewer.add_image(series.frames, name="stack")
    widget._source.value = stack
    widget.split()
    assert widget.frames_layer is stack


def test_cancel_and_bad_input_leave_layers_alone(make_napari_viewer, qtbot, series, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(series.frames, name="stack")
    widget = _dock(viewer)
    job = widget.run()
    assert job.cancel()  # the job handle cancels as the button does
    qtbot.waitUntil(lambda: widget._run.enabled, timeout=60_000)
    assert isinstance(job.exception(), InterruptedError) and not job.cancel()
    assert [layer.name for layer in viewer.layers] == ["stack"] and "cancel" in widget._status.value
    shown = []
    monkeypatch.setattr("napari_mousesegment.plugin.widgets.ultrasound.show_error", shown.append)
    viewer.add_image(np.zeros((4, 5, 6, 7), np.uint8), name="4d")
    widget._source.value = viewer.layers["4d"]
    widget.frames_layer = None
    widget.split()
    assert shown and "4d" in shown[-1]
    widget._grid.value = "five by seven"
    widget.split()
    assert "grid must look like 5x7" in shown[-1]


def test_a_threshold_change_is_undoable_and_never_overwrites_painted_corrections(make_napari_viewer, series):
    viewer = make_napari_viewer()
    widget = _dock(viewer)
    widget.split(viewer.add_image(series.frames, name="stack"))
    heart = widget.run(organs=["heart"]).wait(120)["heart"]
    predicted = heart.data.copy()
    assert widget.set_threshold("heart", 0.2) is heart  # not edited: changed in place...
    assert (heart.data > 0).sum() > (predicted > 0).sum()
    heart.undo()  # ...as one step that Ctrl+Z undoes
    assert np.array_equal(heart.data, predicted)

    heart.paint((5, 120, 160), 7)  # the user paints a correction (napari's brush, with undo history)
    painted = heart.data.copy()
    assert painted[5, 120, 160] == 7
    new = widget.set_threshold("heart", 0.6)
    assert new is not heart and new in viewer.layers and heart in viewer.layers
    assert np.array_equal(heart.data, painted)  # the painted layer is exactly as the user left it
    expected = instances(widget._probabilities["heart"], 0.6, widget._min_size["heart"])
    assert np.array_equal(new.data, expected) and expected.any()
    assert widget.organ_layers["heart"] is new and "new layer" in widget.status


def test_a_second_run_keeps_an_edited_layer_and_replaces_an_untouched_one(make_napari_viewer, series):
    viewer = make_napari_viewer()
    widget = _dock(viewer)
    widget.split(viewer.add_image(series.frames, name="stack"))
    first = widget.run(organs=["heart"]).wait(120)["heart"]
    second = widget.run(organs=["heart"]).wait(120)["heart"]
    assert first not in viewer.layers and second in viewer.layers  # nothing of the user's was in it
    second.paint((3, 100, 100), 9)
    painted = second.data.copy()
    third = widget.run(organs=["heart"]).wait(120)["heart"]
    assert second in viewer.layers and third in viewer.layers and third is not second
    assert np.array_equal(second.data, painted)
    assert [layer.name for layer in viewer.layers].count(second.name) == 1
    other = widget.run(viewer.add_image(series.frames[:5], name="another series"), organs=["heart"]).wait(120)
    assert third in viewer.layers and other["heart"] in viewer.layers  # another image's result is kept too
