"""Annotated ultrasound series in the lab's layouts: read into frames plus instance labels, and written.

Folder layout (one folder per series)::

    SERIES/SERIES.tif           the composite: multi-page TIFF, montage (TIFF/PNG/JPEG) or a
                                `frames/` folder of single frames
    SERIES/hearts/frame_07.zip  one folder per organ (hearts, heart, Hearts, ...) of RoiSet zips
    SERIES/livers/07.roi        or single .roi files, one per frame or per instance

Flat layout: the ROI files lie in the series folder itself and name their organ by a keyword in
the file name (``heart_07.roi``, ``RoiSet_liver_f12.zip``).

An ROI's frame is its stored stack position (or z or t position); without one, the last number in
its file name, counted from 1 as ImageJ counts slices.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from roifile import ImagejRoi

from ..organs import US_FOLDERS, US_GRID
from .composites import IMAGE_SUFFIXES, Composite, montage, read_composite, series_composite
from .roi import read_rois, rois_to_labels, write_roiset
from .tiff import write_stack

ROI_SUFFIXES = (".zip", ".roi")


@dataclass
class AnnotatedSeries:
    """Frames of one series and, per annotated organ, a (frames, H, W) instance-label stack."""

    name: str
    folder: Path
    composite: Composite
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def frames(self) -> np.ndarray:
        return self.composite.frames


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^a-z]+", name.lower()) if t]


def _names_organ(word: str, organ: str) -> bool:
    """True when a folder name or file-name token names the organ: heart, hearts, Hearts."""
    organ = organ.lower()
    return word in (organ, organ + "s", organ + "es")


def _frame_from_name(path: Path) -> int | None:
    """0-based frame from a file name, where it is 1-based as ImageJ's slices.

    In order: ImageJ's own ``SSSS-YYYY-XXXX`` names (the slice comes first), a number after
    ``f``/``frame``/``slice`` (``heart_f07_2``, ``frame_07``), else the only number in the name.
    Several bare numbers are ambiguous: None.
    """
    stem = path.stem
    imagej = re.fullmatch(r"(\d{4})-\d{4}-\d{4}(?:-\d+)?", stem)
    if imagej:
        return int(imagej.group(1)) - 1
    tagged = re.search(r"(?:^|[^a-z])(?:f|frame|slice)[_-]?(\d+)", stem.lower())
    if tagged:
        return int(tagged.group(1)) - 1
    numbers = re.findall(r"\d+", stem)
    return int(numbers[0]) - 1 if len(numbers) == 1 else None


def find_composite(folder: Path) -> Path:
    """The composite of a series folder: SERIES.tif first, else the one image or a frames/ folder."""
    folder = Path(folder)
    named = series_composite(folder)
    if named is not None:
        return named
    images = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    stacks = [p for p in images if p.suffix.lower() in (".tif", ".tiff")] or images
    if len(stacks) == 1:
        return stacks[0]
    if not stacks:
        raise FileNotFoundError(f"{folder}: no composite found (expected {folder.name}.tif, an image or frames/)")
    raise ValueError(f"{folder}: several images could be the composite ({', '.join(p.name for p in stacks[:4])}); "
                     f"name it {folder.name}.tif")


def organ_roi_files(folder: Path, organ: str) -> list[Path]:
    """ROI files of one organ: its organ folder (any case, singular or plural), else keyword files."""
    folder = Path(folder)
    subdirs = [p for p in folder.iterdir() if p.is_dir() and _names_organ(p.name.lower(), organ)]
    if len(subdirs) > 1:
        raise ValueError(f"{folder}: several folders for {organ}: {', '.join(p.name for p in subdirs)}")
    where = subdirs[0] if subdirs else folder
    files = sorted((p for p in where.iterdir() if p.is_file() and p.suffix.lower() in ROI_SUFFIXES),
                   key=lambda p: (_frame_from_name(p) or 0, p.name))
    if not subdirs:
        files = [p for p in files if any(_names_organ(t, organ) for t in _tokens(p.stem))]
    return files


def read_series(folder: str | Path, organs: list[str], grid: tuple[int, int] | None = None) -> AnnotatedSeries:
    """Read a series folder: its composite split into frames and each organ's ROIs as instance labels.

    Organs without any ROI file are left out of ``labels``: unannotated, not empty. Instance ids
    run 1.. per frame in ROI order. Errors name the file, the ROI and the frame.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a series folder")
    series = AnnotatedSeries(folder.name, folder, read_composite(find_composite(folder), grid=grid))
    shape = series.frames.shape[:3]
    for organ in organs:
        files = organ_roi_files(folder, organ)
        if not files:
            continue
        labels = np.zeros(shape, np.uint16)
        for path in files:
            rois = read_rois(path)
            filled = rois_to_labels(rois, shape, source=str(path), default_frame=_frame_from_name(path))
            for frame in np.flatnonzero(filled.reshape(len(filled), -1).any(1)):
                _merge_instances(labels[frame], filled[frame], path, int(frame))
        series.labels[organ] = labels
    return series


def _merge_instances(target: np.ndarray, new: np.ndarray, path: Path, frame: int) -> None:
    """Add a file's instances to a frame after those already there, renumbered 1.. in order."""
    next_id = int(target.max()) + 1
    for value in np.unique(new[new > 0]):
        mask = new == value
        if np.any(target[mask] > 0):
            overlap = int(np.count_nonzero(target[mask] > 0))
            warnings.warn(f"{path}: an ROI on frame {frame + 1} overlaps an earlier one by {overlap} pixels; "
                          "the later ROI wins there", stacklevel=3)
        target[mask] = next_id
        next_id += 1


def series_folders(roots: list[str | Path]) -> list[Path]:
    """Series folders given directly, or found one level below each root."""
    found: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder")
        try:
            find_composite(root)
            found.append(root)
            continue
        except (FileNotFoundError, ValueError):
            pass
        children = [p for p in sorted(root.iterdir()) if p.is_dir()]
        for child in children:
            try:
                find_composite(child)
            except (FileNotFoundError, ValueError):
                continue
            found.append(child)
        if not any(p.parent == root for p in found):
            raise FileNotFoundError(f"{root}: neither a series folder nor a folder of series folders")
    return found


def write_series(folder: str | Path, frames: np.ndarray, rois: dict[str, dict[int, list[ImagejRoi]]],
                 name: str | None = None) -> Path:
    """Write a series in the lab's layout: SERIES.tif, SERIES_montage.png (for 35 frames) and, per organ,
    one RoiSet per frame with instances (``rois[organ][frame]``, frames counted from 0) in its folder.

    A frame with no instance of an organ gets no RoiSet, as the lab's annotators leave it.
    """
    root = Path(folder)
    name = name or root.name
    root.mkdir(parents=True, exist_ok=True)
    write_stack(root / f"{name}.tif", frames)
    if len(frames) == US_GRID[0] * US_GRID[1]:
        iio.imwrite(root / f"{name}_montage.png", montage(frames, US_GRID))
    for organ, by_frame in rois.items():
        organ_dir = root / US_FOLDERS.get(organ, organ)
        organ_dir.mkdir(exist_ok=True)
        for frame, found in sorted(by_frame.items()):
            if found:
                write_roiset(organ_dir / f"frame_{frame + 1:02d}.zip", found)
    return root
