"""OME-Zarr (NGFF 0.4 and 0.5) scans, read lazily with zarr and dask: nothing is loaded until asked.

The ``multiscales`` metadata names the axes and their units and gives each level's scale; the
first level is the full-resolution scan. Only the z, y and x axes may be longer than one (a
channel or time axis of size 1 is dropped). OME-Zarr states no anatomical orientation: like a TIFF,
the volume is taken as (z, y, x) in RAS order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import UNIT_MM, canonical_affine, to_zyx
from .scan import Scan


def _attributes(folder: Path) -> dict | None:
    """The group's attributes (v0.4: ``.zattrs``; v0.5: ``zarr.json``'s ``attributes.ome``)."""
    try:
        if (folder / ".zattrs").is_file():
            return json.loads((folder / ".zattrs").read_text())
        if (folder / "zarr.json").is_file():
            attrs = json.loads((folder / "zarr.json").read_text()).get("attributes", {})
            return attrs.get("ome", attrs)
    except (OSError, ValueError, AttributeError):
        return None
    return None


def is_omezarr(folder: Path) -> bool:
    """Cheap: a folder whose zarr group attributes hold ``multiscales``."""
    attrs = _attributes(folder) if folder.is_dir() else None
    return isinstance(attrs, dict) and "multiscales" in attrs


def _scale(dataset: dict, multiscale: dict) -> list[float]:
    scale = [1.0] * len(multiscale["axes"])
    for transforms in (dataset.get("coordinateTransformations", []), multiscale.get("coordinateTransformations", [])):
        for t in transforms:
            if t.get("type") == "scale":
                scale = [a * float(b) for a, b in zip(scale, t["scale"])]
    return scale


def read_levels(folder: str | Path) -> tuple[list[Any], tuple[float, float, float]]:
    """Every resolution level as a lazy (z, y, x) dask array, and level 0's spacing in mm."""
    import dask.array as da
    import zarr

    folder = Path(folder)
    attrs = _attributes(folder)
    try:
        multiscale = attrs["multiscales"][0]  # type: ignore[index]
        axes = [a["name"] if isinstance(a, dict) else str(a) for a in multiscale["axes"]]
        units = [a.get("unit") if isinstance(a, dict) else None for a in multiscale["axes"]]
        paths = [d["path"] for d in multiscale["datasets"]]
        group = zarr.open_group(str(folder), mode="r")
        arrays = [group[p] for p in paths]
        scale = _scale(multiscale["datasets"][0], multiscale)
    except Exception as exc:
        raise ValueError(f"{folder}: not a readable OME-Zarr image ({type(exc).__name__}: {exc})") from exc
    if set("zyx") - set(axes):
        raise ValueError(f"{folder}: OME-Zarr axes {axes} lack one of z, y, x")
    levels = []
    for array in arrays:
        if array.ndim != len(axes):
            raise ValueError(f"{folder}: a level has {array.ndim} dimensions for {len(axes)} axes")
        lazy = da.from_zarr(array)
        extra = [i for i, a in enumerate(axes) if a not in "zyx"]
        if any(lazy.shape[i] != 1 for i in extra):
            raise ValueError(f"{folder}: axes {[axes[i] for i in extra]} hold several images; "
                             "give a single-channel, single-timepoint volume")
        lazy = lazy[tuple(0 if i in extra else slice(None) for i in range(len(axes)))]
        kept = [a for a in axes if a in "zyx"]
        levels.append(lazy.transpose([kept.index(a) for a in "zyx"]))
    spacing = []
    for name in "zyx":
        i = axes.index(name)
        unit = units[i] or "mm"
        if unit not in UNIT_MM:
            raise ValueError(f"{folder}: axis {name} has unit {unit!r}, not a length")
        spacing.append(scale[i] * UNIT_MM[unit])
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"{folder}: voxel size {spacing} mm is not positive and finite")
    return levels, (spacing[0], spacing[1], spacing[2])


def read_omezarr(folder: str | Path, lazy: bool = True) -> Scan:
    """The full-resolution level as a scan: a dask array (or loaded, without ``lazy``)."""
    levels, spacing = read_levels(folder)
    image = levels[0] if lazy else np.asarray(levels[0])
    _, _, geometry = to_zyx(image.transpose(2, 1, 0), canonical_affine(spacing), source=str(folder))
    return Scan(image, spacing, source=str(folder), geometry=geometry)


def write_omezarr(folder: str | Path, volume: np.ndarray, spacing: tuple[float, float, float],
                  levels: int = 1, chunks: tuple[int, int, int] | None = None) -> Path:
    """Write a (z, y, x) volume as OME-Zarr 0.4 (zarr format 2) with ``levels`` 2x-downsampled levels."""
    import zarr

    folder = Path(folder)
    version_3 = int(zarr.__version__.split(".")[0]) >= 3
    group = zarr.open_group(str(folder), mode="w", **({"zarr_format": 2} if version_3 else {}))
    datasets = []
    for level in range(levels):
        step = 2 ** level
        data = np.ascontiguousarray(volume[::step, ::step, ::step])
        create = group.create_array if version_3 else group.create_dataset  # zarr 3 / zarr 2
        create(str(level), data=data, chunks=chunks or (1, *data.shape[1:]))
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": [s * step for s in spacing]}]})
    group.attrs["multiscales"] = [{"version": "0.4", "name": folder.stem, "datasets": datasets,
                                   "axes": [{"name": a, "type": "space", "unit": "millimeter"} for a in "zyx"]}]
    return folder
