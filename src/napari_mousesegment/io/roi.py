"""ImageJ/Fiji ROIs: polygon rasterisation in ImageJ's convention, and RoiSet zips via roifile.

Instance labels become one ROI per instance per frame that ImageJ fills back to exactly that
instance: a polygon for an instance in one piece without holes, else a composite ROI of every
outline (each piece's and each hole's), which ImageJ fills even-odd. Outlines cut pixel corners by
a quarter pixel, so no pixel centre lies on one. Each ROI carries its organ's ImageJ group and the
colour ImageJ draws that group in (:func:`~napari_mousesegment.organs.roi_style`).

ImageJ puts pixel (x, y) in the square [x, x+1) x [y, y+1), so a pixel belongs to a polygon when
its centre (x+0.5, y+0.5) is inside. A centre exactly on the boundary is inside on the right and
lower boundaries and outside on the left and upper ones, as ImageJ 1.53t fills. Following that
rule exactly is what makes our masks and ImageJ's own fill of the same ROI agree pixel for pixel
(checked against ImageJ 1.53t in the tests, with polygons full of such ties).

Ovals, rectangles (plain or rounded) and composite shapes follow ImageJ 1.53t's own masks: an
oval or rectangle fills by its integer bounds even when ImageJ stored sub-pixel ones, a pixel is in
an oval or a rounded corner when its centre is, and a composite is the even-odd fill of its
outlines (so holes stay holes). Rotated ellipses and rectangles are polygons to ImageJ.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import roifile
from roifile import ROI_OPTIONS, ROI_SUBTYPE, ROI_TYPE, ImagejRoi

from ..organs import roi_style
from .files import regular_file
from .limits import check_zip_member

#: ROI types that enclose an area traced by a list of vertices.
POLYGON_TYPES = (ROI_TYPE.POLYGON, ROI_TYPE.FREEHAND, ROI_TYPE.TRACED)
#: Subtypes of those that are still plain outlines to ImageJ (rotated ellipses and rectangles).
_OUTLINE_SUBTYPES = (0, ROI_SUBTYPE.ELLIPSE, ROI_SUBTYPE.ROTATED_RECT)


#: Largest ROI file (or RoiSet member) read, in bytes: 5 million sub-pixel vertices. Damaged
#: sizes are refused rather than inflated.
MAX_ROI_BYTES = 64 << 20


def brief(exc: BaseException) -> str:
    """An exception as one short line (type and first line of its message), for messages that
    wrap a library's error."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    if isinstance(exc, ValueError) and text:  # our own errors and numpy's: the text says it all
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RoiError(ValueError):
    """An ROI file that cannot be read, or an ROI that cannot become a mask."""


class RoiNoArea(RoiError):
    """An ROI type that encloses no area: a line, a point or text."""


class RoiSkipped(UserWarning):
    """An ROI of a type that encloses no area (line, point, text) was left out of the masks."""


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
    # An edge covers the rows whose centre c = row + 0.5 has y1 < c <= y2: a pixel centre exactly on
    # a horizontal boundary is outside for the upper boundary and inside for the lower one.
    r1, r2 = np.floor(y1 - 0.5) + 1, np.floor(y2 - 0.5) + 1
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


def _corners(xy: np.ndarray) -> np.ndarray:
    """A closed outline without its repeated closing point and without points inside straight runs."""
    xy = xy[:-1]
    ahead, behind = np.roll(xy, -1, 0) - xy, xy - np.roll(xy, 1, 0)
    turn = np.abs(ahead[:, 0] * behind[:, 1] - ahead[:, 1] * behind[:, 0]) > 1e-9
    return xy[turn]


def mask_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """(x, y) outlines of every boundary of a 2D mask (each piece's outside and each hole's), whose
    even-odd fill by ImageJ is the mask again, pixel for pixel.

    The outlines run along pixel edges with corners cut by a quarter pixel (marching squares on the
    mask at twice its resolution), so no pixel centre lies on them and there are no ties. Pieces
    that touch only at a corner get separate outlines that do not touch. Outsides and holes run in
    opposite directions, so a non-zero winding fill gives the same mask.
    """
    from skimage.measure import find_contours

    if not np.any(mask):
        raise RoiError("an empty mask has no outline")
    fine = np.pad(np.repeat(np.repeat(np.asarray(mask, bool), 2, 0), 2, 1), 1).astype(np.float32)
    # (row, col) on the fine, padded grid -> ImageJ's (x, y): a fine sample i sits at (i - 1 + 0.5) / 2
    return [_corners((contour - 0.5) / 2)[:, ::-1] for contour in find_contours(fine, 0.5)]


