"""Any micro-CT scan by its suffix: TIFF, NIfTI, Analyze, GFF/SEGFF or a Rosenhain folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import gff, nifti
from .rosenhain import read_rosenhain_folder
from .scan import Scan, orient_body
from .tiff import read_tiff

TIFF_SUFFIXES = (".tif", ".tiff")
#: Scan file suffixes :func:`read_scan` reads (folders are Rosenhain scan folders).
SCAN_SUFFIXES = (*TIFF_SUFFIXES, *nifti.SUFFIXES, *gff.SUFFIXES)


def suffix(path: Path) -> str:
    """The format suffix of a path, lower case; ``.nii.gz`` counts as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_scan(path: str | os.PathLike, spacing: tuple[float, float, float] | None = None) -> Scan:
    """Read a micro-CT scan: TIFF (spacing from the file or ``spacing``), NIfTI, Analyze, GFF/SEGFF
    or a Rosenhain database folder. GFF and Rosenhain data are oriented by :func:`orient_body`."""
    path = Path(path)
    kind = suffix(path)
    if path.is_dir():
        return orient_body(read_rosenhain_folder(path))
    if not path.is_file():
        raise ValueError(f"{path}: no such file or folder")
    if kind in TIFF_SUFFIXES:
        image, file_spacing = read_tiff(path)
        if image.ndim != 3:
            raise ValueError(f"{path}: expected a 3D (z, y, x) volume, got shape {image.shape}")
        scan = Scan(image, spacing or file_spacing, source=str(path))
    elif kind in nifti.SUFFIXES:
        image, file_spacing = nifti.read_nifti(path)
        scan = Scan(image, spacing or file_spacing, source=str(path))
    elif kind in gff.SUFFIXES:
        scan = orient_body(gff.read_gff(path))
        if spacing:
            scan.spacing = spacing
    else:
        raise ValueError(f"{path}: unsupported scan format {kind!r} (TIFF, NIfTI, Analyze, GFF or a folder)")
    if scan.spacing is None:
        raise ValueError(f"{path}: the file has no voxel size; give the spacing (--spacing Z,Y,X in mm)")
    if scan.image is not None and not np.isfinite(scan.image).all():
        raise ValueError(f"{path}: the image contains NaN or infinite values")
    return scan
