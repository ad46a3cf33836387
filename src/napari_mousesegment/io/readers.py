"""Any micro-CT scan, by its suffix or its folder's contents, as one :class:`~.scan.Scan`.

Files: TIFF and OME-TIFF, NIfTI, Analyze, GFF/SEGFF, a DICOM file. Folders: a DICOM series, a
Bruker SkyScan reconstruction, an OME-Zarr image, a Rosenhain database scan. Every reader returns
(z, y, x) in RAS order with the spacing in mm; ``lazy`` asks for a dask array that reads slab by
slab where the format allows it, so a scan of several GB is never loaded whole.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import gff, nifti
from .files import regular_file
from .scan import Scan, orient_body

TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
#: Scan file suffixes :func:`read_scan` reads (folders are recognised by their contents).
SCAN_SUFFIXES = (*TIFF_SUFFIXES, *nifti.SUFFIXES, *gff.SUFFIXES, *DICOM_SUFFIXES)
#: Smallest and largest voxel size (mm) taken as a voxel size rather than a mistake: 1 µm to 10 mm.
SPACING_RANGE_MM = (1e-3, 10.0)


def suffix(path: Path) -> str:
    """The format suffix of a path, lower case; ``.nii.gz`` counts as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def folder_kind(path: Path) -> str | None:
    """What a scan folder holds: "dicom", "skyscan", "omezarr", "rosenhain", or None (cheap)."""
    from . import dicom, omezarr, skyscan
    from .rosenhain import is_scan_folder

    if not path.is_dir():
        return None
    if omezarr.is_omezarr(path):
        return "omezarr"
    if is_scan_folder(path):
        return "rosenhain"
    if skyscan.is_skyscan_folder(path):
        return "skyscan"
    if dicom.is_dicom_folder(path):
        return "dicom"
    return None


def _read(path: Path, spacing, series: str | None, lazy: bool) -> Scan:
    from . import dicom

    kind = suffix(path)
    if path.is_dir():
        folder = folder_kind(path)
        if folder == "omezarr":
            from .omezarr import read_omezarr

            return read_omezarr(path, lazy=lazy)
        if folder == "rosenhain":
            from .rosenhain import read_rosenhain_folder

            return orient_body(read_rosenhain_folder(path))
        if folder == "skyscan":
            from .skyscan import read_skyscan

            return read_skyscan(path, lazy=lazy, spacing=spacing)
        if folder == "dicom":
            return dicom.read_dicom(path, series=series, lazy=lazy)
        raise ValueError(f"{path}: not a scan folder (a DICOM series, a SkyScan reconstruction, an OME-Zarr "
                         "image or a Rosenhain scan)")
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    regular_file(path, "scan file")  # a named pipe or a device would block the reader forever
    if kind in TIFF_SUFFIXES:
        from .tiff import read_tiff

        image, file_spacing = read_tiff(path, lazy=lazy, need_spacing=spacing is None)
        if image.ndim != 3:
            raise ValueError(f"{path}: expected a 3D (z, y, x) volume, got shape {tuple(image.shape)}")
        return Scan(image, file_spacing, source=str(path))
    if kind in nifti.SUFFIXES:
        return nifti.read_nifti_scan(path, lazy=lazy, spacing=spacing)
    if kind in gff.SUFFIXES:
        return orient_body(gff.read_gff(path))
    if kind in DICOM_SUFFIXES or dicom.looks_like_dicom(path):
        return dicom.read_dicom(path, series=series, lazy=lazy)
    raise ValueError(f"{path}: unsupported scan format {kind!r} (TIFF, NIfTI, Analyze, GFF, DICOM, "
                     "or a DICOM, SkyScan, OME-Zarr or Rosenhain folder)")


def check_spacing(spacing, source: str) -> tuple[float, float, float]:
    """Three finite voxel sizes in mm, each within :data:`SPACING_RANGE_MM`, or a clear error."""
    low, high = SPACING_RANGE_MM
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(v) and low <= v <= high for v in values):
        raise ValueError(f"{source}: voxel size {values} mm is outside {low * 1000:g} µm to {high:g} mm "
                         "(wrong unit in the file? give --spacing Z,Y,X in mm)")
    return values  # type: ignore[return-value]


