"""Volumes on disk: TIFF stacks that carry their voxel size in ImageJ's metadata."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile


def write_tiff(path: str | os.PathLike, volume: np.ndarray, spacing: tuple[float, float, float]) -> Path:
    """Write a (z, y, x) volume as an ImageJ TIFF with its spacing in mm (Fiji reads it)."""
    path = Path(path)
    dz, dy, dx = (float(s) for s in spacing)
    tmp = path.with_name(path.name + ".partial")
    tifffile.imwrite(
        tmp, np.ascontiguousarray(volume), imagej=True, resolution=(1 / dx, 1 / dy),
        metadata={"axes": "ZYX", "spacing": dz, "unit": "mm"},
    )
    os.replace(tmp, path)
    return path


def read_tiff(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """Read a TIFF volume and its (z, y, x) spacing in mm, or None when the file has none."""
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            volume = tif.asarray()
            meta = tif.imagej_metadata or {}
            page = tif.pages.first
            spacing = None
            if "spacing" in meta and "XResolution" in page.tags:
                xres = page.tags["XResolution"].value
                yres = page.tags["YResolution"].value
                scale = {"mm": 1.0, "micron": 1e-3, "µm": 1e-3, "um": 1e-3}.get(meta.get("unit", "mm"), 1.0)
                spacing = (float(meta["spacing"]) * scale, yres[1] / yres[0] * scale, xres[1] / xres[0] * scale)
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable TIFF volume ({exc})") from exc
    return volume, spacing
