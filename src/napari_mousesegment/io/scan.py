"""A micro-CT scan as read from any format: (z, y, x) arrays, voxel size and organ names.

Format-free helpers live here: the :class:`Scan` record every reader returns, the case name of a
scan path, and :func:`orient_body`, which puts a mouse head first whatever axis order its file used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import Geometry


@dataclass
class Scan:
    """A volume read from disk, (z, y, x), with what the file says about it."""

    image: Any  #: numpy or (lazy) dask array in HU, or None for a label map alone (e.g. a .segff)
    spacing: tuple[float, float, float] | None  #: mm
    labels: np.ndarray | None = None
    organs: dict[str, int] | None = None  #: our organ name -> label value in ``labels``
    source: str = ""
    geometry: Geometry | None = None  #: the file's own grid and affine, for outputs in its geometry
    calibrated: bool = True  #: False when the grey values are not HU (SkyScan): see :mod:`.hu`


def case_name(path: str | os.PathLike) -> str:
    """The case name of a scan file or folder: its name without any extension (``a.nii.gz`` -> ``a``)."""
    return Path(path).name.split(".")[0]


def orient_body(scan: Scan) -> Scan:
    """Put the body axis (the longest) first as z, head end at z = 0, using the labelled anatomy.

    Scanners and databases store mice in different axis orders; the thorax (lungs, heart) lying
    above the kidneys, bladder and gut is what decides, not header conventions. Only rotations are
    applied, never a mirror: an axis swap or a head-tail flip is paired with a flip of x, so left
    stays left. Which side is dorsal is not decided here.
    """
    ref = scan.labels if scan.labels is not None else scan.image
    axis = int(np.argmax(ref.shape))
    order = (axis, *[a for a in range(3) if a != axis])
    mirror = axis == 1  # (1, 0, 2) is an odd permutation; (0, 1, 2) and (2, 0, 1) are even

    def move(a):
        if a is None:
            return None
        a = np.transpose(a, order)
        return a[:, :, ::-1] if mirror else a

    image, labels = move(scan.image), move(scan.labels)
    spacing = None if scan.spacing is None else tuple(scan.spacing[a] for a in order)
    if labels is not None and scan.organs:
        def z_of(names):
            values = [scan.organs[n] for n in names if n in scan.organs]
            hits = np.argwhere(np.isin(labels, values))[:, 0] if values else np.empty(0)
            return hits.mean() if len(hits) else None

        top, bottom = z_of(["lungs", "heart"]), z_of(["kidneys", "bladder", "intestine", "liver"])
        if top is not None and bottom is not None and top > bottom:  # rotate 180° about y
            image = None if image is None else image[::-1, :, ::-1]
            labels = labels[::-1, :, ::-1]
    return Scan(None if image is None else np.ascontiguousarray(image), spacing,  # type: ignore[arg-type]
                None if labels is None else np.ascontiguousarray(labels), scan.organs, scan.source)