def read_scan(path: str | os.PathLike, spacing: tuple[float, float, float] | None = None, *,
              hu: str | tuple[float, float] | None = None, series: str | None = None,
              lazy: bool = False, require_hu: bool = True) -> Scan:
    """Read a micro-CT scan in HU, (z, y, x) in RAS order, spacing in mm.

    ``spacing`` replaces the file's voxel size (and is required when the file has none).
    ``hu`` calibrates grey values that are not HU: ``(AIR, WATER)`` raw values, or ``"auto"``
    (see :mod:`.hu`); a scan the reader knows is uncalibrated (SkyScan) needs it. ``series``
    picks one series of a DICOM folder that holds several. ``lazy`` returns a dask array where the
    format allows it; its NaN check then happens as slabs are read. ``require_hu=False`` hands
    back uncalibrated grey values as they are (for display), marked ``calibrated=False``.
    """
    path = Path(path)
    scan = _read(path, spacing, series, lazy)
    if spacing is not None:
        scan.spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    if scan.spacing is None:
        raise ValueError(f"{path}: the file has no voxel size; give the spacing (--spacing Z,Y,X in mm)")
    scan.spacing = check_spacing(scan.spacing, str(path))
    if scan.image is None:
        return scan
    if hu is not None:
        from .hu import hu_map

        scan.image = hu_map(scan.image, hu, str(path)).apply(scan.image)
        scan.calibrated = True
    elif not scan.calibrated and require_hu:
        raise ValueError(f"{path}: the grey values are not HU; calibrate them with --hu AIR,WATER "
                         "(raw values of air and water) or --hu auto")
    if isinstance(scan.image, np.ndarray) and not np.isfinite(scan.image).all():
        raise ValueError(f"{path}: the image contains NaN or infinite values")
    return scan


def organ_names_beside(path: Path) -> dict[str, int] | None:
    """Organ name -> value from ``STEM.json`` ({"organs": ...}) or a Slicer ``STEM.ctbl`` beside a label file
    ``STEM.*`` (as ``predict ct`` writes ``labels.tif``, ``labels.nii.gz``, ``labels.json``, ``labels.ctbl``)."""
    import json

    from .slicer import read_color_table

    stem = path.name.split(".")[0]
    sidecar = path.with_name(f"{stem}.json")
    if sidecar.is_file():
        try:
            organs = json.loads(sidecar.read_text())["organs"]
            return {str(k): int(v) for k, v in organs.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{sidecar}: not an organ table ({{\"organs\": {{name: value}}}}): {exc}") from exc
    table = path.with_name(f"{stem}.ctbl")
    if table.is_file():
        try:
            return {name: value for value, name in read_color_table(table).items() if value != 0}
        except (ValueError, IndexError, OSError) as exc:
            raise ValueError(f"{table}: not a Slicer colour table ({exc})") from exc
    return None


def read_label_map(path: str | os.PathLike, like: Scan) -> tuple[np.ndarray, dict[str, int] | None]:
    """A label map on the grid of the scan ``like`` (any format :func:`read_scan` reads, turned to the
    same (z, y, x) RAS order), and its organ names when a sidecar gives them."""
    path = regular_file(path, "label file") if not Path(path).is_dir() else Path(path)
    if suffix(path) in TIFF_SUFFIXES:
        from .tiff import read_array

        labels = read_array(path)
    else:
        labels = np.asarray(_read(path, like.spacing, None, lazy=False).image)
    if labels.ndim == 2:
        labels = labels[None]
    if tuple(labels.shape) != tuple(like.image.shape):
        raise ValueError(f"{path}: labels of shape {tuple(labels.shape)} do not match the scan's "
                         f"{tuple(like.image.shape)}")
    if labels.dtype.kind not in "iub" or (labels.size and (labels.min() < 0 or labels.max() > 255)):
        raise ValueError(f"{path}: labels must be whole numbers from 0 to 255")
    return labels.astype(np.uint8), organ_names_beside(path)
