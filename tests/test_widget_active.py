"""The active-learning widget: send a correction, rank, retrain in a child process, versions."""

import numpy as np
import pytest

from napari_mousesegment.data.phantom_us import ultrasound_series
from napari_mousesegment.layers import us_labels_layer
from napari_mousesegment.models.store import load_unet
from napari_mousesegment.models.versions import rollback
from napari_mousesegment.us_jobs import segment_frames

PLUGIN = "napari-mousesegment"
BASE = "unet-heart-synthetic"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "home"))  # the worker process inherits it
    return tmp_path / "home"


def test_correct_send_rank_retrain_and_roll_back(make_napari_viewer, qtbot, home, tmp_path):
    series = ultrasound_series(seed=270)
    frames = (np.clip(series.frames * 0.5 + 70, 0, 255).astype(np.uint8) * (series.frames > 0)).astype(np.uint8)
    model, _, _ = load_unet(BASE)
    _, pred = segment_frames(model, frames)
    viewer = make_napari_viewer()
    image = viewer.add_image(frames, name="new scanner")
    data, kwargs, _ = us_labels_layer(pred, "heart", "heart instances")
    kwargs["metadata"].update(model=BASE, prediction=pred.copy())
    labels = viewer.add_labels(data, **kwargs)
    truth = series.labels["heart"]
    for k in [k for k in range(35) if truth[k].any()][:8]:  # the user corrects 8 frames
        labels.data[k] = truth[k]
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotation & active learning")
    widget._queue_dir.value = str(tmp_path / "queue")
    widget._image.value, widget._labels.value = image, labels
    assert widget._organ.value == "heart" and widget._model.value == BASE  # taken from the layer
    widget.send()
    assert widget._items.data.to_list() == [[1, "pending", "heart", BASE, 8]]

    widget.rank_frames()
    qtbot.waitUntil(lambda: bool(widget._next.choices), timeout=60_000)
    frame = int(widget._next.choices[0].split()[1]) - 1
    assert frame not in [k for k in range(35) if truth[k].any()][:8]  # corrected frames are left out
    widget._next.value = widget._next.choices[0]
    assert viewer.dims.current_step[0] == frame

    widget.retrain()
    qtbot.waitUntil(lambda: widget.process is None, timeout=240_000)
    assert widget.last_round["state"] == "done", widget._round.value
    assert widget._plot.points  # the loss arrived epoch by epoch
    assert widget._items.data.to_list()[0][1] == "used"
    assert widget.last_round["message"] == "promoted"
    qtbot.waitUntil(lambda: widget.repredicted is not None, timeout=60_000)
    new = widget.repredicted.data > 0
    dice = 2 * (new & (truth > 0)).sum() / (new.sum() + (truth > 0).sum())
    assert dice > 0.7 and "v1" in widget.repredicted.name

    widget._version_model.value = f"{BASE}-lab"
    assert widget._versions.data.to_list()[1][:2] == ["1", "*"]
    widget._switch(rollback, f"{BASE}-lab")  # what the Roll back button does
    assert load_unet(f"{BASE}-lab")[2]["version"] == "0"


def test_sending_bad_input_names_the_problem_and_queues_nothing(make_napari_viewer, home, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((4, 20, 20), np.uint8))
    labels = viewer.add_labels(np.zeros((4, 20, 20), np.uint8))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotation & active learning")
    widget._queue_dir.value = str(tmp_path / "queue")
    widget._image.value, widget._labels.value = image, labels
    shown = []
    monkeypatch.setattr("napari_mousesegment.widgets.active.show_error", shown.append)
    widget.send()
    assert shown and "empty" in shown[0] and widget.queue.items() == []
