"""TIFF files, written and read in one place: volumes with their voxel size, frame stacks, arrays.

- **Volumes** (:func:`write_tiff`, :func:`read_tiff`): (z, y, x) ImageJ TIFFs whose resolution
  and ``spacing`` give the voxel size in mm, so Fiji opens them to scale.
- **Stacks** (:func:`write_stack`): (n, H, W) frames or label stacks that ImageJ opens as n slices.
- **Arrays** (:func:`write_array`, :func:`read_array`): any array kept exactly as it is (dtype and
  shape), for the active-learning queue's items.

Every writer goes through a temporary file and a rename, so a file is whole or absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from .atomic import write_atomic

#: Length units ImageJ writes in a TIFF's ``unit``, in mm.
UNITS_MM = {"mm": 1.0, "micron": 1e-3, "µm": 1e-3, "um": 1e-3, "cm": 10.0}


def write_tiff(path: str | os.PathLike, volume: np.ndarray, spacing: tuple[float, float, float]) -> Path:
    """Write a (z, y, x) volume as an ImageJ TIFF with its spacing in mm (Fiji reads it)."""
    dz, dy, dx = (float(s) for s in spacing)
    return write_atomic(path, lambda tmp: tifffile.imwrite(
        tmp, np.ascontiguousarray(volume), imagej=True, resolution=(1 / dx, 1 / dy),
        metadata={"axes": "ZYX", "spacing": dz, "unit": "mm"}))


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
                unit = str(meta.get("unit", "mm")).replace("\\u00B5", "µ")
                if unit not in UNITS_MM:
                    raise ValueError(f"spacing unit {unit!r} is not a length ImageJ writes (mm, µm, micron, cm)")
                scale = UNITS_MM[unit]
                spacing = (float(meta["spacing"]) * scale, yres[1] / yres[0] * scale, xres[1] / xres[0] * scale)
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable TIFF volume ({exc})") from exc
    return volume, spacing


def write_stack(path: str | os.PathLike, frames: np.ndarray, compress: bool = False) -> Path:
    """Write (n, H, W) frames as a TIFF stack that ImageJ/Fiji opens with n slices.

    ``compress`` uses deflate (ImageJ reads it), which shrinks mostly-empty label stacks ~1000x.
    """
    frames = np.asarray(frames)
    return write_atomic(path, lambda tmp: tifffile.imwrite(
        tmp, frames, imagej=True, metadata={"axes": "ZYX" if frames.ndim == 3 else "YX"},
        compression="zlib" if compress else None))


def write_array(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write an array exactly as it is (any dtype; one gray page per frame, even for 3 or 4 frames),
    deflate-compressed."""
    return write_atomic(path, lambda tmp: tifffile.imwrite(tmp, np.asarray(array), compression="zlib",
                                                             photometric="minisblack"))


def read_array(path: str | os.PathLike) -> np.ndarray:
    """The array of a TIFF file, or a ValueError naming the file when it cannot be read."""
    try:
        return tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for damaged files
        raise ValueError(f"{path}: not a readable TIFF ({exc})") from exc
