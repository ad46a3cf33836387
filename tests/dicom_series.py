"""Writing small CT volumes as DICOM for the tests: a series of slice files, or one Enhanced CT file.

The files show the same world image as a plain (z, y, x) RAS TIFF of the volume would (x to the
Right, y Anterior, z Superior, voxel (0, 0, 0) at the world origin), under any axis-aligned
ImageOrientationPatient: the pixels, positions and spacings are worked out here from the LPS
conventions directly, without the reader's geometry code.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"
AXIAL = (1, 0, 0, 0, 1, 0)  #: rows run to the patient's Left, columns to Posterior (LPS)


def _ds(values) -> list[str]:
    return [f"{float(v):.10g}" for v in np.atleast_1d(values)]


def layout(volume_zyx: np.ndarray, spacing_zyx, orientation=AXIAL):
    """(slice, row, column) pixels, PixelSpacing, slice positions (LPS) and slice spacing showing
    ``volume_zyx`` under an axis-aligned ``orientation`` (ImageOrientationPatient)."""
    iop = np.asarray(orientation, float)
    directions_lps = [iop[:3], iop[3:], np.cross(iop[:3], iop[3:])]  # column, row, slice index
    ras = np.asarray(volume_zyx).transpose(2, 1, 0)  # (x, y, z)
    spacing_ras = np.asarray(spacing_zyx, float)[::-1]
    axes, flips = [], []
    for direction in directions_lps:
        d_ras = direction * [-1, -1, 1]
        axis = int(np.argmax(np.abs(d_ras)))
        assert np.isclose(abs(d_ras[axis]), 1), "axis-aligned orientations only"
        axes.append(axis)
        flips.append(bool(d_ras[axis] < 0))
    data = ras.transpose(axes)[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    origin_ras = np.array([0.0, 0.0, 0.0])
    for axis, flip in zip(axes, flips):
        if flip:  # index 0 of this file axis is the far end of the RAS axis
            origin_ras[axis] = (ras.shape[axis] - 1) * spacing_ras[axis]
    origin_lps = origin_ras * [-1, -1, 1]
    step = spacing_ras[axes[2]]
    positions = [origin_lps + k * step * directions_lps[2] for k in range(data.shape[2])]
    pixel_spacing = (spacing_ras[axes[1]], spacing_ras[axes[0]])  # (between rows, between columns)
    return data.transpose(2, 1, 0), pixel_spacing, positions, step


def _stored(hu: np.ndarray, slope, intercept) -> np.ndarray:
    """Stored values for HU (one slope/intercept per slice), as int16 or uint16 as the range needs."""
    slope = np.asarray(slope, float).reshape(-1, 1, 1)
    intercept = np.asarray(intercept, float).reshape(-1, 1, 1)
    stored = np.round((hu - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 65535 or (stored.min() < 0 and stored.max() > 32767):
        raise ValueError("the volume does not fit 16-bit pixels with this rescale")
    return stored.astype(np.int16 if stored.min() < 0 else np.uint16)


def _file(path: Path, sop_class: str, pixels: np.ndarray, series_uid: str, modality: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = modality, series_uid
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesDescription = f"phantom {series_uid[-6:]}"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    signed = pixels.dtype == np.int16
    fits12 = (-2048 <= pixels.min() and pixels.max() <= 2047) if signed else pixels.max() <= 4095
    ds.BitsAllocated, ds.BitsStored = 16, 12 if fits12 else 16
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, int(signed)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def write_dicom_series(folder, volume_zyx_hu: np.ndarray, spacing_zyx_mm, *, slope=1.0, intercept=-1024.0,
                       shuffle: bool = True, series_uid: str | None = None, orientation=None,
                       modality: str = "CT", seed: int = 0) -> list[Path]:
    """One CT slice file per slice of the volume; the paths in slice order (along the normal).

    ``slope``/``intercept`` may be one value or one per slice. With ``shuffle`` the file names and
    InstanceNumbers are random, so the order can only come from the positions.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    slices, pixel_spacing, positions, step = layout(volume_zyx_hu, spacing_zyx_mm, orientation or AXIAL)
    n = len(slices)
    slopes, intercepts = np.broadcast_to(slope, (n,)), np.broadcast_to(intercept, (n,))
    stored = _stored(slices, slopes, intercepts)
    series_uid = series_uid or generate_uid()
    rng = np.random.default_rng(seed)
    numbers = rng.permutation(n) + 1 if shuffle else np.arange(n) + 1
    paths = []
    for k in range(n):
        name = f"{uuid.uuid4().hex[:12]}.dcm" if shuffle else f"slice_{k:04d}.dcm"
        path = folder / name
        ds = _file(path, CT_IMAGE, stored[k], series_uid, modality)
        ds.InstanceNumber = int(numbers[k])
        ds.ImagePositionPatient = _ds(positions[k])
        ds.ImageOrientationPatient = _ds(orientation or AXIAL)
        ds.PixelSpacing = _ds(pixel_spacing)
        ds.SliceThickness = _ds(step)[0]
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slopes[k])[0], _ds(intercepts[k])[0]
        ds.RescaleType = "HU"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _item(**values) -> Dataset:
    item = Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


def write_multiframe_ct(path, volume_zyx_hu: np.ndarray, spacing_zyx_mm, *, slope=1.0, intercept=-1024.0,
                        shuffle: bool = True, orientation=None, per_frame_rescale: bool = False,
                        seed: int = 0) -> Path:
    """One Enhanced CT file holding every slice as a frame, frames in random order when ``shuffle``.

    Orientation and pixel spacing are shared functional groups; the rescale is shared, or per frame
    with ``per_frame_rescale`` (then ``slope``/``intercept`` may be one per slice); each frame's
    position is in its own functional group.
    """
    path = Path(path)
    slices, pixel_spacing, positions, step = layout(volume_zyx_hu, spacing_zyx_mm, orientation or AXIAL)
    n = len(slices)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    slopes, intercepts = np.broadcast_to(slope, (n,)), np.broadcast_to(intercept, (n,))
    stored = _stored(slices, slopes, intercepts)[order]
    ds = _file(path, ENHANCED_CT_IMAGE, stored, generate_uid(), "CT")
    ds.NumberOfFrames = n
    rescales = [_item(RescaleSlope=_ds(slopes[k])[0], RescaleIntercept=_ds(intercepts[k])[0], RescaleType="HU")
                for k in range(n)]
    shared = _item(PixelMeasuresSequence=[_item(PixelSpacing=_ds(pixel_spacing), SliceThickness=_ds(step)[0])],
                   PlaneOrientationSequence=[_item(ImageOrientationPatient=_ds(orientation or AXIAL))])
    if not per_frame_rescale:
        assert len(set(slopes)) == 1 and len(set(intercepts)) == 1, "one rescale for all, or per frame"
        shared.PixelValueTransformationSequence = [rescales[0]]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in order:
        frame = _item(PlanePositionSequence=[_item(ImagePositionPatient=_ds(positions[k]))])
        if per_frame_rescale:
            frame.PixelValueTransformationSequence = [rescales[k]]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.save_as(path, enforce_file_format=True)
    return path
