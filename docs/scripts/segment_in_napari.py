"""Segment from a script: open data, dock the plugin's widgets, run them from code, export ROIs.

Run it with ``python docs/scripts/segment_in_napari.py [OUT_DIR]``: the viewer opens, the micro-CT
scan and the ultrasound series are segmented in the background, the ultrasound RoiSets are
written to OUT_DIR (default ./roisets), and napari stays open for corrections.
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari

from napari_mousesegment import ct_phantom, ultrasound_series
from napari_mousesegment.layers import ct_layers

PLUGIN = "napari-mousesegment"


def main(viewer: napari.Viewer, out: Path) -> dict:
    """Dock both widgets, start both segmentations, export the ultrasound RoiSets when they are done."""
    scan = ct_phantom(seed=3, condition="contrast")
    image, _truth = ct_layers(scan)
    viewer.add_image(image[0], **image[1])  # a scan in HU with its scale in mm (or viewer.open(path))
    _, ct = viewer.window.add_plugin_dock_widget(PLUGIN, "Micro-CT segmentation")
    ct._condition.value = "contrast"
    ct.run()  # runs in a worker thread; the organs arrive as a new Labels layer

    series = ultrasound_series(seed=3)
    viewer.add_image(series.frames, name="series 3", axis_labels=("frame", "y", "x"))
    _, us = viewer.window.add_plugin_dock_widget(PLUGIN, "Fetal ultrasound")
    us._source.value = viewer.layers["series 3"]
    us.split()
    us.run()
    out.mkdir(parents=True, exist_ok=True)
    us.worker.finished.connect(lambda: print("wrote", *map(str, us.export_rois(out))))
    return {"ct": ct, "ultrasound": us}


if __name__ == "__main__":
    viewer = napari.Viewer()
    main(viewer, Path(sys.argv[1] if len(sys.argv) > 1 else "roisets"))
    napari.run()
