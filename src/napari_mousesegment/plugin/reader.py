"""npe2 readers: ImageJ ROIs, ultrasound composites and micro-CT scans as napari layers.

Each ``get_*_reader`` answers from the path alone (suffix, or a folder's contents), so napari
asks cheaply; the returned function does the reading, and a file that turns out to be damaged
raises an error naming it, which napari shows as a notification.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io.readers import SCAN_SUFFIXES, TIFF_SUFFIXES, folder_kind, organ_names_beside
from ..io.readers import suffix as _suffix
from .layers import LayerData

Reader = Callable[[Any], list[LayerData]]
COMPOSITE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Scans larger than this (bytes on disk) open as lazy dask layers, read slab by slab as you browse.
LAZY_BYTES = 512 * 2**20


def _one_path(path: str | os.PathLike | list) -> Path | None:
    if isinstance(path, list):
        return Path(path[0]) if len(path) == 1 else None
    return Path(path)


def get_roi_reader(path: str | os.PathLike | list) -> Reader | None:
    """ImageJ RoiSet zips and single .roi files."""
    p = _one_path(path)
    if p is None or _suffix(p) not in (".zip", ".roi") or not p.is_file():
        return None
    return read_roi_layers


def read_roi_layers(path: str | os.PathLike | list) -> list[LayerData]:
    """Instance labels, one id per ROI in file order, with the ROI names in the features.

    Without an image to lie on, the stack is just large enough for every ROI: up to the last
    ROI's frame, and to its right and bottom edges.
    """
    from ..io.roi import read_rois, roi_frame, rois_to_labels

    p = _one_path(path)
    rois = read_rois(p)
    frames = [f for f in map(roi_frame, rois) if f is not None]
    n_frames = max(frames, default=0) + 1
    height = max(max(int(r.bottom) for r in rois), 1)  # ImageJ's bounds: right/bottom are exclusive
    width = max(max(int(r.right) for r in rois), 1)
    labels = rois_to_labels(rois, (n_frames, height, width), source=str(p))
    names = ["background", *[r.name for r in rois]]
    kwargs = {"name": p.stem, "features": {"index": list(range(len(names))), "roi": names},
              "metadata": {"source": str(p)}}
    if n_frames == 1:
        return [(labels[0], kwargs, "labels")]
    return [(labels, {**kwargs, "axis_labels": ("frame", "y", "x")}, "labels")]


def get_composite_reader(path: str | os.PathLike | list) -> Reader | None:
    """Ultrasound montage images (PNG/JPEG) and folders of frame images."""
    p = _one_path(path)
    if p is None:
        return None
    if p.is_dir():
        from ..io.composites import IMAGE_SUFFIXES

        if any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()) and folder_kind(p) is None:
            return read_composite_layers
        return None
    return read_composite_layers if _suffix(p) in COMPOSITE_SUFFIXES else None


def read_composite_layers(path: str | os.PathLike | list) -> list[LayerData]:
    """The series as a (frames, y, x) stack, each frame's source kept in the metadata."""
    from ..io.composites import read_composite

    p = _one_path(path)
    composite = read_composite(p)
    return [(composite.frames, {"name": p.stem, "axis_labels": ("frame", "y", "x"), "colormap": "gray",
                                "metadata": {"sources": list(composite.sources), "grid": composite.grid}},
             "image")]


def get_scan_reader(path: str | os.PathLike | list) -> Reader | None:
    """Micro-CT scans: NIfTI, Analyze, GFF/SEGFF and DICOM files; TIFFs that carry a voxel size in a
    length unit (ImageJ or OME-TIFF; a plain TIFF stack is left to napari); DICOM, SkyScan,
    OME-Zarr and Rosenhain folders."""
    p = _one_path(path)
    if p is None:
        return None
    if p.is_dir():
        return read_scan_layers if folder_kind(p) is not None else None
    if _suffix(p) in TIFF_SUFFIXES:
        from ..io.tiff import tiff_kind

        return read_scan_layers if tiff_kind(p) == "scan" else None
    return read_scan_layers if _suffix(p) in SCAN_SUFFIXES else None


def _size_on_disk(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def read_scan_layers(path: str | os.PathLike | list) -> list[LayerData]:
    """The scan in HU with its spacing as the scale in mm, and its organ labels when the file has them.

    A scan over :data:`LAZY_BYTES` opens as a lazy dask layer (an OME-Zarr as a multiscale one,
    when it has levels), so that napari reads only the slices on screen. Grey values that are not
    HU (SkyScan) are shown as they are; the micro-CT widget calibrates them.
    """
    from ..io.omezarr import read_levels
    from ..io.readers import read_scan
    from ..io.scan import case_name
    from .layers import ct_labels_layer

    p = _one_path(path)
    organs = organ_names_beside(p) if _suffix(p) in TIFF_SUFFIXES else None
    if organs:  # predict ct's labels.tif with its labels.json: organ labels, not a scan
        from ..io.tiff import read_tiff

        labels, spacing = read_tiff(p)
        if labels.dtype.kind in "ui" and spacing is not None:
            return [ct_labels_layer(labels.astype("uint8"), organs, spacing, f"{p.parent.name} organs")]
    zarr = folder_kind(p) == "omezarr"
    scan = read_scan(p, lazy=zarr or _size_on_disk(p) > LAZY_BYTES, require_hu=False)
    layers: list[LayerData] = []
    if scan.image is not None:
        data = scan.image
        if zarr:
            levels, _ = read_levels(p)
            data = levels if len(levels) > 1 else levels[0]
        limits = (-500, 1200) if scan.calibrated else _limits(scan.image)
        layers.append((data, {"name": case_name(p), "scale": scan.spacing, "units": ("mm",) * 3,
                              "axis_labels": ("z", "y", "x"), "colormap": "gray", "multiscale": isinstance(data, list),
                              "contrast_limits": limits,
                              "metadata": {"spacing_mm": scan.spacing, "source": str(p), "hu": scan.calibrated}},
                       "image"))
    if scan.labels is not None and scan.organs:
        layers.append(ct_labels_layer(scan.labels, scan.organs, scan.spacing, f"{case_name(p)} organs"))
    return layers


def _limits(image) -> tuple[float, float]:
    """Display range of uncalibrated grey values, from a sample of slices (cheap on lazy scans)."""
    import numpy as np

    from ..io.hu import sample

    low, high = np.percentile(sample(image, 8), [1, 99.5])
    return float(low), float(max(high, low + 1))
