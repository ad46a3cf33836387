"""CT scans stored as DICOM: a folder of slice files (one series, or several to choose from) or one
file (a single slice, or a multi-frame Enhanced CT), read with pydicom (imported only when needed).

Slices are ordered by where they lie along the slice normal (ImagePositionPatient), never by file
name or InstanceNumber, which exports do not keep in order; gaps, duplicates and mixed geometry are
refused rather than stacked into a wrong volume. Grey values become HU with each slice's own
RescaleSlope/Intercept: int16 when every slope is 1, every intercept whole and the stored bit
range plus intercept fits int16 (half the memory), else float32. DICOM's patient coordinates are
LPS; the file-order affine is built as dcm2niix/nibabel do, and :func:`~.geometry.to_zyx` turns
the volume into our (z, y, x) RAS order. Every failure is a one-line :class:`DicomError` naming
the file and the problem.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import to_zyx
from .scan import Scan

SUFFIXES = (".dcm", ".dicom")
_PEEK = 8  #: files :func:`is_dicom_folder` looks at
#: First tags of a DICOM file written without its 128-byte preamble and ``DICM`` magic.
_NO_PREAMBLE = (b"\x08\x00\x05\x00", b"\x08\x00\x08\x00", b"\x08\x00\x16\x00", b"\x02\x00\x00\x00")


class DicomError(ValueError):
    """A DICOM file or series that cannot be read as a CT volume; the message names the file."""


@dataclass(frozen=True)
class _Slice:
    """One 2D image: a single-frame file (``frame`` None) or one frame of a multi-frame file."""

    file: Path
    frame: int | None
    where: str  #: the file, and the frame of a multi-frame file, for messages
    position: np.ndarray  #: ImagePositionPatient, LPS mm
    orientation: np.ndarray  #: ImageOrientationPatient: along a row (column index), along a column
    pixel_spacing: np.ndarray  #: PixelSpacing: (between rows, between columns), mm
    shape: tuple[int, int]  #: (rows, columns)
    slope: float
    intercept: float
    thickness: float | None  #: SpacingBetweenSlices or SliceThickness, used for a single slice
    fits_int16: bool
    hu: bool  #: the file states a rescale (else the values are raw, not HU)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def looks_like_dicom(path: Path) -> bool:
    """Cheap check of one file: a DICOM suffix, the ``DICM`` magic, or a preamble-less DICOM start."""
    path = Path(path)
    if path.suffix.lower() in SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or head[:4] in _NO_PREAMBLE


def _candidates(folder: Path):
    """The folder's files, hidden ones (.DS_Store, macOS ``._`` twins) left out."""
    return (p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and p.is_file())


def is_dicom_folder(folder: Path) -> bool:
    """Cheap check of a folder (not recursive): does one of its first few files look like DICOM?"""
    folder = Path(folder)
    return folder.is_dir() and any(looks_like_dicom(p) for p in itertools.islice(_candidates(folder), _PEEK))


def _image_header(file: Path) -> Any:
    """A file's header without its pixels; None for an object that has no image (DICOMDIR, report)."""
    import pydicom
    from pydicom.uid import UID

    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True, force=True)
        meta = getattr(ds, "file_meta", None) or {}
        sop = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "") or "")
    except Exception as exc:  # InvalidDicomError, struct.error, EOFError, OSError, ...
        raise DicomError(f"{file}: not a readable DICOM file ({_one_line(exc)})") from exc
    if "Rows" in ds:
        return ds
    if sop and "Image Storage" not in UID(sop).name:
        return None
    raise DicomError(f"{file}: not a whole DICOM image (no Rows tag: truncated, or not DICOM)")


def _numbers(value: Any, count: int, what: str, where: str) -> np.ndarray:
    if value is None or value == "":
        raise DicomError(f"{where}: no {what}")
    try:
        values = [value] if isinstance(value, (int, float, str, bytes)) else list(value)
        out = np.array([float(v) for v in values], float)
    except (TypeError, ValueError):
        out = np.empty(0)
    if out.size != count or not np.isfinite(out).all():
        raise DicomError(f"{where}: {what} {value!r} is not {count} finite number(s)")
    return out


