"""The active-learning widget's micro-CT corrections and its default, the local queue folder.

Helpers here (layers as the segmentation widgets leave them) serve test_widget_active_server.py too.
"""

import numpy as np
import pytest

from napari_mousesegment.active.queue import Queue
from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.data.phantom_us import ultrasound_series
from napari_mousesegment.plugin.layers import ct_labels_layer, us_labels_layer

PLUGIN = "napari-mousesegment"
BASE = "unet-heart-synthetic"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MOUSESEGMENT_OUTBOX", str(tmp_path / "outbox"))
    return tmp_path / "home"


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotation & active learning")
    return widget


def _shown(widget) -> bool:
    """Whether the widget is shown when its dock is (the test viewer's window itself is hidden)."""
    return not widget.native.isHidden()


def _ultrasound(viewer, seed: int = 300):
    """A frame stack and a heart layer as the ultrasound widget leaves it, corrected on 5 frames."""
    series = ultrasound_series(seed, n_frames=35, frame_shape=(64, 80))
    image = viewer.add_image(series.frames, name="frames")
    truth = series.labels["heart"]
    prediction = truth.copy()
    corrected = [k for k in range(35) if truth[k].any()][:5]
    prediction[corrected] = 0  # the model missed the heart on these frames; the user painted it
    data, kwargs, _ = us_labels_layer(truth.copy(), "heart", "heart instances")
    kwargs["metadata"].update(model=BASE, prediction=prediction)
    return image, viewer.add_labels(data, **kwargs), corrected


def _ct(viewer, *, with_condition: bool = True):
    """A micro-CT scan and the organ layer the micro-CT widget makes, corrected on 4 slices."""
    scan = ct_phantom(seed=301, condition="contrast", shape=(24, 40, 48))
    meta = {"condition": scan.condition, "spacing_mm": scan.spacing} if with_condition else {}
    image = viewer.add_image(scan.image, name="scan", scale=scan.spacing, units=("mm",) * 3, metadata=meta)
    prediction = scan.labels.copy()
    touched = [k for k in range(len(prediction)) if prediction[k].any()][3:7]
    prediction[touched] = 0
    data, kwargs, _ = ct_labels_layer(scan.labels.copy(), scan.organs, scan.spacing, "scan organs (mosnet-synthetic)")
    kwargs["metadata"].update(model="mosnet-synthetic", spacing_mm=tuple(scan.spacing), prediction=prediction,
                              source="scan")
    if with_condition:
        kwargs["metadata"]["condition"] = scan.condition
    return scan, image, viewer.add_labels(data, **kwargs), touched


# -- micro-CT corrections, local queue ---------------------------------------------------------
def test_a_micro_ct_correction_goes_to_the_local_queue_with_its_spacing_and_condition(
        make_napari_viewer, home, tmp_path):
    viewer = make_napari_viewer()
    scan, image, labels, touched = _ct(viewer)
    widget = _dock(viewer)
    widget.queue_dir = tmp_path / "queue"
    widget._image.value, widget._labels.value = image, labels
    assert widget.kind == "ct" and widget._condition.value == "contrast"  # read from the layer
    assert widget._model.value == "mosnet-synthetic" and not _shown(widget._organ) and _shown(widget._condition)
    item = widget.send()
    assert item is not None and item.kind == "ct" and item.condition == "contrast" and item.organ is None
    assert item.spacing == pytest.approx(scan.spacing) and item.touched == touched
    assert (item.model, item.model_version) == ("mosnet-synthetic", "3") and np.array_equal(item.labels(), scan.labels)
    assert np.array_equal(item.image(), scan.image)
    assert widget._items.data.to_list() == [[1, "pending", "contrast", "mosnet-synthetic", 4]]


def test_without_a_recorded_condition_the_user_picks_it(make_napari_viewer, home, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    scan, image, labels, _ = _ct(viewer, with_condition=False)
    widget = _dock(viewer)
    widget.queue_dir = tmp_path / "queue"
    shown = []
    monkeypatch.setattr("napari_mousesegment.plugin.widgets.active.show_error", shown.append)
    assert widget.send(image, labels) is None  # the kind is known (spacing), the condition is not
    assert widget.kind == "ct" and widget._condition.value is None
    assert shown == [("not queued: scan organs (mosnet-synthetic): the layer does not say the scan's condition; "
                      "choose one")]
    item = widget.send(image, labels, condition="native")
    assert item.kind == "ct" and item.condition == "native" and item.spacing == pytest.approx(scan.spacing)
    assert [i.id for i in Queue(tmp_path / "queue").items()] == [item.id]


def test_local_folder_is_the_default_and_sends_ultrasound_as_before(make_napari_viewer, home, tmp_path):
    viewer = make_napari_viewer()
    image, labels, corrected = _ultrasound(viewer)
    widget = _dock(viewer)
    assert widget._server.mode.value == "local folder" and not _shown(widget._server.url)
    assert _shown(widget._queue_dir) and _shown(widget._organ) and not _shown(widget._condition)
    assert not widget._server.timer.isActive()  # nothing polls a server
    widget.queue_dir = tmp_path / "queue"
    item = widget.send(image, labels)
    assert widget.kind == "ultrasound"
    assert (item.kind, item.organ, item.model, item.touched) == ("ultrasound", "heart", BASE, corrected)
