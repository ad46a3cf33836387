"""Where a scan's voxels lie in the world, and the way between a file's voxel order and ours.

Every scan reader hands the model a (z, y, x) array in the RAS+ order of a canonical NIfTI
(nibabel's RAS+: x increases to the Right, y Anterior, z Superior), with z first. A file stores its voxels in its own order (a DICOM
series in LPS, a NIfTI in whatever its affine says). :func:`to_zyx` turns the file's array
into ours with transposes and flips only (views: nothing is copied, dask arrays stay lazy),
and keeps a :class:`Geometry` so that :func:`to_file_order` can put labels back exactly into
the file's own grid, to be saved with the file's own affine.

Affines follow nibabel: a 4x4 matrix from the file's voxel indices (i, j, k) to RAS+ world
coordinates in the file's length unit.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any

import numpy as np

#: Length units a NIfTI header (or another file) may state, in mm.
UNIT_MM = {"mm": 1.0, "micron": 1e-3, "um": 1e-3, "µm": 1e-3, "meter": 1000.0, "m": 1000.0, "cm": 10.0,
           "nm": 1e-6, "nanometer": 1e-6, "millimeter": 1.0, "micrometer": 1e-3, "centimeter": 10.0}


@dataclass(frozen=True)
class Geometry:
    """A file's own voxel grid: its affine, its array shape and how its axes map onto RAS."""

    affine: np.ndarray  #: 4x4, the file's voxel indices (i, j, k) -> RAS+ world, in the file's unit
    shape: tuple[int, int, int]  #: the file's own array shape (i, j, k)
    ornt: np.ndarray  #: nibabel orientation (3, 2): file axis i -> (RAS axis, +1 or -1)
    unit_mm: float = 1.0  #: the file's length unit in mm (the affine is in that unit)


def _orientation(affine: np.ndarray, source: str) -> np.ndarray:
    from nibabel.orientations import io_orientation

    rotation = np.asarray(affine, float)[:3, :3]
    if not np.isfinite(rotation).all():
        raise ValueError(f"{source}: the voxel-to-world matrix has NaN or infinite entries")
    sizes = np.sqrt((rotation ** 2).sum(0))
    if (sizes <= 0).any():
        raise ValueError(f"{source}: a voxel size is zero ({sizes.round(6).tolist()}); the file's geometry is broken")
    ornt = io_orientation(affine)
    if np.isnan(ornt).any():
        raise ValueError(f"{source}: the voxel axes are degenerate (two axes point the same way)")
    return ornt


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """The length of each file axis's step, in the affine's unit."""
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(0))


def to_zyx(data: Any, affine: np.ndarray, unit_mm: float = 1.0, source: str = "scan"
           ) -> tuple[Any, tuple[float, float, float], Geometry]:
    """The file's (i, j, k) array as our (z, y, x) RAS array, its spacing in mm, and its geometry.

    Works on numpy arrays (views) and dask arrays (lazy) alike.
    """
    if data.ndim != 3:
        raise ValueError(f"{source}: expected a 3D volume, got shape {tuple(data.shape)}")
    affine = np.asarray(affine, float)
    ornt = _orientation(affine, source)
    sizes = voxel_sizes(affine) * unit_mm
    flips = tuple(slice(None, None, -1) if flip < 0 else slice(None) for _, flip in ornt)
    ras_from_file = [int(np.flatnonzero(ornt[:, 0] == axis)[0]) for axis in range(3)]  # RAS axis <- file axis
    ras = data[flips].transpose(ras_from_file)
    spacing_ras = [float(sizes[a]) for a in ras_from_file]
    geometry = Geometry(affine, tuple(int(n) for n in data.shape), ornt, unit_mm)
    return ras.transpose(2, 1, 0), (spacing_ras[2], spacing_ras[1], spacing_ras[0]), geometry


def _file_order(volume_zyx: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Our (z, y, x) RAS block in a file's voxel order (a view)."""
    ras = np.asarray(volume_zyx).transpose(2, 1, 0)
    data = ras.transpose([int(ornt[i, 0]) for i in range(3)])  # file axis i <- RAS axis
    return data[tuple(slice(None, None, -1) if flip < 0 else slice(None) for _, flip in ornt)]


def to_file_order(volume_zyx: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A (z, y, x) volume on the scan's grid, back in the file's own voxel order (i, j, k)."""
    data = _file_order(volume_zyx, geometry.ornt)
    if data.shape != geometry.shape:
        raise ValueError(f"labels of shape {data.shape} do not fit the scan's grid {geometry.shape}")
    return data


def canonical_affine(spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """The RAS affine of a plain (z, y, x) volume in mm (x, y, z voxel axes), as for a TIFF."""
    dz, dy, dx = spacing_zyx
    return np.diag([dx, dy, dz, 1.0])


def _file_blocks(labels_zyx: Any, geometry: Geometry, slab: int) -> Iterator[np.ndarray]:
    """The labels in the file's voxel order, as blocks of whole planes along its last (slowest) axis.

    When that axis is the scan's z, as in axial DICOM series and most NIfTI files, the blocks come
    from z-slabs of ``labels_zyx`` (which may be memory-mapped or lazy), so only a slab is ever
    read; otherwise the whole volume is read once.
    """
    from .arrays import load

    ornt = geometry.ornt
    if int(ornt[2, 0]) != 2:
        yield _file_order(load(labels_zyx), ornt)
        return
    n = geometry.shape[2]
    for k0 in range(0, n, slab):
        k1 = min(k0 + slab, n)
        z0, z1 = (n - k1, n - k0) if ornt[2, 1] < 0 else (k0, k1)
        yield _file_order(load(labels_zyx[z0:z1]), ornt)


def write_labels_nifti(path, labels_zyx: Any, geometry: Geometry, slab: int = 32) -> None:
    """Save labels as NIfTI in the scan's own grid, voxel order and affine, so that 3D Slicer and
    ITK-SNAP overlay them on the scan. Written slab by slab (see :func:`_file_blocks`)."""
    import nibabel

    from .atomic import write_atomic

    if tuple(labels_zyx.shape) != tuple(geometry.shape[a] for a in _zyx_file_axes(geometry.ornt)):
        raise ValueError(f"{path}: labels of shape {tuple(labels_zyx.shape)} do not fit the scan's grid "
                         f"{geometry.shape}")
    units = {1.0: "mm", 1e-3: "micron", 1000.0: "meter"}
    if geometry.unit_mm not in units:
        raise ValueError(f"{path}: NIfTI cannot state a length unit of {geometry.unit_mm} mm")
    header = nibabel.Nifti1Header()
    header.set_data_shape(geometry.shape)
    header.set_data_dtype(np.uint8)
    header.set_qform(geometry.affine, code=1)
    header.set_sform(geometry.affine, code=1)
    header.set_xyzt_units(units[geometry.unit_mm])
    header["vox_offset"] = 352  # the 348-byte header and 4 bytes saying "no extensions"

    def write(tmp):
        with gzip.open(tmp, "wb", compresslevel=6) as out:
            out.write(header.binaryblock + b"\0" * 4)
            for block in _file_blocks(labels_zyx, geometry, slab):
                out.write(np.asarray(block, np.uint8).tobytes(order="F"))  # NIfTI: i fastest, k slowest

    write_atomic(path, write)


def _zyx_file_axes(ornt: np.ndarray) -> list[int]:
    """For our axes z, y, x: the file axis each comes from."""
    return [int(np.flatnonzero(ornt[:, 0] == axis)[0]) for axis in (2, 1, 0)]
