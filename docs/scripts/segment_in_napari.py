"""Segment from a script: open data, dock the plugin's widgets, run them from code, export results.

Run it with ``python docs/scripts/segment_in_napari.py [OUT_DIR]``: the viewer opens, the micro-CT
scan and the ultrasound series are segmented in the background, the organ volumes and the
ultrasound RoiSets are written to OUT_DIR (default ./roisets) as each run ends, and napari stays
open for corrections. Only the widgets' public methods are used: ``run`` returns a job whose
``then`` chains on the result inside napari's event loop (``wait`` blocks for it before
``napari.run()``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari

from napari_mousesegment import ct_layers, ct_phantom, ultrasound_series

PLUGIN = "napari-mousesegment"


def main(viewer: napari.Viewer, out: Path) -> dict:
    """Dock the widgets and start both segmentations; each writes its results when it is done."""
    out.mkdir(parents=True, exist_ok=True)
    image, _truth = ct_layers(ct_phantom(seed=3, condition="contrast"))
    scan = viewer.add_image(image[0], **image[1])  # a scan in HU with its scale in mm (or viewer.open(path))
    _, ct = viewer.window.add_plugin_dock_widget(PLUGIN, "Micro-CT segmentation")
    ct.run(scan, model="mosnet-synthetic", condition="contrast").then(
        lambda organs: print("organs in", organs.name, "; volumes in", ct.export_volumes(out / "volumes.csv")))

    series = ultrasound_series(seed=3)
    frames = viewer.add_image(series.frames, name="series 3", axis_labels=("frame", "y", "x"))
    _, us = viewer.window.add_plugin_dock_widget(PLUGIN, "Fetal ultrasound")
    us.split(frames)  # a montage or a file path is split into frames; a frame stack is used as it is
    us.run(organs=["heart", "liver", "placenta"]).then(
        lambda layers: print("wrote", *map(str, us.export_rois(out))))

    _, learning = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotation & active learning")
    learning.queue_dir = out / "queue"  # corrected layers go here with learning.send(frames, layer)
    return {"ct": ct, "ultrasound": us, "active": learning}


if __name__ == "__main__":
    viewer = napari.Viewer()
    main(viewer, Path(sys.argv[1] if len(sys.argv) > 1 else "roisets"))
    napari.run()
