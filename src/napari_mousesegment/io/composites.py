"""Ultrasound composites: a series of frames as one multi-page TIFF, one montage image or a folder.

A montage lays the frames out row by row on a grid, with constant-valued gutters between them.
Splitting finds the grid from those gutters, or takes it from the caller.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from ..organs import US_FRAMES, US_GRID
from .roi import brief
from .tiff import read_array

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class CompositeError(ValueError):
    """A composite that cannot be split into frames."""


@dataclass(frozen=True)
class Composite:
    """Frames of one series, with where each came from."""

    frames: np.ndarray  #: (n, H, W)
    sources: tuple[str, ...]  #: per frame: "file" or "file[row,col]" or "file#page"
    grid: tuple[int, int] | None = None  #: montage grid (rows, cols), when split from one


def montage(frames: np.ndarray, grid: tuple[int, int] = US_GRID, gap: int = 2, gap_value: int = 255) -> np.ndarray:
    """Lay (n, H, W) frames row by row on a grid, separated by ``gap``-pixel gutters."""
    frames = np.asarray(frames)
    rows, cols = grid
    n, h, w = frames.shape[:3]
    if n != rows * cols:
        raise CompositeError(f"{n} frames do not fill a {rows}x{cols} grid")
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, *frames.shape[3:]),
                  gap_value, dtype=frames.dtype)
    for k, frame in enumerate(frames):
        r, c = divmod(k, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = frame
    return out


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _pitch(length: int, n: int, gutter: np.ndarray, prefer: int | None = None) -> list[tuple[int, int]] | None:
    """Bands of n equal frames separated by equal gutters that are all True in ``gutter``.

    Frames are cut at a regular pitch, so frame rows that happen to share the gutter's value
    (black rows above an ultrasound sector next to black gutters) stay in their frame. A gap of
    ``prefer`` (the narrowest gutter run seen) is tried first, since a narrower gap also fits
    inside a wide gutter; then the narrowest gutter that fits wins; no gutter at all is the last resort.
    """
    for gap in [*([prefer] if prefer else []), *range(1, length // max(n, 1)), 0]:
        size, rest = divmod(length - (n - 1) * gap, n)
        if rest or size < 1:
            continue
        starts = [k * (size + gap) for k in range(n)]
        if all(gutter[s + size: s + size + gap].all() for s in starts[:-1]):
            return [(s, s + size) for s in starts]
    return None


def detect_grid(image: np.ndarray) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Find the frame rows and columns of a montage from its constant-valued gutters.

    Returns the (start, stop) pixel bands of the grid's rows and columns. Raises
    :class:`CompositeError` when no value forms gutters that cut the image into equal frames.
    """
    gray = image if image.ndim == 2 else image[..., 0]
    row_const = np.all(gray == gray[:, :1], axis=1)
    col_const = np.all(gray == gray[:1, :], axis=0)
    candidates = set(np.unique(gray[row_const, 0])) & set(np.unique(gray[0, col_const]))
    best = None
    for value in sorted(candidates):
        rows_g, cols_g = row_const & (gray[:, 0] == value), col_const & (gray[0, :] == value)
        # gutters are the constant runs inside the image; runs touching its border belong to frames
        inner_rows = [b - a for a, b in _runs(rows_g) if a > 0 and b < len(rows_g)]
        inner_cols = [b - a for a, b in _runs(cols_g) if a > 0 and b < len(cols_g)]
        n_rows, n_cols = 1 + len(inner_rows), 1 + len(inner_cols)
        if n_rows * n_cols < 2:
            continue
        rows = _pitch(gray.shape[0], n_rows, rows_g, min(inner_rows, default=None))
        cols = _pitch(gray.shape[1], n_cols, cols_g, min(inner_cols, default=None))
        if rows and cols:
            score = abs(n_rows * n_cols - US_FRAMES)
            if best is None or score < best[0]:
                best = (score, rows, cols)
    if best is None:
        raise CompositeError("no grid of gutters found in the montage; give the grid as RxC")
    return best[1], best[2]