def _attr(ds: Any, frame: int | None, sequence: str, keyword: str) -> Any:
    """A multi-frame file's per-frame, else shared, functional-group value; else the plain tag."""
    if frame is not None:
        for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
            items = ds.get(groups)
            if items and len(items) > index and items[index].get(sequence):
                item = items[index].get(sequence)[0]
                if keyword in item:
                    return item.get(keyword)
    return ds.get(keyword)


def _slices(file: Path, ds: Any) -> list[_Slice]:
    """The 2D images a file's header describes, checked: CT, finite geometry, positive spacing."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality and modality != "CT":
        raise DicomError(f"{file}: modality {modality}, not CT; only CT scans are read")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    shape = tuple(int(_numbers(ds.get(k), 1, k, str(file))[0]) for k in ("Rows", "Columns"))
    bits, signed = int(ds.get("BitsStored", 16) or 16), int(ds.get("PixelRepresentation", 0) or 0) == 1
    low, high = (-(1 << bits - 1), (1 << bits - 1) - 1) if signed else (0, (1 << bits) - 1)
    integer = int(ds.get("BitsAllocated", 16) or 16) <= 16 and "FloatPixelData" not in ds
    out = []
    for frame in range(frames) if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds else [None]:
        where = str(file) if frame is None else f"{file} (frame {frame + 1})"

        def number(sequence: str, keyword: str, count: int, default: Any = None, frame=frame,
                   where=where) -> np.ndarray:
            value = _attr(ds, frame, sequence, keyword)
            return _numbers(default if value in (None, "") else value, count, keyword, where)

        position = number("PlanePositionSequence", "ImagePositionPatient", 3)
        orientation = number("PlaneOrientationSequence", "ImageOrientationPatient", 6)
        u, v = orientation[:3], orientation[3:]
        if abs(np.linalg.norm(u) - 1) > 1e-2 or abs(np.linalg.norm(v) - 1) > 1e-2 or abs(u @ v) > 1e-2:
            raise DicomError(f"{where}: ImageOrientationPatient {orientation.tolist()} is not two "
                             "perpendicular unit vectors")
        spacing = number("PixelMeasuresSequence", "PixelSpacing", 2)
        if (spacing <= 0).any():
            raise DicomError(f"{where}: PixelSpacing {spacing.tolist()} mm is not positive")
        slope = float(number("PixelValueTransformationSequence", "RescaleSlope", 1, 1.0)[0])
        if slope == 0:
            raise DicomError(f"{where}: RescaleSlope is 0")
        intercept = float(number("PixelValueTransformationSequence", "RescaleIntercept", 1, 0.0)[0])
        hu = _attr(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept") not in (None, "")
        thickness = [_attr(ds, frame, "PixelMeasuresSequence", k) for k in ("SpacingBetweenSlices", "SliceThickness")]
        thickness = next((float(t) for t in thickness if t not in (None, "") and float(t) > 0), None)
        fits = integer and slope == 1 and intercept.is_integer() and -32768 <= low + intercept \
            and high + intercept <= 32767
        orientation = np.concatenate([u / np.linalg.norm(u), v / np.linalg.norm(v)])
        out.append(_Slice(file, frame, where, position, orientation, spacing, shape, slope, intercept, thickness,
                          bool(fits), hu))
    return out


def _read_slices(file: Path, ds: Any) -> list[_Slice]:
    try:
        return _slices(file, ds)
    except DicomError:
        raise
    except Exception as exc:  # a malformed element fails as it is decoded
        raise DicomError(f"{file}: broken DICOM header ({_one_line(exc)})") from exc


def _series(folder: Path, series: str | None) -> list[_Slice]:
    """The slices of the folder's one series, or of ``series``; stray non-DICOM files are ignored."""
    files = [p for p in _candidates(folder) if looks_like_dicom(p)]
    if not files:
        raise DicomError(f"{folder}: no DICOM files in this folder")
    groups: dict[str, list] = defaultdict(list)
    for file in files:
        ds = _image_header(file)
        if ds is not None:
            groups[str(ds.get("SeriesInstanceUID", "") or "")].append((file, ds))
    if not groups:
        raise DicomError(f"{folder}: no DICOM images in this folder (a DICOMDIR? the images may be in subfolders)")
    if series is not None and series not in groups:
        raise DicomError(f"{folder}: no series {series} here; the series are {', '.join(groups)}")
    if series is None and len(groups) > 1:
        listing = "; ".join(f"{uid} ({items[0][1].get('SeriesDescription', '') or 'no description'}, "
                            f"{len(items)} files)" for uid, items in groups.items())
        raise DicomError(f"{folder}: {len(groups)} series in one folder: {listing}; choose one with --series UID")
    chosen = groups[series] if series is not None else next(iter(groups.values()))
    return [s for file, ds in chosen for s in _read_slices(file, ds)]


