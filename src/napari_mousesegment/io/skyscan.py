"""Bruker SkyScan (NRecon) reconstructions: a folder of slice images and its ``_rec.log``.

NRecon writes one image per axial section, ``NAME_rec00000000.bmp`` (or .png, .tif, .jpg; 8- or
16-bit grey), and a log ``NAME_rec.log`` in INI form (``[System]``, ``[Acquisition]``,
``[Reconstruction]``). The voxel size is the ``Pixel Size (um)`` of ``[Reconstruction]`` (the
``Image Pixel Size (um)`` of ``[Acquisition]`` only when that is absent); reconstructions are
isotropic, so sections lie one pixel size apart (times the ``Section to Section Step`` when NRecon
kept only every n-th section). Sections stack along z by their number, parsed, not sorted as text.

The grey values are NRecon's own scaling of attenuation, not HU, so the scan is marked
``calibrated=False``. With ``lazy`` the volume is a dask array that reads a slice image only when
a slab needs it, for reconstructions larger than memory.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .scan import Scan

#: Slice image suffixes NRecon writes.
SLICE_SUFFIXES = (".bmp", ".png", ".tif", ".tiff", ".jpg", ".jpeg")
#: ``NAME_rec00000123.bmp`` -> prefix ``NAME_rec``, number 123.
SLICE_NAME = re.compile(r"^(?P<prefix>.+_rec)(?P<number>\d+)\.(?:bmp|png|tiff?|jpe?g)$", re.IGNORECASE)
LOG_NAME = re.compile(r"^.+_rec\.log$", re.IGNORECASE)


def is_skyscan_folder(folder: str | os.PathLike) -> bool:
    """Whether a folder looks like a SkyScan reconstruction: a ``*_rec.log`` or ``*_recNNNN`` slices.

    Only names are looked at, and the listing stops at the first match.
    """
    try:
        with os.scandir(folder) as entries:
            return any(LOG_NAME.match(e.name) or SLICE_NAME.match(e.name) for e in entries)
    except OSError:
        return False


def read_skyscan(folder: str | os.PathLike, lazy: bool = False,
                 spacing: tuple[float, float, float] | None = None) -> Scan:
    """Read a SkyScan reconstruction folder as a (z, y, x) :class:`Scan` of its stored grey values.

    ``spacing`` (z, y, x in mm) replaces the log's pixel size, so a folder without a log (or a log
    without a pixel size) can still be read. Every problem is a one-line ValueError naming the file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    prefix, numbered = _slices(folder)
    step = 1
    if spacing is None:
        spacing, step = _log_spacing(folder, prefix)
    elif len(spacing) != 3 or not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing):
        raise ValueError(f"{folder}: the spacing {tuple(spacing)} must be three positive numbers (z, y, x mm)")
    files = _in_order(folder, prefix, numbered, step)
    first = _read_slice(files[0])
    if lazy:
        for path in files[1:]:  # headers only: a bad slice is named now, not halfway through a read
            _check(path, _header(path), first.shape, first.dtype)
        image = _lazy_stack(files, first.shape, first.dtype)
    else:
        image = _stack(files, first)
    return Scan(image, tuple(float(s) for s in spacing), source=str(folder), calibrated=False)


def _slices(folder: Path) -> tuple[str, dict[int, Path]]:
    """The reconstruction's name prefix and its slice files by section number."""
    groups: dict[str, dict[int, Path]] = {}
    for path in folder.iterdir():
        match = SLICE_NAME.match(path.name)
        if match and path.is_file():
            prefix = match["prefix"]
            number = int(match["number"])
            if number in groups.setdefault(prefix, {}):
                raise ValueError(f"{path}: a second slice numbered {number} (also "
                                 f"{groups[prefix][number].name})")
            groups[prefix][number] = path
    if not groups:
        raise ValueError(f"{folder}: no SkyScan slice images (NAME_rec00000000 with "
                         f"{', '.join(SLICE_SUFFIXES)})")
    if len(groups) > 1:
        logged = [p for p in groups if (folder / f"{p}.log").is_file()]
        if len(logged) != 1:
            raise ValueError(f"{folder}: holds several reconstructions ({', '.join(sorted(groups))}); "
                             "keep one per folder")
        groups = {logged[0]: groups[logged[0]]}
    ((prefix, numbered),) = groups.items()
    return prefix, numbered


def _in_order(folder: Path, prefix: str, numbered: dict[int, Path], step: int) -> list[Path]:
    """The slice files in section order, refused when one is missing.

    Sections are numbered one apart, or ``step`` apart when the log's ``Section to Section Step``
    says NRecon kept only every step-th section.
    """
    numbers = sorted(numbered)
    stride = math.gcd(*(b - a for a, b in itertools.pairwise(numbers))) if len(numbers) > 1 else 1
    stride = stride if stride == step else 1
    for expected, number in zip(range(numbers[0], numbers[-1] + 1, stride), numbers):
        if number != expected:
            missing = folder / f"{prefix}{expected:08d}{numbered[number].suffix}"
            raise ValueError(f"{missing}: slice {expected} is missing "
                             f"(the slices run {numbers[0]}..{numbers[-1]})")
    return [numbered[n] for n in numbers]


def parse_log(text: str) -> dict[str, dict[str, str]]:
    """A SkyScan log's text as {section: {key: value}}; names lower case, the first value kept."""
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("", {})
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1].strip().lower(), {})
        elif "=" in line and not line.startswith(";"):
            key, value = line.split("=", 1)
            current.setdefault(" ".join(key.split()).lower(), value.strip())
    return sections


