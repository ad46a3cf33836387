"""ImageJ RoiSets from instance labels and back: ``mousesegment roi export|import``, and the RoiSets
that prediction, the demo and the ultrasound widget write."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..io.atomic import write_atomic
from ..io.files import regular_file
from ..io.limits import check_allocation
from ..io.roi import RoiError, labels_to_rois, read_rois, rois_to_labels, write_roiset
from ..io.tiff import read_array, write_stack
from ..organs import roi_style

#: Files written beside RoiSets so that Fiji can open them on their frames.
FIJI_FILES = ["frames.tif", "README.txt"]


def write_rois(path: Path, labels: np.ndarray, organ: str, log=print, shown: Path | None = None) -> Path:
    """A RoiSet of the instances, overwriting the file; an empty prediction gives an empty RoiSet.

    ``shown`` is the path to name in the log when ``path`` is a staging file.
    """
    rois = labels_to_rois(labels, organ)
    if not rois:
        log(f"  {organ}: nothing found; wrote an empty RoiSet {shown or path}")
    return write_roiset(path, rois, allow_empty=True)


def fiji_readme(organs: Iterable[str], shape: tuple[int, ...], labels: bool = True) -> str:
    """How to open frames.tif and the organs' RoiSets in Fiji, and each organ's ROI group and
    colour; ``labels`` when ORGAN_labels.tif stacks are there too."""
    files = [("frames.tif", f"the {shape[0]} frames ({shape[2]}x{shape[1]} pixels), one slice each")]
    groups = []
    for organ in sorted(organs):
        files.append((f"{organ}_RoiSet.zip", f"{organ}: one ROI per instance per frame, on its slice"))
        if labels:
            files.append((f"{organ}_labels.tif", f"{organ}: the same instances as a label stack"))
        group, (red, green, blue) = roi_style(organ)
        groups.append(f"  {organ:<20} group {group:<3} colour #{red:02x}{green:02x}{blue:02x}")
    width = max(len(name) for name, _ in files) + 2
    return "\n".join([
        "Segmentation by napari-mousesegment, ready for Fiji (ImageJ).", "",
        *(f"  {name:<{width}}{what}" for name, what in files), "",
        "To open them in Fiji:",
        "  1. File > Open... and choose frames.tif (or drag it onto the Fiji window).",
        "  2. Analyze > Tools > ROI Manager..., then More >> Open... and choose an ORGAN_RoiSet.zip",
        "     (or drag the zip onto the Fiji window). Repeat for each organ.",
        "  3. Tick Show All in the ROI Manager. Each ROI sits on its own slice (frame); clicking it",
        "     in the list goes to that slice.", "",
        "An instance in several pieces or with holes is one composite ROI, which fills to exactly",
        "that instance. Each organ's ROIs are one ROI group, which Fiji draws in the group's colour",
        "(from its glasbey LUT; an ImageJ without that LUT draws every group in its default ROI colour):",
        *groups, "",
    ])


def write_fiji_files(folder: Path, frames: np.ndarray, organs: Iterable[str], labels: bool = True) -> list[Path]:
    """``folder``/frames.tif, the (N, H, W) stack the RoiSets belong to, and a README.txt saying
    how to open both in Fiji (see :func:`fiji_readme`)."""
    frames = np.asarray(frames)
    text = fiji_readme(organs, frames.shape, labels)
    return [write_stack(folder / FIJI_FILES[0], frames),
            write_atomic(folder / FIJI_FILES[1], lambda tmp: tmp.write_text(text, encoding="utf-8"))]


#: Most voxels of a labels stack ``roi import`` fills (2 GiB of uint16); a larger --shape is a typo,
#: refused before it is allocated. One ultrasound series is 35x240x320 (5 MB).
MAX_LABEL_VOXELS = 1 << 30


def frames_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """(N, H, W) of the frames an ROI set was drawn on: a stack (TIFF), a montage (split as
    ``mousesegment split`` does), a folder of frames, or one 2D frame (N = 1). For ``roi import --like``."""
    from ..io.composites import CompositeError, read_composite

    path = Path(path)
    if not path.is_dir():
        regular_file(path, "frames file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a frame count other than 35 is fine here
        try:
            return tuple(int(n) for n in read_composite(path).frames.shape)  # type: ignore[return-value]
        except CompositeError:
            if path.is_dir():
                raise
    shape = _image_shape(path)  # not a montage: one frame, gray or colour
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (3, 4)):
        return (1, int(shape[0]), int(shape[1]))
    raise ValueError(f"{path}: not frames, a montage or one frame (shape {shape})")


def _image_shape(path: Path) -> tuple[int, ...]:
    """The shape of the image in a file, from its header where the format allows."""
    import tifffile

    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                return tuple(tif.series[0].shape)
        import imageio.v3 as iio

        return tuple(iio.improps(path).shape)
    except Exception as exc:  # tifffile, imageio and Pillow raise many types for damaged files
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc


def import_rois(source: str | os.PathLike, shape: tuple[int, int, int], out: str | os.PathLike, log=print) -> Path:
    """ROIs (zip or .roi) to a (N, H, W) instance-label TIFF, ids 1.. in ROI order.

    A stack larger than :data:`MAX_LABEL_VOXELS`, or than this machine's memory allows, is refused
    before it is allocated; so is a source without one ROI that encloses an area (no all-zero stack).
    """
    voxels = int(np.prod([int(n) for n in shape], dtype=object))
    if len(shape) != 3 or min(shape) < 1 or voxels > MAX_LABEL_VOXELS:
        raise ValueError(f"--shape {','.join(map(str, shape))}: need 3 positive sizes of at most "
                         f"{MAX_LABEL_VOXELS} voxels in all (2 GiB of labels), got {voxels}")
    check_allocation(2 * voxels, f"--shape {','.join(map(str, shape))}: the labels")
    rois = read_rois(source)
    if not rois:
        raise RoiError(f"{source}: holds no ROIs; nothing to import")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels = rois_to_labels(rois, shape, source=str(source))
    for w in caught:
        log(f"warning: {w.message}")
    if not labels.any():
        raise RoiError(f"{source}: none of its {len(rois)} ROIs encloses an area (lines, points or text); "
                       "nothing to import")
    target = write_stack(Path(out), labels if shape[0] > 1 else labels[0], compress=True)
    log(f"{source}: {len(np.unique(labels[labels > 0]))} ROIs -> {target}")
    return target


def export_rois(labels_path: str | os.PathLike, out: str | os.PathLike, organ: str = "organ", log=print) -> Path:
    """A 2D or (N, H, W) instance-label image to a RoiSet zip (one ROI per instance per frame)."""
    labels = read_array(labels_path)
    if labels.ndim not in (2, 3) or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{labels_path}: expected 2D or (N, H, W) integer instance labels, "
                         f"got {labels.dtype} {labels.shape}")
    if labels.min() < 0:
        raise ValueError(f"{labels_path}: instance labels are 0 (background) or positive, found {labels.min()}")
    target = write_rois(Path(out), labels, organ, log)
    log(f"{labels_path} -> {target}")
    return target
