"""Screenshot for docs/scanner-files.md: ``xvfb-run -a python docs/scripts/scanner_screenshot.py``.

A contrast phantom stored as raw 16-bit grey values (HU + 1024, as many exports are) in a
3-level OME-Zarr is opened with the plugin's reader (a lazy multiscale layer), and the micro-CT
widget segments it with ``--hu auto``'s calibration. Saves docs/images/scanner_omezarr_auto.png.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.io.omezarr import write_omezarr
from napari_mousesegment.plugin.widgets.ct import CTWidget

OUT = Path(__file__).resolve().parent.parent / "images" / "scanner_omezarr_auto.png"


def main() -> None:
    scan = ct_phantom(seed=2, condition="contrast")
    raw = (scan.image.astype(np.int32) + 1024).astype(np.uint16)
    path = write_omezarr(Path(tempfile.mkdtemp()) / "mouse_raw.zarr", raw, scan.spacing, levels=3)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    [layer] = viewer.open(str(path), plugin="napari-mousesegment")
    widget = CTWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Micro-CT segmentation")
    result = widget.run(layer, model="mosnet-synthetic", condition="contrast", hu="auto").wait(600)
    result.opacity = 0.6
    viewer.dims.set_point(0, raw.shape[0] * scan.spacing[0] * 0.45)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    iio.imwrite(OUT, viewer.screenshot(canvas_only=False, flash=False))
    viewer.close()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
