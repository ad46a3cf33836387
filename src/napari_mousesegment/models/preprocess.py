"""MOSnet's preprocessing, the same at training and prediction time.

1. window at level 400 / width 1000 HU and scale to [0, 1];
2. resample to the model's isotropic voxel size using the scan's own spacing;
3. cut slices on the configured plane (axial by default: (y, x) slices along z);
4. pad each slice to a square, centred, and resize it to ``image_size``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.nn import functional as F

from ..io.limits import check_allocation, nbytes

PLANE_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}  #: the volume axis that slices are cut along


def window(hu: np.ndarray, level: float = 400.0, width: float = 1000.0) -> np.ndarray:
    """HU to [0, 1] float32: level ± width/2 maps to 0..1 (W1000/L400: -100..900 HU)."""
    if not np.isfinite(hu).all():
        raise ValueError("the image contains NaN or infinite values")
    return np.clip((hu.astype(np.float32) - (level - width / 2)) / width, 0.0, 1.0)


def model_grid(shape: tuple[int, ...], spacing: tuple[float, ...], target: float) -> tuple[int, ...]:
    """Voxels per axis after resampling from ``spacing`` to isotropic ``target`` mm: unchanged when
    every axis is within 0.1% of the target, else ``round(n * spacing / target)`` on every axis, as
    ndimage.zoom rounds. The one rule for :func:`resample` and the streaming CT predictor."""
    factors = np.asarray(spacing, float) / float(target)
    if np.allclose(factors, 1.0, atol=1e-3):
        return tuple(int(n) for n in shape)
    grid = tuple(round(n * f) for n, f in zip(shape, factors))
    if min(grid) < 1:
        raise ValueError(f"a scan of {tuple(shape)} voxels at {tuple(spacing)} mm has less than one "
                         f"{target} mm model voxel along an axis; it is too thin to segment")
    return grid


def resample(volume: np.ndarray, spacing: tuple[float, float, float], target: float, order: int) -> np.ndarray:
    """Resample a (z, y, x) volume with the given spacing to isotropic ``target`` mm voxels; an
    output too large for this machine is refused before it is allocated (:mod:`..io.limits`)."""
    grid = model_grid(volume.shape, spacing, target)
    if grid == volume.shape:
        return volume
    check_allocation(nbytes(grid, volume.dtype.itemsize),
                     f"resampling a scan of {tuple(volume.shape)} voxels at {tuple(spacing)} mm to {target} mm "
                     f"voxels ({grid})")
    return ndi.zoom(volume, np.divide(grid, volume.shape), order=order, mode="nearest", grid_mode=True)


def to_slices(volume: np.ndarray, plane: str) -> np.ndarray:
    """(z, y, x) volume to a stack of 2D slices on the plane: axial gives (z, y, x) itself."""
    return np.moveaxis(volume, PLANE_AXIS[plane], 0)


def from_slices(stack: np.ndarray, plane: str) -> np.ndarray:
    """Inverse of :func:`to_slices`."""
    return np.moveaxis(stack, 0, PLANE_AXIS[plane])


def context_index(n: int, offsets: list[int], start: int = 0, stop: int | None = None) -> np.ndarray:
    """(k, C) indices into a stack of ``n`` slices: for each slice ``start .. stop`` the slices
    ``offsets`` away (the 2.5D channels), edges repeated, as a scan's first slice has no neighbour
    before it."""
    centre = np.arange(start, n if stop is None else stop)
    return np.clip(centre[:, None] + np.asarray(offsets, int)[None, :], 0, n - 1)


def slice_positions(index: np.ndarray, n: int) -> np.ndarray:
    """Places of model-grid slices ``index`` (fractional ones too) along a stack of ``n``, from 0
    at the first to 1 at the last (0.5 for a single slice), clipped to that range."""
    index = np.asarray(index, np.float32)
    if n < 2:
        return np.full(len(index), 0.5, np.float32)
    return np.clip(index / (n - 1), 0.0, 1.0)


def with_position(slices: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
    """(N, C, S, S) square slices with each one's place along the scan (N,) as a last, constant channel."""
    place = torch.as_tensor(np.asarray(positions, np.float32), device=slices.device).to(slices.dtype)
    return torch.cat([slices, place.view(-1, 1, 1, 1).expand(-1, 1, *slices.shape[-2:])], 1)


def square_size(h: int, w: int) -> int:
    return max(h, w)


def fit_square(slices: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(N, C, h, w) to (N, C, size, size): centred zero-pad to a square, then resize.

    ``mode`` is "bilinear" for images or "nearest-exact" for labels: both sample at pixel
    centres, so labels stay aligned with their image (plain "nearest" shifts them by half a pixel).
    """
    h, w = slices.shape[-2:]
    s = square_size(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    padded = F.pad(slices, (left, s - w - left, top, s - h - top))
    if s == size:
        return padded
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(padded, size=(size, size), mode=mode, **kwargs)


def unfit_square(slices: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`fit_square` (bilinear): back to (N, C, h, w)."""
    s = square_size(h, w)
    if slices.shape[-1] != s:
        slices = F.interpolate(slices, size=(s, s), mode="bilinear", align_corners=False)
    top, left = (s - h) // 2, (s - w) // 2
    return slices[..., top:top + h, left:left + w]


def pick_device(name: str) -> torch.device:
    """"auto" picks CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)
