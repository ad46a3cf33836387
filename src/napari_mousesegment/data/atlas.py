"""Real organ label maps as anatomy for the micro-CT phantom.

A label map (a Rosenhain ``.segff``, a NIfTI or TIFF label volume with its organ names in a
``STEM.json`` or ``STEM.ctbl`` beside it, or a Rosenhain scan folder) is read once into a
:class:`LabelAtlas`: its organs renumbered as :data:`~napari_mousesegment.organs.CT_ORGANS`, put
in the phantom's pose (head at z = 0, back at low y, the animal's left at high x) and cropped to
its organs. :func:`~.phantom_ct.ct_phantom` then warps it into each phantom it draws.

The maps themselves are never shipped: a user points ``synth ct --atlas`` at them (for the
Rosenhain et al. 2018 maps, CC-BY-SA 4.0, see docs/mosnet.md).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..io.readers import folder_kind, organ_names_beside, read_scan, suffix
from ..io.rosenhain import DATABASE_NAMES, parse_cls
from ..io.scan import Scan, case_name, orient_body
from ..organs import CT_ORGANS

#: The built-in anatomy: the phantom's own ellipsoid organs (a name in ``synth ct --atlas`` lists).
ELLIPSOIDS = "ellipsoids"
#: Label map files a folder given to ``--atlas`` is searched for.
ATLAS_SUFFIXES = (".segff", ".gff", ".nii", ".nii.gz", ".hdr", ".tif", ".tiff")
#: Organs that lie on the animal's left: the cue for which side is left.
_LEFT_ORGANS = ("stomach", "spleen")


@dataclass(frozen=True)
class LabelAtlas:
    """One real label map in the phantom's pose, cropped to its organs."""

    name: str
    labels: np.ndarray  #: (z, y, x) uint8, values as in CT_ORGANS
    spacing: tuple[float, float, float]  #: mm
    centroids: dict[str, np.ndarray]  #: organ -> centroid (z, y, x) in mm from the crop's corner
    volumes: dict[str, float]  #: organ -> mm³

    @property
    def organs(self) -> tuple[str, ...]:
        """The organs the map has, in CT_ORGANS order."""
        return tuple(self.volumes)


def organ_of(class_name: str) -> str | None:
    """Our organ for a label map's class name ("Lung", "KidneyLeft", "kidneys", ...), or None."""
    name = re.sub(r"[\s_\-]+", "", class_name.strip().lower())
    name = re.sub(r"^(left|right)|(left|right)$", "", name)
    return DATABASE_NAMES.get(name) or (name if name in CT_ORGANS else None)


def _gff_classes(path: Path) -> dict[int, str]:
    """{label value: class name} of a SEGFF file, from its ``Project info``."""
    import pygff

    info = pygff.load(str(path)).info.meta
    info = info.get("Project info") if isinstance(info, dict) else None
    return parse_cls("\n".join(f"{k}={v}" for k, v in (info or {}).items()))


def _read_classes(path: Path) -> tuple[Scan, dict[int, str]]:
    """The label volume of a map file or Rosenhain folder, and {label value: class name}."""
    if path.is_dir():
        if folder_kind(path) != "rosenhain":
            raise ValueError(f"{path}: not a label map folder (a Rosenhain scan folder with Organ_*.img/.cls)")
        scan = read_scan(path)
        if scan.labels is None or not scan.organs:
            raise ValueError(f"{path}: the scan folder has no organ labels")
        return Scan(None, scan.spacing, scan.labels, source=str(path)), {v: o for o, v in scan.organs.items()}
    if suffix(path) in (".segff", ".gff"):
        scan = read_scan(path)
        if scan.labels is None:
            raise ValueError(f"{path}: a GFF image, not a SEGFF label map")
        return scan, _gff_classes(path)
    names = organ_names_beside(path)
    if not names:
        stem = path.name.split(".")[0]
        raise ValueError(f"{path}: no organ names beside it (a {stem}.json with {{\"organs\": ...}} or a {stem}.ctbl)")
    scan = read_scan(path)
    labels = np.asarray(scan.image)
    if labels.dtype.kind == "f":
        labels = np.round(labels)
    return Scan(None, scan.spacing, labels.astype(np.int64), source=str(path)), {v: n for n, v in names.items()}


def _renumber(labels: np.ndarray, classes: dict[int, str], path: Path) -> np.ndarray:
    """Labels renumbered as CT_ORGANS; classes we do not model (tumour, trachea, ...) become 0."""
    lut = np.zeros(max(int(labels.max(initial=0)), *classes, 0) + 1, np.uint8)
    for value, name in classes.items():
        organ = organ_of(name)
        if organ is not None and value > 0:
            lut[value] = CT_ORGANS[organ]  # left and right kidney both become "kidneys"
    if labels.min(initial=0) < 0:
        raise ValueError(f"{path}: negative label values")
    out = lut[labels]
    if not out.any():
        raise ValueError(f"{path}: none of its classes {sorted(set(classes.values()))} is an organ the phantom "
                         f"draws ({', '.join(CT_ORGANS)})")
    return out


