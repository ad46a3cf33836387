"""npe2 writers: a Labels layer as an ImageJ RoiSet zip, or as a TIFF that Fiji opens with its scale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _organ(meta: dict[str, Any]) -> str:
    organ = (meta.get("metadata") or {}).get("organ")
    return str(organ or meta.get("name") or "organ").split(" (")[0].replace(" ", "_")


def write_labels_rois(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """One ROI per instance per frame, on its frame, so Fiji's fill gives each instance back."""
    from ..io.roi import labels_to_rois, write_roiset

    labels = np.asarray(data)
    if labels.ndim not in (2, 3):
        raise ValueError(f"{path}: a RoiSet holds 2D frames; this layer has {labels.ndim} dimensions")
    rois = labels_to_rois(labels, _organ(meta))
    return [str(write_roiset(path, rois, allow_empty=True))]


def write_labels_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """A deflate TIFF; a 3D layer in mm keeps its voxel size for Fiji."""
    from ..io.tiff import write_stack, write_tiff

    labels = np.asarray(data)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be integers, got {labels.dtype}")
    units = [str(u) for u in meta.get("units") or ()]
    scale = meta.get("scale")
    if labels.ndim == 3 and scale is not None and units and all(u in ("mm", "millimeter") for u in units):
        return [str(write_tiff(path, labels, tuple(scale)))]
    return [str(write_stack(Path(path), labels, compress=True))]
