"""TIFF files, written and read in one place: volumes with their voxel size, frame stacks, arrays.

- **Volumes** (:func:`write_tiff`, :func:`read_tiff`): (z, y, x) ImageJ TIFFs whose resolution
  and ``spacing`` give the voxel size in mm, so Fiji opens them to scale. :func:`read_tiff` also
  reads OME-TIFFs (PhysicalSizeX/Y/Z, in any length unit) and, with ``lazy``, gives a dask array
  that reads only the pages a slab needs, for scans larger than memory. :func:`tiff_kind` tells a
  micro-CT volume (it has a voxel size) from a frame stack by the header alone.
- **Stacks** (:func:`write_stack`): (n, H, W) frames or label stacks that ImageJ opens as n slices.
- **Arrays** (:func:`write_array`, :func:`read_array`): any array kept exactly as it is (dtype and
  shape), for the active-learning queue's items.

Every writer goes through a temporary file and a rename, so a file is whole or absent.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import tifffile

from .atomic import write_atomic
from .files import kind, regular_file
from .geometry import UNIT_MM
from .limits import TooLarge, check_allocation, nbytes

#: Length units ImageJ writes in a TIFF's ``unit``, in mm.
UNITS_MM = {"mm": 1.0, "micron": 1e-3, "µm": 1e-3, "um": 1e-3, "cm": 10.0}


def _imagej_volume(spacing: tuple[float, float, float]) -> dict[str, Any]:
    """tifffile's arguments for an ImageJ (z, y, x) volume whose voxel size Fiji reads, in mm."""
    dz, dy, dx = (float(s) for s in spacing)
    return {"imagej": True, "resolution": (1 / dx, 1 / dy), "metadata": {"axes": "ZYX", "spacing": dz, "unit": "mm"}}


def write_tiff(path: str | os.PathLike, volume: np.ndarray, spacing: tuple[float, float, float]) -> Path:
    """Write a (z, y, x) volume as an ImageJ TIFF with its spacing in mm (Fiji reads it)."""
    return write_atomic(path, lambda tmp: tifffile.imwrite(tmp, np.ascontiguousarray(volume), **_imagej_volume(spacing)))


def write_tiff_slices(path: str | os.PathLike, slices: Iterable[np.ndarray], shape: tuple[int, int, int],
                      dtype: Any, spacing: tuple[float, float, float]) -> Path:
    """Write a (z, y, x) volume given as its z-slices, one page at a time, as :func:`write_tiff` writes
    it whole: a volume larger than memory is never held."""
    return write_atomic(path, lambda tmp: tifffile.imwrite(tmp, data=iter(slices), shape=shape, dtype=dtype,
                                                             **_imagej_volume(spacing)))


def read_tiff(path: str | os.PathLike, lazy: bool = False, need_spacing: bool = True
              ) -> tuple[Any, tuple[float, float, float] | None]:
    """Read a TIFF volume and its (z, y, x) spacing in mm, or None when the file has none.

    The spacing comes from the OME-XML of an OME-TIFF (PhysicalSizeX/Y/Z) or from the ImageJ
    ``spacing``, resolution and ``unit``. ``lazy`` gives a dask array that reads pages on demand.
    A voxel size the file states unusably (a resolution of 0, an unknown unit) is an error naming
    the file, unless ``need_spacing`` is false (the caller has its own): then the spacing is None.
    """
    path = regular_file(path, "TIFF file")
    try:
        with tifffile.TiffFile(path) as tif:
            _check_chain(tif, path)
            if tif.is_ome:
                volume, spacing = _read_ome(tif, path, lazy, need_spacing)
            else:
                if not lazy:
                    _check_size(tif.series[0], path)
                volume = _lazy(tif.series[0], path) if lazy else tif.asarray()
                spacing = _optional(lambda: _imagej_spacing(tif), need_spacing)
    except TooLarge:
        raise
    except NoVoxelSize as exc:
        raise ValueError(f"{path}: has no usable voxel size ({exc}); give --spacing Z,Y,X in mm") from exc
    except _BadMetadata as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except Exception as exc:  # tifffile raises many types (even RuntimeError) for damaged files
        raise ValueError(f"{path}: not a readable TIFF volume ({_one_line(exc)})") from exc
    return volume, spacing


