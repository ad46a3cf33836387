"""ImageJ/Fiji ROIs: polygon rasterisation in ImageJ's convention, and RoiSet zips via roifile.

ImageJ puts pixel (x, y) in the square [x, x+1) x [y, y+1), so a pixel belongs to a polygon when
its centre (x+0.5, y+0.5) is inside; ties on a boundary are broken as in ImageJ's PolygonFiller.
Following that rule exactly is what makes our masks and ImageJ's own fill of the same ROI agree
pixel for pixel (checked against ImageJ 1.53t in the tests).

Known edge case: when a vertex lies exactly on a pixel-centre row and is the polygon's top, ImageJ
1.53t may fill one row less than the newer PolygonFiller rule used here (seen: 2 pixels).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import roifile
from roifile import ROI_OPTIONS, ROI_TYPE, ImagejRoi

#: ROI types that enclose an area traced by a list of vertices.
POLYGON_TYPES = (ROI_TYPE.POLYGON, ROI_TYPE.FREEHAND, ROI_TYPE.TRACED)


class RoiError(ValueError):
    """An ROI file that cannot be read, or an ROI that cannot become a mask."""


def fill_polygon(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a closed polygon exactly as ImageJ fills it.

    Parameters
    ----------
    xy : (n, 2) array
        Vertices as ImageJ stores them: x (column) then y (row), in pixel units.
    shape : (height, width)
        Shape of the output mask; the polygon is clipped to it.

    Returns
    -------
    mask : (height, width) bool array
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) < 3:
        raise RoiError(f"a polygon needs at least 3 (x, y) vertices, got shape {xy.shape}")
    if not np.isfinite(xy).all():
        raise RoiError("polygon vertices contain NaN or infinity")
    height, width = shape
    x1, y1 = xy[:, 0], xy[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    r1, r2 = np.ceil(y1 - 0.5), np.ceil(y2 - 0.5)
    keep = r1 != r2  # horizontal edges (in pixel rows) never cross a row centre
    x1, y1, x2, y2, r1, r2 = (a[keep] for a in (x1, y1, x2, y2, r1, r2))
    swap = r1 > r2
    x1, x2 = np.where(swap, x2, x1), np.where(swap, x1, x2)
    y1, y2 = np.where(swap, y2, y1), np.where(swap, y1, y2)
    r1, r2 = np.minimum(r1, r2), np.maximum(r1, r2)
    slope = (x2 - x1) / (y2 - y1)
    x_at_r1 = x1 + (r1 - y1 + 0.5) * slope + 1e-8

    mask = np.zeros((height, width), dtype=bool)
    if len(r1) == 0:
        return mask
    for row in range(max(int(r1.min()), 0), min(int(r2.max()), height)):
        active = (r1 <= row) & (row < r2)
        xs = np.sort(x_at_r1[active] + (row - r1[active]) * slope[active])
        starts = np.clip(np.trunc(xs[0::2] + 0.5), 0, width).astype(int)
        stops = np.clip(np.trunc(xs[1::2] + 0.5), 0, width).astype(int)
        for start, stop in zip(starts, stops):
            mask[row, start:stop] = True
    return mask


def polygon_roi(xy: np.ndarray, name: str, frame: int | None = None) -> ImagejRoi:
    """Build a polygon ROI (sub-pixel when the vertices are not integers).

    ``frame`` is 0-based; it is stored as ImageJ's 1-based stack position so that the ROI Manager
    puts the ROI on that slice of a plain stack.
    """
    xy = np.asarray(xy)
    roi = ImagejRoi.frompoints(xy, name=name, position=frame)
    roi.roitype = ROI_TYPE.POLYGON  # frompoints defaults to FREEHAND
    roi.options &= ~(ROI_OPTIONS.OVERLAY_BACKGROUNDS | ROI_OPTIONS.OVERLAY_LABELS)
    return roi


def roi_frame(roi: ImagejRoi) -> int | None:
    """0-based frame of an ROI: its stack position, else its z or t position; None if unset."""
    for value in (roi.position, roi.z_position, roi.t_position):
        if value:
            return int(value) - 1
    return None


def roi_polygon(roi: ImagejRoi) -> np.ndarray:
    """Absolute (x, y) vertices of a polygon-type ROI, sub-pixel when ImageJ stored them so."""
    if roi.roitype not in POLYGON_TYPES or roi.subtype != 0:
        raise RoiError(f"ROI {roi.name!r} is a {ROI_TYPE(roi.roitype).name}, not a polygon")
    if roi.options & ROI_OPTIONS.SUB_PIXEL_RESOLUTION and roi.subpixel_coordinates is not None:
        return np.asarray(roi.subpixel_coordinates, dtype=np.float64)
    return np.asarray(roi.integer_coordinates, dtype=np.float64) + [roi.left, roi.top]


def write_roiset(path: str | os.PathLike, rois: Sequence[ImagejRoi]) -> Path:
    """Write ROIs to an ImageJ RoiSet zip, replacing the file (roifile appends by default).

    The zip is written to a temporary name and renamed, so an interrupted write never leaves a
    half-written RoiSet in place of a good one.
    """
    path = Path(path)
    if not rois:
        raise RoiError(f"{path}: no ROIs to write (ImageJ cannot open an empty RoiSet)")
    names = [roi.name for roi in rois]
    if len(set(names)) != len(names):
        raise RoiError(f"{path}: ROI names must be unique within a RoiSet")
    tmp = path.with_name(path.name + ".partial")
    roifile.roiwrite(tmp, rois, mode="w")
    os.replace(tmp, path)
    return path


def read_rois(path: str | os.PathLike) -> list[ImagejRoi]:
    """Read a RoiSet ``.zip`` or a single ``.roi`` file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise RoiError(f"{path}: no such ROI file")
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                bad = [n for n in archive.namelist() if not n.lower().endswith(".roi")]
            if bad:
                raise RoiError(f"{path}: zip members that are not ImageJ ROIs: {bad[:5]}")
        rois = roifile.roiread(path)
    except RoiError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, IndexError) as exc:
        raise RoiError(f"{path}: not a readable ImageJ ROI file ({exc})") from exc
    return list(rois) if isinstance(rois, list) else [rois]


def rois_to_labels(
    rois: Iterable[ImagejRoi], shape: tuple[int, int, int], *, source: str = "ROIs"
) -> np.ndarray:
    """Fill polygon ROIs into a (frames, height, width) instance stack, ids 1.. in ROI order."""
    labels = np.zeros(shape, dtype=np.uint16)
    for index, roi in enumerate(rois, start=1):
        frame = roi_frame(roi)
        if frame is None or not 0 <= frame < shape[0]:
            raise RoiError(f"{source}: ROI {roi.name!r} is on frame {frame}, outside 0..{shape[0] - 1}")
        labels[frame][fill_polygon(roi_polygon(roi), shape[1:])] = index
    return labels
