"""napari-mousesegment: mouse organ segmentation for micro-CT and fetal ultrasound.

The public API is loaded lazily, so ``import napari_mousesegment`` stays cheap and never imports
torch or napari; each name is imported on first use.
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
    "write_ct_case": "napari_mousesegment.data.datasets",
    "write_us_series": "napari_mousesegment.data.datasets",
    "read_composite": "napari_mousesegment.io.composites",
    "split_montage": "napari_mousesegment.io.composites",
    "montage": "napari_mousesegment.io.composites",
    "fill_polygon": "napari_mousesegment.io.roi",
    "read_rois": "napari_mousesegment.io.roi",
    "write_roiset": "napari_mousesegment.io.roi",
    "rois_to_labels": "napari_mousesegment.io.roi",
    "run_demo": "napari_mousesegment.demo",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_mousesegment' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