def composite_roi(outlines: Sequence[np.ndarray], name: str, frame: int | None = None) -> ImagejRoi:
    """A composite (shape) ROI of closed (x, y) outlines, which ImageJ fills even-odd.

    ImageJ stores it as a path of MOVETO, LINETO and CLOSE steps in image coordinates; ``frame``
    is 0-based, as for :func:`polygon_roi`.
    """
    outlines = [np.asarray(xy, dtype=np.float64) for xy in outlines]
    steps = []
    for xy in outlines:
        ops = np.ones((len(xy), 1))
        ops[0] = 0  # MOVETO the first vertex, LINETO the others, then CLOSE (4)
        steps += [np.hstack([ops, xy]).ravel(), [4.0]]
    points = np.concatenate(outlines)
    left, top = np.floor(points.min(0)).astype(int)
    right, bottom = np.ceil(points.max(0)).astype(int)
    path = np.concatenate(steps).astype(np.float32)
    return ImagejRoi(roitype=ROI_TYPE.RECT, name=name, position=0 if frame is None else frame + 1,
                     left=int(left), top=int(top), right=int(right), bottom=int(bottom),
                     shape_roi_size=len(path), multi_coordinates=path)


def organ_style(roi: ImagejRoi, organ: str) -> ImagejRoi:
    """Give an ROI its organ's ImageJ group and stroke colour (:func:`napari_mousesegment.organs.roi_style`)."""
    roi.group, (red, green, blue) = roi_style(organ)
    roi.stroke_color = bytes((255, red, green, blue))  # ARGB, opaque
    return roi


def labels_to_rois(labels: np.ndarray, organ: str = "organ") -> list[ImagejRoi]:
    """One ROI per instance per frame of (N, H, W) (or (H, W)) instance labels, filled by ImageJ
    to exactly that instance.

    An instance in one piece without holes is a polygon; one in several pieces or with holes is a
    composite ROI of all its outlines. Names carry organ, 1-based frame and instance
    (``heart_f07_2``), never ImageJ's NNNN-NNNN-NNNN form; each ROI sits on its frame's stack
    position and carries the organ's group and stroke colour.
    """
    stack = labels[None] if labels.ndim == 2 else labels
    if stack.ndim != 3:
        raise RoiError(f"labels must be 2D or (frames, height, width), got shape {labels.shape}")
    from scipy import ndimage as ndi

    rois = []
    for frame, plane in enumerate(stack):
        values = np.unique(plane[plane > 0])
        # ids renumbered 1..n first: find_objects makes a list as long as the largest id (up to 2**64)
        compact = np.where(plane > 0, np.searchsorted(values, plane) + 1, 0)
        boxes = ndi.find_objects(compact)  # each instance outlined inside its own bounding box: fewer pixels
        for k, value in enumerate(values, start=1):
            rows, cols = boxes[k - 1]
            outlines = [xy + (cols.start, rows.start) for xy in mask_outlines(plane[rows, cols] == value)]
            name = f"{organ}_f{frame + 1:02d}_{k}"
            position = frame if labels.ndim == 3 else None
            if len(outlines) == 1:
                roi = polygon_roi(outlines[0], name, position)
            else:
                roi = composite_roi(outlines, name, position)
            rois.append(organ_style(roi, organ))
    return rois


def roi_frame(roi: ImagejRoi) -> int | None:
    """0-based frame of an ROI: its stack position, else its z or t position; None if unset.

    A hyperstack ROI stores c, z and t; a series is a run of z slices or of time points, so the
    one of z and t that is above 1 is the frame (both above 1 is ambiguous and refused).
    """
    if roi.position:
        return int(roi.position) - 1
    z, t = int(roi.z_position or 0), int(roi.t_position or 0)
    if z > 1 and t > 1:
        raise RoiError(f"ROI {roi.name!r} has both z={z} and t={t}; which one is the frame is ambiguous")
    value = max(z, t)
    return value - 1 if value else None