def _sorted_geometry(slices: list[_Slice], source: str) -> tuple[list[_Slice], np.ndarray]:
    """The slices in order along their normal, and the LPS affine of the (column, row, slice) array."""
    first = slices[0]
    for s in slices[1:]:
        if not np.allclose(s.orientation, first.orientation, atol=1e-4):
            raise DicomError(f"{s.where}: mixed orientations in one series (ImageOrientationPatient "
                             f"{s.orientation.round(5).tolist()}; {first.orientation.round(5).tolist()} "
                             f"in {first.where})")
        if s.shape != first.shape or not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            raise DicomError(f"{s.where}: mixed image sizes in one series ({s.shape} pixels of "
                             f"{s.pixel_spacing.tolist()} mm; {first.shape} of {first.pixel_spacing.tolist()} "
                             f"mm in {first.where})")
    along_row, along_column = first.orientation[:3], first.orientation[3:]
    normal = np.cross(along_row, along_column)
    slices = sorted(slices, key=lambda s: float(s.position @ normal))
    steps = np.diff([s.position @ normal for s in slices])
    if len(slices) > 1:
        median = float(np.median(steps))
        duplicate = steps <= max(1e-6, 1e-3 * median)
        if duplicate.any():
            a, b = slices[int(np.argmax(duplicate))], slices[int(np.argmax(duplicate)) + 1]
            raise DicomError(f"{b.where}: the same slice position {b.position.tolist()} as {a.where}")
        gap = steps > 1.5 * steps.min()  # the smallest step, as a median can be a gap in a short series
        if gap.any():
            k = int(np.argmax(gap))
            raise DicomError(f"{source}: missing slice between positions {slices[k].position.tolist()} and "
                             f"{slices[k + 1].position.tolist()} ({steps[k]:.6g} mm apart, slices are "
                             f"{steps.min():.6g} mm apart)")
        slice_step = (slices[-1].position - slices[0].position) / (len(slices) - 1)
        tilt = np.degrees(np.arccos(min(1.0, abs(slice_step @ normal) / np.linalg.norm(slice_step))))
        if tilt > 0.5:  # a gantry tilt: the voxels are sheared, which our axis swaps and flips cannot undo
            raise DicomError(f"{source}: the slices are offset sideways ({tilt:.1f}° gantry tilt); resample the "
                             "series to an orthogonal grid first (e.g. with dcm2niix or 3D Slicer)")
    else:
        slice_step = normal * (first.thickness or 1.0)  # a placeholder without SliceThickness: see read_dicom
    affine = np.eye(4)
    affine[:3, 0] = along_row * first.pixel_spacing[1]  # column index i
    affine[:3, 1] = along_column * first.pixel_spacing[0]  # row index j
    affine[:3, 2] = slice_step
    affine[:3, 3] = slices[0].position
    return slices, affine


