"""Gremse GFF and SEGFF files (pygff; imported only when such a file is read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .rosenhain import map_classes, parse_cls
from .scan import Scan

SUFFIXES = (".gff", ".segff")


def read_gff(path: str | Path) -> Scan:
    """A GFF image, or a SEGFF label map with its classes (from its ``Project info``), in (z, y, x)."""
    import pygff

    path = Path(path)
    try:
        data = pygff.load(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: not a readable GFF file ({exc})") from exc
    array = np.asarray(data).squeeze()
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {array.shape}")
    spacing = tuple(float(v) for v in np.asarray(data.info.voxel_sizes).ravel()[:3])[::-1]  # (x,y,z) -> (z,y,x)
    info = data.info.meta.get("Project info") if isinstance(data.info.meta, dict) else None
    if path.suffix.lower() == ".segff" or info:
        classes = parse_cls("\n".join(f"{k}={v}" for k, v in (info or {}).items()))
        return Scan(None, spacing, array, map_classes(classes), str(path))  # type: ignore[arg-type]
    scale, offset = float(data.info.intensity_scale or 1.0), float(data.info.intensity_offset or 0.0)
    if (scale, offset) != (1.0, 0.0):
        array = array.astype(np.float32) * scale + offset
    return Scan(array, spacing, source=str(path))  # type: ignore[arg-type]