def roi_polygon(roi: ImagejRoi) -> np.ndarray:
    """Absolute (x, y) vertices of a polygon-type ROI, sub-pixel when ImageJ stored them so."""
    if roi.roitype not in POLYGON_TYPES or roi.subtype not in _OUTLINE_SUBTYPES:
        raise RoiError(f"ROI {roi.name!r} is a {ROI_TYPE(roi.roitype).name}, not a polygon")
    if roi.options & ROI_OPTIONS.SUB_PIXEL_RESOLUTION and roi.subpixel_coordinates is not None:
        return np.asarray(roi.subpixel_coordinates, dtype=np.float64)
    return np.asarray(roi.integer_coordinates, dtype=np.float64) + [roi.left, roi.top]


def _type_name(roi: ImagejRoi) -> str:
    if roi.subtype:
        return ROI_SUBTYPE(roi.subtype).name.lower().replace("_", " ")
    return ROI_TYPE(roi.roitype).name.lower()


def _centres(shape: tuple[int, int], top: int, left: int, bottom: int, right: int):
    """Pixel-centre coordinates (y, x) of the bounding box, clipped to the image."""
    rows = np.arange(max(top, 0), min(bottom, shape[0])) + 0.5
    cols = np.arange(max(left, 0), min(right, shape[1])) + 0.5
    return rows[:, None], cols[None, :], (slice(max(top, 0), max(min(bottom, shape[0]), 0)),
                                          slice(max(left, 0), max(min(right, shape[1]), 0)))


def _box_mask(roi: ImagejRoi, shape: tuple[int, int]) -> np.ndarray:
    """Ovals and (rounded) rectangles, by their integer bounds as ImageJ 1.53t fills them."""
    top, left, bottom, right = int(roi.top), int(roi.left), int(roi.bottom), int(roi.right)
    mask = np.zeros(shape, dtype=bool)
    y, x, box = _centres(shape, top, left, bottom, right)
    if roi.roitype == ROI_TYPE.OVAL:
        a, b = (right - left) / 2, (bottom - top) / 2
        inside = ((x - left - a) / a) ** 2 + ((y - top - b) / b) ** 2 <= 1.0
    else:
        radius = min(roi.rounded_rect_arc_size / 2, (right - left) / 2, (bottom - top) / 2)
        nearest_x = np.clip(x, left + radius, right - radius)
        nearest_y = np.clip(y, top + radius, bottom - radius)
        inside = (x - nearest_x) ** 2 + (y - nearest_y) ** 2 <= radius**2
    mask[box] = np.broadcast_to(inside, (box[0].stop - box[0].start, box[1].stop - box[1].start))
    return mask


def roi_mask(roi: ImagejRoi, shape: tuple[int, int]) -> np.ndarray:
    """The pixels an area ROI covers, as ImageJ 1.53t's own mask of it.

    Polygons, freehand and traced outlines, rotated ellipses and rectangles, ovals, rectangles
    (rounded too) and composite shapes enclose an area. Lines, points and text do not: they raise
    :class:`RoiError` rather than being turned into some mask.
    """
    if roi.composite:
        mask = np.zeros(shape, dtype=bool)
        for outline in roi.coordinates(multi=True):
            if len(outline) >= 3:
                mask ^= fill_polygon(outline, shape)
        return mask
    if roi.roitype in POLYGON_TYPES and roi.subtype in _OUTLINE_SUBTYPES:
        return fill_polygon(roi_polygon(roi), shape)
    if roi.roitype in (ROI_TYPE.OVAL, ROI_TYPE.RECT) and roi.subtype == 0:
        if roi.right <= roi.left or roi.bottom <= roi.top:
            raise RoiError(f"ROI {roi.name!r} is an empty {_type_name(roi)}")
        return _box_mask(roi, shape)
    raise RoiNoArea(f"ROI {roi.name!r} is a {_type_name(roi)}, which encloses no area")


def write_roiset(path: str | os.PathLike, rois: Sequence[ImagejRoi], allow_empty: bool = False) -> Path:
    """Write ROIs to an ImageJ RoiSet zip, replacing the file (roifile appends by default).

    The zip is written to a temporary name and renamed, so an interrupted write never leaves a
    half-written RoiSet in place of a good one. No ROIs is an error unless ``allow_empty`` (an
    organ found nowhere): ImageJ 1.53t will not load such a zip (a batch macro waits on its dialog).
    """
    path = Path(path)
    if not rois and not allow_empty:
        raise RoiError(f"{path}: no ROIs to write (ImageJ cannot open an empty RoiSet)")
    names = [roi.name for roi in rois]
    if len(set(names)) != len(names):
        raise RoiError(f"{path}: ROI names must be unique within a RoiSet")
    tmp = path.with_name(path.name + ".partial")
    if rois:
        roifile.roiwrite(tmp, rois, mode="w")
    else:
        zipfile.ZipFile(tmp, "w").close()
    os.replace(tmp, path)
    return path