def _log_spacing(folder: Path, prefix: str) -> tuple[tuple[float, float, float], int]:
    """The (z, y, x) voxel size in mm that the reconstruction's log states, and its section step."""
    log = folder / f"{prefix}.log"
    if not log.is_file():
        logs = sorted(p for p in folder.iterdir() if LOG_NAME.match(p.name))
        if len(logs) != 1:
            raise ValueError(f"{log}: no SkyScan log beside the slices; give --spacing")
        log = logs[0]
    try:
        sections = parse_log(log.read_bytes().decode("latin-1"))
    except OSError as exc:
        raise ValueError(f"{log}: cannot read the log ({exc.strerror or exc})") from exc
    found = [(section, key) for section, key in (("Reconstruction", "Pixel Size (um)"),
                                                  ("Acquisition", "Image Pixel Size (um)"))
             if key.lower() in sections.get(section.lower(), {})]
    if not found:
        raise ValueError(f"{log}: the log has no 'Pixel Size (um)'; give --spacing")
    section, key = found[0]
    text = sections[section.lower()][key.lower()]
    pixel_um = _number(text)
    if pixel_um is None or not (math.isfinite(pixel_um) and pixel_um > 0):
        raise ValueError(f"{log}: [{section}] {key} is {text!r}; it must be a positive number "
                         "(or give --spacing)")
    step_text = sections.get("reconstruction", {}).get("section to section step", "") or "1"
    step = _number(step_text)
    if step is None or not (1 <= step <= 1000 and step == int(step)):
        raise ValueError(f"{log}: [Reconstruction] Section to Section Step is {step_text!r}; "
                         "expected a whole number of sections (or give --spacing)")
    pixel_mm = pixel_um * 1e-3
    return (pixel_mm * step, pixel_mm, pixel_mm), int(step)


def _number(text: str) -> float | None:
    """A log value as a number (a decimal comma, as some Windows locales write, is accepted)."""
    text = text.strip()
    if text.count(",") == 1 and "." not in text:
        text = text.replace(",", ".")
    try:
        return float(text)
    except ValueError:
        return None


def _read_slice(path: Path) -> np.ndarray:
    """One slice image as a 2D grey array in its stored dtype (an RGB slice only when it is grey)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            image = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            image = iio.imread(path)
    except Exception as exc:  # image libraries raise many types (even SyntaxError) for damaged files
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{path}: unreadable slice image ({message})") from exc
    return _grey(np.asarray(image), path)


def _grey(image: np.ndarray, path: Path) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        rgb = image[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise ValueError(f"{path}: a colour slice image (its red, green and blue differ); "
                             "expected grey slices")
        image = rgb[..., 0]
    if image.ndim != 2:
        raise ValueError(f"{path}: expected a 2D grey slice image, got shape {image.shape}")
    return image


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """A slice image's (shape, dtype) from its header, colour channels dropped."""
    try:
        import imageio.v3 as iio

        props = iio.improps(path)
    except Exception as exc:  # image libraries raise many types for damaged files
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{path}: unreadable slice image ({message})") from exc
    shape = props.shape[:2] if len(props.shape) == 3 and props.shape[-1] in (3, 4) else props.shape
    return tuple(shape), np.dtype(props.dtype)


def _check(path: Path, found: tuple[tuple[int, ...], np.dtype], shape: tuple[int, ...],
           dtype: np.dtype) -> None:
    """Refuse a slice whose size or dtype differs from the first slice's."""
    if tuple(found[0]) != tuple(shape) or found[1] != dtype:
        raise ValueError(f"{path}: slice of shape {tuple(found[0])} {found[1]}, "
                         f"unlike the first slice's {tuple(shape)} {dtype}")


def _stack(files: list[Path], first: np.ndarray) -> np.ndarray:
    """All slices read into one (z, y, x) array, each checked against the first."""
    volume = np.empty((len(files), *first.shape), first.dtype)
    volume[0] = first
    for z, path in enumerate(files[1:], 1):
        image = _read_slice(path)
        _check(path, (image.shape, image.dtype), first.shape, first.dtype)
        volume[z] = image
    return volume


class _SliceStack:
    """An array-like (z, y, x) view of slice files that reads a file when its section is indexed."""

    def __init__(self, files: list[Path], shape: tuple[int, int], dtype: np.dtype):
        self.files, self.dtype = list(files), np.dtype(dtype)
        self.shape = (len(self.files), *shape)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        sections = np.arange(self.shape[0])[key[0]]
        picked = [self._read(int(z)) for z in np.atleast_1d(sections)]
        block = np.stack(picked) if picked else np.empty((0, *self.shape[1:]), self.dtype)
        if np.ndim(sections) == 0:
            block = block[0]
        return block[(slice(None),) * (np.ndim(sections) > 0) + key[1:]]

    def _read(self, z: int) -> np.ndarray:
        path = self.files[z]
        image = _read_slice(path)
        _check(path, (image.shape, image.dtype), self.shape[1:], self.dtype)
        return image


def _lazy_stack(files: list[Path], shape: tuple[int, int], dtype: np.dtype) -> Any:
    """The slices as a dask array with one slice image per chunk, read on demand."""
    import dask.array as da
    from dask.base import tokenize

    stamp = [(str(p), p.stat().st_mtime_ns) for p in files]
    return da.from_array(_SliceStack(files, shape, dtype), chunks=(1, *shape), asarray=False,
                         name=f"skyscan-{tokenize(stamp)}", meta=np.empty((0, 0, 0), dtype))