def _centre(labels: np.ndarray, organs: list[str]) -> np.ndarray | None:
    """The mean position (voxels) of the named organs' voxels, or None when the map has none of them."""
    mask = np.isin(labels, [CT_ORGANS[o] for o in organs])
    return np.asarray(ndi.center_of_mass(mask)) if mask.any() else None


def standard_pose(labels: np.ndarray) -> np.ndarray:
    """A head-first label map (CT_ORGANS values) turned so the back is at low y and the left at high x.

    The kidneys lie dorsal to the heart and liver. The stomach and spleen lie on the left, and so
    does the heart against the lungs or kidneys. A map without these cues keeps its y and x.
    """
    kidneys, front = _centre(labels, ["kidneys"]), _centre(labels, ["heart", "liver"])
    if kidneys is not None and front is not None and kidneys[1] > front[1]:
        labels = labels[:, ::-1]
    left, mid = _centre(labels, list(_LEFT_ORGANS)), _centre(labels, list(CT_ORGANS))
    if left is None:
        left, mid = _centre(labels, ["heart"]), _centre(labels, ["lungs"])
        if mid is None:
            mid = _centre(labels, ["kidneys"])
    if left is not None and mid is not None and left[2] < mid[2]:
        labels = labels[:, :, ::-1]
    return np.ascontiguousarray(labels)


def _crop(labels: np.ndarray, margin: int = 2) -> np.ndarray:
    """The labels cut to their organs' bounding box, with a margin of background."""
    hits = np.argwhere(labels > 0)
    lo = np.maximum(hits.min(0) - margin, 0)
    hi = np.minimum(hits.max(0) + margin + 1, labels.shape)
    return np.ascontiguousarray(labels[tuple(slice(a, b) for a, b in zip(lo, hi))])


def read_atlas(path: str | os.PathLike) -> LabelAtlas:
    """Read one label map (SEGFF, NIfTI or TIFF with organ names beside it, or a Rosenhain folder)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such label map")
    scan, classes = _read_classes(path)
    if scan.labels is None or np.ndim(scan.labels) != 3:
        raise ValueError(f"{path}: expected a 3D label volume")
    labels = _renumber(np.asarray(scan.labels), classes, path)
    organs = {o: v for o, v in CT_ORGANS.items()}
    labels = _crop(standard_pose(orient_body(Scan(None, scan.spacing, labels, organs)).labels))
    spacing = tuple(float(s) for s in scan.spacing)  # type: ignore[union-attr]
    present = [o for o, v in CT_ORGANS.items() if (labels == v).any()]
    values = [CT_ORGANS[o] for o in present]
    centres = ndi.center_of_mass(np.ones(labels.shape, bool), labels, values)
    counts = np.bincount(labels.ravel(), minlength=max(CT_ORGANS.values()) + 1)
    voxel = float(np.prod(spacing))
    return LabelAtlas(case_name(path), labels, spacing,  # type: ignore[arg-type]
                      {o: np.asarray(c) * spacing for o, c in zip(present, centres)},
                      {o: float(counts[CT_ORGANS[o]]) * voxel for o in present})


def atlas_files(paths: list[str | os.PathLike]) -> list[Path]:
    """The label maps named: files as given, and the maps inside folders (sorted), in order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and folder_kind(p) != "rosenhain":
            inside = sorted(f for f in p.iterdir() if f.is_file() and suffix(f) in ATLAS_SUFFIXES)
            if not inside:
                raise ValueError(f"{p}: no label maps inside ({', '.join(ATLAS_SUFFIXES)})")
            found += inside
        else:
            found.append(p)
    return found


def load_atlases(paths: list[str | os.PathLike], hold_out: list[str] | tuple[str, ...] = ()
                 ) -> list[LabelAtlas | None]:
    """The anatomy pool of ``synth ct --atlas``: each map read once, ``None`` for the ellipsoid model.

    ``paths`` may name ``ellipsoids`` (unless a file of that name exists) as well as files and
    folders; maps whose name (file name without extensions) is in ``hold_out`` are left out, and
    a ``hold_out`` name that matches nothing is an error, so a typo never leaks a test map into
    training.
    """
    pool: list[LabelAtlas | None] = []
    unmatched = set(hold_out)
    for entry in paths:
        if str(entry) == ELLIPSOIDS and not Path(entry).exists():
            pool.append(None)
            continue
        for file in atlas_files([entry]):
            if case_name(file) in hold_out:
                unmatched.discard(case_name(file))
                continue
            pool.append(read_atlas(file))
    if unmatched:
        raise ValueError(f"--hold-out {min(unmatched)}: no such map among --atlas")
    if not pool:
        raise ValueError("--atlas: no anatomy left to draw from (every map is held out)")
    return pool