def tiff_kind(path: str | os.PathLike) -> str | None:
    """``"scan"`` when a TIFF is a 3D grey volume with a physical voxel size, else None.

    A micro-CT volume (an ImageJ TIFF with ``spacing`` and a length ``unit``, as :func:`write_tiff`
    writes, or an OME-TIFF with PhysicalSizeZ) is a scan; a frame stack (:func:`write_stack`) has no
    spacing and is not. Only the header is read; a file that cannot be read is not a scan, and
    anything but an ordinary file (a named pipe) is not opened at all.
    """
    if kind(path) != "a file":
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            _check_chain(tif, Path(path))
            page = tif.pages.first
            if page.samplesperpixel != 1:
                return None
            if tif.is_ome:
                return "scan" if _ome_is_volume(tif.ome_metadata) else None
            meta = tif.imagej_metadata
            if not meta or int(meta.get("channels", 1)) != 1 or int(meta.get("frames", 1)) != 1:
                return None
            if int(meta.get("slices", meta.get("images", 1))) < 2 or "unit" not in meta:
                return None
            return "scan" if _imagej_spacing(tif) is not None else None
    except Exception:  # noqa: BLE001 - tifffile raises many types for damaged files: not a scan
        return None


def _check_chain(tif: Any, path: Path) -> None:
    """Refuse a chain of pages that never ends. A damaged "next page" offset can loop back on itself;
    tifffile follows such a chain up to 2**32 times. An honest chain has fewer pages than the file
    has 16-byte runs (each page's directory needs more than that)."""
    limit = path.stat().st_size // 16 + 1
    pages = tif.pages
    useframes, pages.useframes = pages.useframes, True  # light page records: only the chain is walked
    try:
        for i, _ in enumerate(pages):
            if i > limit:
                raise _BadMetadata("its chain of pages never ends (a damaged page offset)")
    finally:
        pages.useframes = useframes


class _BadMetadata(ValueError):
    """Pixels that read, with a voxel size or layout the file states wrongly: the message says which."""


class NoVoxelSize(_BadMetadata):
    """A voxel size the file states but that cannot be used: zero, negative, not a number, no length unit."""


def _optional(spacing: Any, needed: bool) -> tuple[float, float, float] | None:
    """``spacing()``, or None when it raises :class:`NoVoxelSize` and the caller brings its own."""
    try:
        return spacing()
    except NoVoxelSize:
        if needed:
            raise
        return None


#: Length units an OME-XML ``PhysicalSize*Unit`` may state (its UnitsLength enumeration), in mm.
OME_UNIT_MM = {**UNIT_MM, "m": 1000.0, "dm": 100.0, "cm": 10.0, "mm": 1.0, "\u00b5m": 1e-3, "um": 1e-3,
               "nm": 1e-6, "pm": 1e-9, "\u00c5": 1e-7, "in": 25.4, "thou": 0.0254}


def _one_line(exc: BaseException) -> str:
    """An exception as one line of text, with its type where the message alone says little."""
    text = " ".join(str(exc).split())
    return text if len(text) > 12 else f"{type(exc).__name__} {text}".strip()