def _named(roi: ImagejRoi, fallback: str) -> ImagejRoi:
    """ImageJ names an ROI without a stored name after its file, as the ROI Manager does."""
    if not roi.name:
        roi.name = fallback
    return roi


def read_rois(path: str | os.PathLike) -> list[ImagejRoi]:
    """Read a RoiSet ``.zip`` or a single ``.roi`` file, with errors that name the file.

    Zip members are read one by one, so members that share a name are all kept (with a warning);
    folders and macOS resource forks (``__MACOSX/``, ``._*``) inside a zip are ignored.
    """
    path = Path(path)
    try:
        regular_file(path, "ROI file")  # a named pipe would block the read forever
    except ValueError as exc:
        raise RoiError(str(exc)) from None
    if path.suffix.lower() != ".zip" and path.stat().st_size > MAX_ROI_BYTES:
        raise RoiError(f"{path}: {path.stat().st_size} bytes, more than an ImageJ ROI holds ({MAX_ROI_BYTES})")
    try:
        if path.suffix.lower() != ".zip":
            return [_named(ImagejRoi.frombytes(path.read_bytes()), path.stem)]
        rois = []
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")
                       and not Path(m.filename).name.startswith("._")]
            bad = [m.filename for m in members if not m.filename.lower().endswith(".roi")]
            if bad:
                raise RoiError(f"{path}: zip members that are not ImageJ ROIs: {bad[:5]}")
            for member in members:
                try:  # declared size, checked before anything is inflated
                    check_zip_member(path, member, MAX_ROI_BYTES)
                except ValueError as exc:
                    raise RoiError(f"{exc} (an ImageJ ROI holds at most {MAX_ROI_BYTES} bytes)") from None
                try:
                    rois.append(_named(ImagejRoi.frombytes(archive.read(member)), Path(member.filename).stem))
                except Exception as exc:  # roifile raises many types for damaged members
                    raise RoiError(f"{path}: member {member.filename!r} is not a readable ImageJ ROI "
                                   f"({brief(exc)})") from exc
    except RoiError:
        raise
    except Exception as exc:  # zipfile, zlib and roifile raise many types for damaged files
        raise RoiError(f"{path}: not a readable ImageJ ROI file ({brief(exc)})") from exc
    names = [roi.name for roi in rois]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        warnings.warn(f"{path}: ROI names used more than once (each ROI is still read): {repeated[:5]}",
                      stacklevel=2)
    return rois


def rois_to_labels(
    rois: Iterable[ImagejRoi], shape: tuple[int, int, int], *, source: str = "ROIs",
    default_frame: int | None = None,
) -> np.ndarray:
    """Fill area ROIs into a (frames, height, width) instance stack, ids 1.. in ROI order.

    ROIs that enclose no area (lines, points, text) are skipped with a :class:`RoiSkipped`
    warning that names them; their ids stay unused so ids still match the ROI order. An ROI on a
    frame the stack lacks, or wholly outside the image, is an error that names the ROI. ROIs
    without a stored position go on ``default_frame`` (0-based), or frame 0 of a single image.
    """
    labels = np.zeros(shape, dtype=np.uint16)
    for index, roi in enumerate(rois, start=1):
        try:
            mask = roi_mask(roi, shape[1:])
            frame = roi_frame(roi)
        except RoiNoArea as exc:
            warnings.warn(f"{source}: skipped {exc}", RoiSkipped, stacklevel=2)
            continue
        except RoiError as exc:
            raise RoiError(f"{source}: {exc}") from exc
        except Exception as exc:  # a damaged ROI that roifile read: unknown types, coordinates, sizes
            raise RoiError(f"{source}: ROI {index} ({roi.name!r}) cannot be filled ({brief(exc)})") from exc
        if frame is None:
            frame = 0 if default_frame is None and shape[0] == 1 else default_frame
        if frame is None or not 0 <= frame < shape[0]:
            where = "no frame" if frame is None else f"frame {frame + 1}"
            raise RoiError(f"{source}: ROI {roi.name!r} is on {where}; the stack has frames 1..{shape[0]}")
        if not mask.any():
            raise RoiError(f"{source}: ROI {roi.name!r} on frame {frame + 1} lies outside the "
                           f"{shape[2]}x{shape[1]} image")
        labels[frame][mask] = index
    return labels