def _pixels(file: Path) -> np.ndarray:
    """A file's stored pixels as (frames, rows, columns)."""
    import pydicom

    try:
        pixels = pydicom.dcmread(file).pixel_array
    except Exception as exc:  # truncated data, a compression without its decoder, ...
        raise DicomError(f"{file}: pixel data cannot be read ({_one_line(exc)})") from exc
    return pixels[None] if pixels.ndim == 2 else pixels


def _hu(pixels: np.ndarray, s: _Slice, dtype: np.dtype) -> np.ndarray:
    frame = s.frame or 0
    if pixels.ndim != 3 or pixels.shape[1:] != s.shape or frame >= len(pixels):
        raise DicomError(f"{s.where}: pixel data of shape {pixels.shape} does not match the header "
                         f"({s.shape} pixels)")
    if dtype == np.int16:
        return (pixels[frame].astype(np.int32) + int(s.intercept)).astype(np.int16)
    return (pixels[frame] * s.slope + s.intercept).astype(np.float32)


def _load(s: _Slice, dtype: np.dtype) -> np.ndarray:
    return _hu(_pixels(s.file), s, dtype)


def _stack(slices: list[_Slice], dtype: np.dtype, lazy: bool) -> Any:
    """The (slice, row, column) HU volume: read now, or as a dask array of one chunk per file."""
    if lazy and all(s.frame is None for s in slices):
        import dask
        import dask.array as da

        load = dask.delayed(_load, pure=True)  # a module function: picklable for a cluster
        return da.stack([da.from_delayed(load(s, dtype), shape=s.shape, dtype=dtype) for s in slices])
    volume, by_file = np.empty((len(slices), *slices[0].shape), dtype), defaultdict(list)
    for k, s in enumerate(slices):
        by_file[s.file].append((k, s))
    for file, items in by_file.items():  # each file read once, however many frames it holds
        pixels = _pixels(file)
        for k, s in items:
            volume[k] = _hu(pixels, s, dtype)
    if lazy:  # a multi-frame file is one object: read whole, then wrapped
        import dask.array as da

        return da.from_array(volume, chunks=(1, -1, -1))
    return volume


def read_dicom(path: str | Path, series: str | None = None, lazy: bool = False) -> Scan:
    """A CT scan in HU, (z, y, x) RAS, spacing in mm, from a DICOM folder or file.

    ``series`` picks one SeriesInstanceUID of a folder holding several. ``lazy`` returns a dask
    array reading one slice file per chunk (a multi-frame file is read whole, then wrapped).
    ``calibrated`` is False when a file states no rescale (raw values, not HU).
    """
    path = Path(path)
    if path.is_dir():
        slices = _series(path, series)
    elif path.is_file():
        ds = _image_header(path)
        if ds is None:
            raise DicomError(f"{path}: a DICOM object without an image")
        if series is not None and str(ds.get("SeriesInstanceUID", "")) != series:
            raise DicomError(f"{path}: belongs to series {ds.get('SeriesInstanceUID', '')}, not {series}")
        slices = _read_slices(path, ds)
    else:
        raise DicomError(f"{path}: no such file or folder")
    slices, affine_lps = _sorted_geometry(slices, str(path))
    dtype = np.dtype(np.int16 if all(s.fits_int16 for s in slices) else np.float32)
    stack = _stack(slices, dtype, lazy)
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps  # LPS -> RAS
    image, spacing, geometry = to_zyx(stack.transpose(2, 1, 0), affine_ras, 1.0, source=str(path))
    if isinstance(image, np.ndarray):
        image = np.ascontiguousarray(image)
    if len(slices) == 1 and not slices[0].thickness:  # one slice, no thickness: the z size is unknown
        spacing = None  # read_scan then asks for --spacing rather than taking 1 mm
    return Scan(image, spacing, source=str(path), geometry=geometry, calibrated=all(s.hu for s in slices))
