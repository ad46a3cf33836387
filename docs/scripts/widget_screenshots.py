"""Screenshots of the widgets at work, for the docs: ``xvfb-run -a python docs/scripts/widget_screenshots.py``.

Runs docs/scripts/segment_in_napari.py's ``main`` in a real viewer, waits for both runs, and
saves docs/images/widget_ct.png and docs/images/widget_ultrasound.png.
"""

from __future__ import annotations

import runpy
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import napari
from qtpy.QtWidgets import QApplication

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "images"


def main() -> None:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    widgets = runpy.run_path(str(HERE / "segment_in_napari.py"))["main"](viewer, Path(tempfile.mkdtemp()))
    ct, us = widgets["ct"], widgets["ultrasound"]
    ct.wait(300)
    us.wait(300)
    _dock(viewer, "Annotation & active learning").hide()
    for layer in viewer.layers:
        layer.visible = layer.name.startswith(("micro-CT", "organs")) or "organs (" in layer.name
    viewer.dims.set_point(0, ct.result_layer.data.shape[0] * 0.28 * 0.45)
    _dock(viewer, "Fetal ultrasound").hide()
    _settle()
    iio.imwrite(OUT / "widget_ct.png", viewer.screenshot(canvas_only=False, flash=False))
    for layer in viewer.layers:
        layer.visible = layer.name.startswith("series 3") or layer.name.endswith("instances")
    _dock(viewer, "Fetal ultrasound").show()
    _dock(viewer, "Micro-CT segmentation").hide()
    viewer.reset_view()
    viewer.dims.set_point(0, 10)
    _settle()
    iio.imwrite(OUT / "widget_ultrasound.png", viewer.screenshot(canvas_only=False, flash=False))
    _active_learning(viewer, us, widgets["active"])
    viewer.close()
    print(f"screenshots written to {OUT}")


def _active_learning(viewer, us, al) -> None:
    """Correct the hearts of a few frames from the truth, queue them, rank, retrain, screenshot."""
    import os

    from napari_mousesegment import ultrasound_series

    os.environ["MOUSESEGMENT_HOME"] = tempfile.mkdtemp()  # leave the user's models alone
    truth = ultrasound_series(seed=3).labels["heart"]
    hearts = us.organ_layers["heart"]
    for k in [k for k in range(35) if truth[k].any()][:6]:
        hearts.data[k] = truth[k]
    _dock(viewer, "Fetal ultrasound").hide()
    _dock(viewer, "Annotation & active learning").show()
    al.queue_dir = tempfile.mkdtemp()
    al.send(viewer.layers["series 3"], hearts)
    al.rank_frames().wait()
    al.retrain().wait()
    print("round:", al.status)
    if al.last_round is not None and al.last_round.promoted:
        al.wait(120)  # the re-prediction with the promoted version
    al._version_model.value = al.last_round.model
    shown = ("series 3", al.repredicted.name if al.repredicted is not None else hearts.name)
    for layer in viewer.layers:
        layer.visible = layer.name in shown
    _settle()
    iio.imwrite(OUT / "widget_active.png", viewer.screenshot(canvas_only=False, flash=False))


def _dock(viewer, widget: str):
    """The dock of one of our widgets: napari names it "WIDGET (PLUGIN DISPLAY NAME)"."""
    return next(dock for name, dock in viewer.window._dock_widgets.items() if name.startswith(f"{widget} ("))


def _settle() -> None:
    for _ in range(30):
        QApplication.processEvents()
        time.sleep(0.02)


if __name__ == "__main__":
    main()
