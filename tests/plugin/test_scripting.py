"""Scripts drive the three widgets through their public methods alone, and wait or chain on results."""

import ast
import inspect
import runpy
from pathlib import Path

import numpy as np

from napari_mousesegment.io.roi import read_rois
from napari_mousesegment.plugin.widgets.base import Job

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "scripts" / "segment_in_napari.py"


def _private_attributes(source: str) -> list[str]:
    return [n.attr for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Attribute) and n.attr.startswith("_")]


def test_the_docs_script_touches_no_private_attribute():
    assert _private_attributes(SCRIPT.read_text()) == []


def test_the_docs_script_segments_both_modalities_and_writes_what_it_chains(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widgets = runpy.run_path(str(SCRIPT))["main"](viewer, tmp_path / "out")
    organs = widgets["ct"].wait(300)
    layers = widgets["ultrasound"].wait(300)
    assert "organs" in organs.name and organs.features["organ"].tolist()[0] == "background"
    assert (tmp_path / "out" / "volumes.csv").read_text().startswith("organ,volume_mm3,voxels")  # chained
    written = {p.name for p in (tmp_path / "out").glob("*_RoiSet.zip")}
    assert written == {f"{o}_RoiSet.zip" for o in ("heart", "liver", "placenta")} and set(layers) == {
        "heart", "liver", "placenta"}
    assert len(read_rois(tmp_path / "out" / "heart_RoiSet.zip")) > 10
    assert widgets["active"].queue_dir == tmp_path / "out" / "queue"


def drive_the_active_learning_widget(viewer, learning, frames, hearts, queue_dir):
    """What a script does with the active-learning widget: public calls only (checked below)."""
    learning.queue_dir = queue_dir
    hearts.paint((4, 120, 160), 9)  # a correction of the prediction
    item = learning.send(frames, hearts, organ="heart", model="unet-heart-synthetic")
    ranking = learning.rank_frames(frames).wait(120)
    return item, ranking, learning.items()


def test_the_active_learning_widget_is_driven_from_a_script(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "home"))
    assert _private_attributes(inspect.getsource(drive_the_active_learning_widget)) == []
    from napari_mousesegment import ultrasound_series

    viewer = make_napari_viewer()
    series = ultrasound_series(seed=5, n_frames=6)
    frames = viewer.add_image(series.frames, name="frames")
    _, us = viewer.window.add_plugin_dock_widget("napari-mousesegment", "Fetal ultrasound")
    us.split(frames)
    job = us.run(organs=["heart"])
    assert isinstance(job, Job)
    hearts = job.wait(120)["heart"]
    _, learning = viewer.window.add_plugin_dock_widget("napari-mousesegment", "Annotation & active learning")
    item, ranking, items = drive_the_active_learning_widget(viewer, learning, frames, hearts, tmp_path / "q")
    assert item is not None and item.touched == [4] and [i.id for i in items] == [item.id]
    assert sorted(k for k, _ in ranking) == [0, 1, 2, 3, 5]  # the corrected frame is left out
    assert np.all(np.diff([s for _, s in ranking]) <= 0)  # the most uncertain first