def split_montage(image: np.ndarray, grid: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Cut a montage into (n, H, W) frames, row by row; the grid is detected when not given."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = to_gray(image)
    if image.ndim != 2:
        raise CompositeError(f"a montage must be a 2D image, got shape {image.shape}")
    if grid is None:
        rows, cols = detect_grid(image)
    else:
        n_rows, n_cols = grid
        if n_rows < 1 or n_cols < 1:
            raise CompositeError(f"grid must be at least 1x1, got {n_rows}x{n_cols}")
        row_const = np.all(image == image[:, :1], axis=1)
        col_const = np.all(image == image[:1, :], axis=0)
        rows, cols = _pitch(image.shape[0], n_rows, row_const), _pitch(image.shape[1], n_cols, col_const)
        if rows is None or cols is None:
            raise CompositeError(f"a {n_rows}x{n_cols} grid does not fit a {image.shape[0]}x{image.shape[1]} montage")
    frames = np.stack([image[r0:r1, c0:c1] for r0, r1 in rows for c0, c1 in cols])
    return frames, (len(rows), len(cols))


def parse_grid(text: str) -> tuple[int, int] | None:
    """A montage grid written RxC (``5x7``); None for an empty text (detect it)."""
    text = text.strip().lower()
    if not text:
        return None
    try:
        rows, cols = (int(v) for v in text.split("x"))
    except ValueError:
        raise ValueError(f"grid must look like 5x7, got {text!r}") from None
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be at least 1x1, got {text!r}")
    return rows, cols


def to_gray(image: np.ndarray) -> np.ndarray:
    """RGB(A) to gray; exact when the channels are equal, as in exported B-mode images."""
    rgb = image[..., :3]
    if np.all(rgb == rgb[..., :1]):
        return rgb[..., 0]
    return np.round(rgb @ np.array([0.299, 0.587, 0.114])).astype(image.dtype)


def read_composite(path: str | os.PathLike, grid: tuple[int, int] | None = None) -> Composite:
    """Read a series as (n, H, W) frames from a multi-page TIFF, a montage image or a folder: a
    folder of single frames, or a series folder (its ``SERIES.tif``, ``frames/`` or only stack, as
    ``mousesegment synth ultrasound`` and the lab's layout write them).

    A frame count other than 35 is accepted with a warning.
    """
    path = Path(path)
    if path.is_dir() and series_composite(path) is not None:  # a series folder (as `synth ultrasound` writes)
        return read_composite(series_composite(path), grid)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                       key=_natural)
        if not files:
            raise CompositeError(f"{path}: folder holds no frame images ({', '.join(IMAGE_SUFFIXES)})")
        images = [_read_frames(p) for p in files]
        stacks = [f for f, im in zip(files, images) if im.ndim == 3]
        if len(stacks) == 1 and stacks[0].suffix.lower() in (".tif", ".tiff"):  # a series folder's stack
            return read_composite(stacks[0], grid)
        if stacks:
            raise CompositeError(f"{stacks[0]}: holds {len(images[files.index(stacks[0])])} frames, in a folder "
                                 f"read as one frame per file; name the series' stack {path.name}.tif, or give the "
                                 "stack itself")
        if len({im.shape for im in images}) != 1:
            raise CompositeError(f"{path}: frames differ in size")
        result = Composite(np.stack(images), tuple(str(p) for p in files))
    elif not path.is_file():
        raise CompositeError(f"{path}: no such file or folder")
    else:
        data = _read_any(path)
        if data.ndim == 3 and data.shape[-1] not in (3, 4):
            result = Composite(data, tuple(f"{path}#{k}" for k in range(len(data))))
        else:
            try:
                frames, (rows, cols) = split_montage(data, grid)
            except CompositeError as exc:
                raise CompositeError(f"{path}: {exc}" + ("" if grid else " (pass --grid RxC)")) from exc
            sources = tuple(f"{path}[{k // cols},{k % cols}]" for k in range(len(frames)))
            result = Composite(frames, sources, (rows, cols))
    if len(result.frames) != US_FRAMES:
        warnings.warn(f"{path}: {len(result.frames)} frames, not the usual {US_FRAMES}", stacklevel=2)
    return result


def _read_any(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            return read_array(path)
        except ValueError as exc:
            raise CompositeError(f"{path}: cannot read image ({brief(exc.__cause__ or exc)})") from exc
    try:
        image = iio.imread(path)
    except Exception as exc:  # imageio and Pillow raise many types (and many-line messages) for corrupt files
        raise CompositeError(f"{path}: cannot read image ({brief(exc)})") from exc
    if image.ndim == 3 and image.shape[-1] == 2:  # gray + alpha (PNG "LA"): the gray values
        image = image[..., 0]
    if image.ndim not in (2, 3) or image.size == 0:
        raise CompositeError(f"{path}: not a frame or montage image (shape {image.shape})")
    return image


def _read_frames(path: Path) -> np.ndarray:
    """One 2D frame (RGB made grey), or the (n, H, W) frames of a stack."""
    image = _read_any(path)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = to_gray(image)
    return image


def series_composite(folder: str | os.PathLike) -> Path | None:
    """The composite of a series folder by name: ``SERIES/SERIES.tif`` (or another image suffix),
    else a ``frames/`` folder; None when the folder names none (it may itself be a folder of frames)."""
    folder = Path(folder)
    for suffix in IMAGE_SUFFIXES:
        own = folder / f"{folder.name}{suffix}"
        if own.is_file():
            return own
    return folder / "frames" if (folder / "frames").is_dir() else None


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]