def _positive(value: float, what: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise NoVoxelSize(f"{what} is {value}; a voxel size must be a positive number")
    return value


def _lazy(series: Any, path: Path) -> Any:
    """The series as a dask array, one page per chunk, that reads its pages when a slab is computed.

    tifffile's zarr store reopens the file for reads once the TiffFile is closed, so the dask array
    stays valid. A file too short for the pages its header lists is refused now, not when read.
    """
    import dask.array as da
    import zarr

    _check_extent(series, path)
    pages = _TiffPages(zarr.open_array(store=series.aszarr(), mode="r"), path)
    page_ndim = min(len(series.keyframe.shape), pages.ndim)
    chunks = (*(1,) * (pages.ndim - page_ndim), *pages.shape[pages.ndim - page_ndim:])
    return da.from_array(pages, chunks=chunks, asarray=False, meta=np.empty((0,) * pages.ndim, pages.dtype),
                         name=f"tiff-{_token(path)}-{series.index}")


def _token(path: Path) -> str:
    """A token for a file's name, size and time of change: a new dask name when the file changes."""
    from dask.base import tokenize

    stat = path.stat()
    return tokenize(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _check_extent(series: Any, path: Path) -> None:
    """Refuse a series whose pixel data, as its header places it, lies beyond the end of the file."""
    size = path.stat().st_size
    if series.dataoffset is not None:  # contiguous: one run of bytes
        ends = [(series.dataoffset + series.nbytes, "the pixel data")]
    else:
        ends = []
        for i, page in enumerate(series.pages):
            if page is None:
                continue
            if not page.dataoffsets or len(page.dataoffsets) != len(page.databytecounts):
                raise _BadMetadata(f"page {i} does not say where its pixel data lie")
            ends.append((max(o + c for o, c in zip(page.dataoffsets, page.databytecounts)), f"page {i}"))
    for end, what in ends:
        if end > size:
            raise _BadMetadata(f"the file is truncated: {what} ends at byte {end}, the file has {size}")


class _TiffPages:
    """A TIFF series' zarr array whose read errors, met when a slab is computed, name the file."""

    def __init__(self, array: Any, path: Path):
        self.array, self.path = array, path
        self.shape, self.dtype, self.ndim = tuple(array.shape), np.dtype(array.dtype), array.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.array[key])
        except Exception as exc:  # tifffile and zarr raise many types for damaged pages
            raise ValueError(f"{self.path}: cannot read the TIFF's pixels ({_one_line(exc)})") from exc


def _imagej_spacing(tif: Any) -> tuple[float, float, float] | None:
    """The (z, y, x) spacing in mm of an ImageJ TIFF, or None when it states none."""
    meta = tif.imagej_metadata or {}
    page = tif.pages.first
    if "spacing" not in meta or "XResolution" not in page.tags or "YResolution" not in page.tags:
        return None
    unit = str(meta.get("unit", "mm")).replace("\\u00B5", "\u00b5").replace("\u03bc", "\u00b5")
    if unit not in UNITS_MM:
        raise NoVoxelSize(f"spacing unit {unit!r} is not a length ImageJ writes (mm, µm, micron, cm)")
    scale = UNITS_MM[unit]

    def step(tag: str) -> float:
        numerator, denominator = (float(v) for v in page.tags[tag].value)
        if not (numerator > 0 and denominator > 0 and math.isfinite(numerator / denominator)):
            raise NoVoxelSize(f"{tag} is {numerator:g}/{denominator:g} pixels per {unit}; "
                               "it must be positive")
        return denominator / numerator * scale

    try:
        dz = float(meta["spacing"])
    except (TypeError, ValueError):
        raise NoVoxelSize(f"the ImageJ spacing {meta['spacing']!r} is not a number") from None
    return (_positive(dz, "the ImageJ spacing") * scale, step("YResolution"), step("XResolution"))


def _ome_pixels(xml: str | None) -> Any:
    """The first image's ``Pixels`` element of an OME-XML text."""
    if not xml:
        raise _BadMetadata("the OME-TIFF has no OME-XML")
    pixels = ElementTree.fromstring(xml).find("{*}Image/{*}Pixels")
    if pixels is None:
        raise _BadMetadata("the OME-XML has no Image/Pixels element")
    return pixels


def _ome_spacing(pixels: Any) -> tuple[float, float, float] | None:
    """The (z, y, x) spacing in mm from a Pixels element, or None when a PhysicalSize is missing."""
    if any(pixels.get(f"PhysicalSize{a}") is None for a in "ZYX"):
        return None
    sizes = []
    for axis in "ZYX":
        text = pixels.get(f"PhysicalSize{axis}")
        unit = pixels.get(f"PhysicalSize{axis}Unit", "\u00b5m").strip().replace("\u03bc", "\u00b5")
        if unit not in OME_UNIT_MM:
            raise NoVoxelSize(f"PhysicalSize{axis}Unit {unit!r} is not a length unit "
                               f"({', '.join(sorted(OME_UNIT_MM))})")
        try:
            value = float(text)
        except ValueError:
            raise NoVoxelSize(f"PhysicalSize{axis} {text!r} is not a number") from None
        sizes.append(_positive(value, f"PhysicalSize{axis}") * OME_UNIT_MM[unit])
    return sizes[0], sizes[1], sizes[2]


def _ome_is_volume(xml: str | None) -> bool:
    """Whether OME-XML describes one grey 3D volume (one channel, one time point) with a voxel size."""
    try:
        pixels = _ome_pixels(xml)
        z, c, t = (int(pixels.get(f"Size{a}", "1")) for a in "ZCT")
        return z > 1 and c == 1 and t == 1 and _ome_spacing(pixels) is not None
    except (ValueError, ElementTree.ParseError):
        return False


def _read_ome(tif: Any, path: Path, lazy: bool, need_spacing: bool = True
              ) -> tuple[Any, tuple[float, float, float] | None]:
    """The (z, y, x) volume of an OME-TIFF's first image, and its spacing in mm (see :func:`read_tiff`)."""
    pixels = _ome_pixels(tif.ome_metadata)
    spacing = _optional(lambda: _ome_spacing(pixels), need_spacing)
    series = tif.series[0]
    axes, shape = series.axes, series.shape  # size-1 axes are squeezed away
    names = {"C": "channels", "T": "time points", "S": "colour samples"}
    extra = [f"{n} {names.get(a, a + ' planes')}" for a, n in zip(axes, shape) if a not in "ZYX"]
    if extra:
        raise _BadMetadata(f"the OME-TIFF holds {', '.join(extra)} (axes {axes}, shape {tuple(shape)}); "
                           "expected one grey channel at one time point")
    if not lazy:
        _check_size(series, path)
    volume = _lazy(series, path) if lazy else series.asarray()
    order = [axes.index(a) for a in "ZYX" if a in axes]
    if order != sorted(order):
        volume = volume.transpose(order)
    return volume, spacing


def imagej_dtype(array: np.ndarray) -> np.ndarray:
    """``array`` in a type an ImageJ TIFF holds: 8 or 16 bits, signed 16 bits or 32-bit float.

    Booleans and integers go to the smallest of the integer types that holds their values, without
    loss; anything else becomes 32-bit float, ImageJ's widest type.
    """
    if array.dtype.char in "BHhf":
        return array
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for kind in (np.uint8, np.uint16, np.int16):
            if np.iinfo(kind).min <= low and high <= np.iinfo(kind).max:
                return array.astype(kind)
    return array.astype(np.float32)


def write_stack(path: str | os.PathLike, frames: np.ndarray, compress: bool = False) -> Path:
    """Write (n, H, W) frames as a TIFF stack that ImageJ/Fiji opens with n slices.

    Types ImageJ lacks are converted by :func:`imagej_dtype`. ``compress`` uses deflate (ImageJ
    reads it), which shrinks mostly-empty label stacks ~1000x.
    """
    frames = imagej_dtype(np.asarray(frames))
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
    path = regular_file(path, "TIFF file")
    try:
        with tifffile.TiffFile(path) as tif:
            _check_chain(tif, Path(path))
            _check_size(tif.series[0], path)
            return tif.asarray()
    except TooLarge:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise ValueError(f"{path}: not a readable TIFF ({_one_line(exc)})") from exc


def _check_size(series: Any, path: Path) -> None:
    """Refuse, before reading, a series whose header asks for more memory than this machine has."""
    check_allocation(nbytes(series.shape, np.dtype(series.dtype).itemsize),
                     f"{path}: its {'x'.join(map(str, series.shape))} {np.dtype(series.dtype)} pixels")
