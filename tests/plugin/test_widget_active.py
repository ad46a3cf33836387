"""The active-learning widget: send a correction, rank, retrain in a child process, versions."""

import numpy as np
import pytest

from napari_mousesegment.active.rounds import RoundState
from napari_mousesegment.data.phantom_us import ultrasound_series
from napari_mousesegment.inference.ultrasound import segment_frames
from napari_mousesegment.plugin.layers import us_labels_layer
from napari_mousesegment.store.load import load_unet

PLUGIN = "napari-mousesegment"
BASE = "unet-heart-synthetic"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "home"))  # the worker process inherits it
    return tmp_path / "home"


def new_scanner_correction(viewer):
    """Frames from a "new scanner" the shipped heart model misses, its prediction as a layer, and 8
    frames of it corrected to the truth as a user would: (image layer, labels layer, truth)."""
    series = ultrasound_series(seed=270)
    frames = (np.clip(series.frames * 0.5 + 70, 0, 255).astype(np.uint8) * (series.frames > 0)).astype(np.uint8)
    _, pred = segment_frames(load_unet(BASE)[0], frames)
    image = viewer.add_image(frames, name="new scanner")
    data, kwargs, _ = us_labels_layer(pred, "heart", "heart instances")
    kwargs["metadata"].update(model=BASE, prediction=pred.copy())
    labels = viewer.add_labels(data, **kwargs)
    truth = series.labels["heart"]
    for k in [k for k in range(35) if truth[k].any()][:8]:  # the user corrects 8 frames
        labels.data[k] = truth[k]
    return image, labels, truth


def test_correct_send_rank_retrain_and_roll_back(make_napari_viewer, qtbot, home, tmp_path):
    viewer = make_napari_viewer()
    image, labels, truth = new_scanner_correction(viewer)
    corrected = labels.data.copy()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotation & active learning")
    widget.queue_dir = tmp_path / "queue"
    widget._image.value, widget._labels.value = image, labels
    assert widget._organ.value == "heart" and widget._model.value == BASE  # taken from the layer
    widget.send()
    assert widget._items.data.to_list() == [[1, "pending", "heart", BASE, 8]]

    job = widget.rank_frames()
    qtbot.waitUntil(job.done, timeout=60_000)
    assert job.result() is widget.ranking and widget._progress.value == widget._progress.max > 1  # progress shown
    frame = int(widget._next.choices[0].split()[1]) - 1
    assert frame not in [k for k in range(35) if truth[k].any()][:8]  # corrected frames are left out
    widget._next.value = widget._next.choices[0]
    assert viewer.dims.current_step[0] == frame

    widget.epochs = 10  # a short round: the spin box reaches the worker as --epochs
    job = widget.retrain()
    assert not widget._retrain.enabled and widget._cancel.enabled
    qtbot.waitUntil(job.done, timeout=240_000)
    assert job.result().exit_code == 0 and widget.last_round.epochs == 10
    assert widget.last_round.state is RoundState.DONE and widget.last_round.promoted, widget.status
    assert widget._plot.points  # the loss arrived epoch by epoch
    assert widget._items.data.to_list()[0][1] == "used"
    qtbot.waitUntil(lambda: widget.repredicted is not None, timeout=60_000)  # a promotion re-predicts
    new = widget.repredicted.data > 0
    dice = 2 * (new & (truth > 0)).sum() / (new.sum() + (truth > 0).sum())
    assert dice > 0.7 and "v1" in widget.repredicted.name
    assert labels in viewer.layers and np.array_equal(labels.data, corrected)  # the user's layer is left alone

    widget._version_model.value = f"{BASE}-lab"
    assert widget._versions.data.to_list()[1][:2] == ["1", "*"]
    widget._rollback.clicked.emit()  # what the Roll back button does
    assert load_unet(f"{BASE}-lab")[2]["version"] == "0" and widget._versions.data.to_list()[0][1] == "*"


def test_cancelling_a_round_kills_the_child_and_keeps_the_items_pending(make_napari_viewer, qtbot, home, tmp_path):
    series = ultrasound_series(seed=271)
    viewer = make_napari_viewer()
    image = viewer.add_image(series.frames, name="frames")
    labels = viewer.add_labels(series.labels["heart"], name="hearts", metadata={"organ": "heart"})
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotation & active learning")
    widget.queue_dir = tmp_path / "queue"
    assert widget.send(image, labels, model=BASE) is not None
    job = widget.retrain()
    qtbot.waitUntil(lambda: widget._progress.value >= 1, timeout=120_000)  # a round is under way
    assert "ETA" in widget.status and widget._send.enabled and not widget._rank.enabled
    assert widget.send(image, labels, model=BASE) is not None  # corrections can be queued meanwhile
    widget.cancel()
    qtbot.waitUntil(job.done, timeout=60_000)
    assert isinstance(job.exception(), InterruptedError) and "cancel" in widget.status
    assert [i.state for i in widget.items()] == ["pending", "pending"] and widget._retrain.enabled
    assert "current version" in widget.status


def test_sending_bad_input_names_the_problem_and_queues_nothing(make_napari_viewer, home, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((4, 20, 20), np.uint8))
    labels = viewer.add_labels(np.zeros((4, 20, 20), np.uint8))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotation & active learning")
    widget.queue_dir = tmp_path / "queue"
    shown = []
    monkeypatch.setattr("napari_mousesegment.plugin.widgets.active.show_error", shown.append)
    assert widget.send(image, labels) is None
    assert shown and "empty" in shown[0] and widget.queue.items() == []


def test_pointing_at_a_queue_folder_shows_its_items_and_epochs_stay_apart(make_napari_viewer, home, tmp_path):
    from napari_mousesegment.active.queue import Queue

    frames = np.zeros((3, 16, 16), np.uint8)
    labels = frames.copy()
    labels[1, 4:9, 4:9] = 1
    Queue(tmp_path / "queue").add(frames, labels, "ultrasound", organ="heart", model=BASE)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotation & active learning")
    widget.queue_dir = tmp_path / "queue"  # the table follows the folder at once
    assert [row[:3] for row in widget._items.data.to_list()] == [[1, "pending", "heart"]]
    assert widget.epochs == 40
    widget.epochs = 7
    assert widget.epochs == 7 and widget.queue_dir == tmp_path / "queue"
