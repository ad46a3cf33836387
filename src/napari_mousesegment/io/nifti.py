"""NIfTI and Analyze 7.5 volumes, read with nibabel (imported only when such a file is read)."""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .geometry import to_zyx
from .roi import brief
from .scan import Scan

SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img")
#: Deflate shrinks data at most about 1032:1, so a gzip file declaring more data than that per byte
#: cannot hold it: refused before anything is allocated.
MAX_GZIP_RATIO = 1032


@contextmanager
def quiet() -> Iterator[None]:
    """Silence nibabel's own logger (it prints header fixes, such as pixdim 0 read as 1, to stderr)."""
    import logging

    logger = logging.getLogger("nibabel.global")
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def check_header(img, path: Path, need_spacing: bool = True) -> bool:
    """Refuse a header that disagrees with its data, which nibabel would read anyway.

    nibabel reads a voxel size (pixdim) of 0 as 1 and a negative one as its absolute value; and
    dimensions that do not match the image file's length give a wrong volume (a longer file) or
    fail deep inside nibabel (a shorter one). Raises ValueError; the caller names the file.
    Returns whether the voxel size is usable; an unusable one is an error only ``need_spacing``.
    """
    import nibabel

    files = img.file_map  # a .nii keeps its header in its one "image" file
    with nibabel.openers.ImageOpener(files.get("header", files["image"]).filename) as f:
        raw = type(img.header).from_fileobj(f, check=False)
    spatial = min(int(raw["dim"][0]), 3)
    pixdim = [float(v) for v in raw["pixdim"][1:1 + spatial]]
    usable = all(math.isfinite(v) and v > 0 for v in pixdim)
    if not usable and need_spacing:
        raise ValueError(f"no usable voxel size: pixdim {pixdim} in the header is not positive and finite; "
                         "give --spacing Z,Y,X in mm")
    proxy = img.dataobj
    need = int(proxy.offset) + math.prod(proxy.shape) * proxy.dtype.itemsize
    image_file = Path(files["image"].filename)
    held = image_file.stat().st_size
    if image_file.name.lower().endswith(".gz"):
        if need > MAX_GZIP_RATIO * held:
            raise ValueError(f"the header declares {need} bytes of data, more than {held} gzip bytes can hold")
        held = _gzip_length(image_file, need)
    if held != need:
        raise ValueError(f"the header's {tuple(proxy.shape)} {proxy.dtype} volume needs {need} bytes "
                         f"(from offset {proxy.offset}); {image_file.name} holds {held}")
    return usable


def _gzip_length(path: Path, expected: int) -> int:
    """The uncompressed length of a gzip file, checked against ``expected`` (read no further)."""
    with open(path, "rb") as f:
        f.seek(-4, 2)
        if int.from_bytes(f.read(4), "little") == expected % (1 << 32):  # ISIZE of a one-member file
            return expected
    total = 0
    with gzip.open(path) as g:
        while total <= expected and (chunk := g.read(1 << 20)):
            total += len(chunk)
    return total


def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A (z, y, x) volume and its voxel size from a NIfTI or Analyze file (nibabel's (x, y, z) reversed)."""
    import nibabel

    path = Path(path)
    try:
        with quiet():  # nibabel logs the header fixes it makes to stderr; we refuse or say so instead
            img = nibabel.load(str(path))
        check_header(img, path)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for bad headers and short files
        raise ValueError(f"{path}: not a readable NIfTI/Analyze volume ({brief(exc)})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {data.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.transpose(data, (2, 1, 0)), zooms[::-1]  # nibabel is (x, y, z); we are (z, y, x)


#: NIfTI's spatial units (``xyzt_units``) in mm; "unknown" is read as mm, the usual meaning.
NIFTI_UNIT_MM = {"mm": 1.0, "micron": 1e-3, "meter": 1000.0, "unknown": 1.0}


def read_nifti_scan(path: str | Path, lazy: bool = False,
                    spacing: tuple[float, float, float] | None = None) -> Scan:
    """A NIfTI or Analyze scan turned to our (z, y, x) RAS order by its affine, spacing in mm.

    The file's affine and voxel order are kept in the scan's :class:`~.geometry.Geometry`, so that
    labels go back out on the file's own grid (:func:`~.geometry.write_labels_nifti`). ``lazy``
    hands back a dask array that reads slab by slab (uncompressed files only: a ``.nii.gz`` is read
    whole, since every slab would decompress the file from its start). A header whose voxel size
    is unusable (pixdim 0) is refused, unless ``spacing`` (z, y, x mm) is given to take its place.
    """
    import nibabel

    path = Path(path)
    try:
        with quiet():
            img = nibabel.load(str(path))
        usable = check_header(img, path, need_spacing=spacing is None)
        unit = img.header.get_xyzt_units()[0] if hasattr(img.header, "get_xyzt_units") else "mm"
        shape = img.shape
        if len(shape) == 4 and shape[3] == 1:
            img = img.slicer[..., 0]
            shape = img.shape
        if len(shape) != 3:
            raise ValueError(f"expected a 3D volume, got shape {shape}")
        if lazy and not path.name.lower().endswith(".gz"):
            import dask.array as da

            data = da.from_array(img.dataobj, chunks=(*shape[:2], 1), asarray=True, fancy=False)
        else:
            data = np.asanyarray(img.dataobj)
        affine = img.affine
        header = img.header
        if "qform_code" in header.keys() and int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
            affine = np.diag([*header.get_zooms()[:3], 1.0])  # NIfTI's "method 1": no flip, origin 0
        if not usable:  # pixdim 0: the given (z, y, x) spacing on the file's own axes, method 1
            affine = np.diag([*(float(s) for s in spacing[::-1]), 1.0])  # type: ignore[index]
            unit = "mm"
    except Exception as exc:  # nibabel raises several types (and many-line messages) for damaged files
        raise ValueError(f"{path}: not a readable NIfTI/Analyze volume ({brief(exc)})") from exc
    if unit not in NIFTI_UNIT_MM:
        raise ValueError(f"{path}: spatial unit {unit!r} is not a length")
    image, spacing, geometry = to_zyx(data, affine, NIFTI_UNIT_MM[unit], source=str(path))
    return Scan(image, spacing, source=str(path), geometry=geometry)
