"""napari-mousesegment: mouse organ segmentation for micro-CT and fetal ultrasound.

The public API is loaded lazily, so ``import napari_mousesegment`` stays cheap and never imports
torch or napari; each name is imported on first use. The layer builders (``ct_layers`` ...) need
no napari; the widgets (``CTWidget`` ...) do. The package's map: docs/development.md.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "ct_phantom": "napari_mousesegment.data.phantom_ct",
    "CTPhantom": "napari_mousesegment.data.phantom_ct",
    "ultrasound_series": "napari_mousesegment.data.phantom_us",
    "USSeries": "napari_mousesegment.data.phantom_us",
    "write_ct_case": "napari_mousesegment.data.ct_dataset",
    "write_us_series": "napari_mousesegment.data.phantom_us",
    "read_scan": "napari_mousesegment.io.readers",
    "read_composite": "napari_mousesegment.io.composites",
    "split_montage": "napari_mousesegment.io.composites",
    "montage": "napari_mousesegment.io.composites",
    "fill_polygon": "napari_mousesegment.io.roi",
    "read_rois": "napari_mousesegment.io.roi",
    "write_roiset": "napari_mousesegment.io.roi",
    "rois_to_labels": "napari_mousesegment.io.roi",
    "run_demo": "napari_mousesegment.jobs.demo",
    "ct_layers": "napari_mousesegment.plugin.layers",
    "ct_labels_layer": "napari_mousesegment.plugin.layers",
    "ultrasound_layers": "napari_mousesegment.plugin.layers",
    "us_labels_layer": "napari_mousesegment.plugin.layers",
    "CTWidget": "napari_mousesegment.plugin.widgets.ct",
    "UltrasoundWidget": "napari_mousesegment.plugin.widgets.ultrasound",
    "ActiveLearningWidget": "napari_mousesegment.plugin.widgets.active",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_mousesegment' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
