"""Volumes on disk: TIFF stacks with their voxel size, NIfTI, Analyze, GFF and Rosenhain folders.

No torch, napari or Qt here; nibabel and pygff are imported only when their formats are read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile


def write_tiff(path: str | os.PathLike, volume: np.ndarray, spacing: tuple[float, float, float]) -> Path:
    """Write a (z, y, x) volume as an ImageJ TIFF with its spacing in mm (Fiji reads it)."""
    path = Path(path)
    dz, dy, dx = (float(s) for s in spacing)
    tmp = path.with_name(path.name + ".partial")
    tifffile.imwrite(
        tmp, np.ascontiguousarray(volume), imagej=True, resolution=(1 / dx, 1 / dy),
        metadata={"axes": "ZYX", "spacing": dz, "unit": "mm"},
    )
    os.replace(tmp, path)
    return path


def read_tiff(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """Read a TIFF volume and its (z, y, x) spacing in mm, or None when the file has none."""
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            volume = tif.asarray()
            meta = tif.imagej_metadata or {}
            page = tif.pages.first
            spacing = None
            if "spacing" in meta and "XResolution" in page.tags:
                xres = page.tags["XResolution"].value
                yres = page.tags["YResolution"].value
                unit = str(meta.get("unit", "mm")).replace("\\u00B5", "µ")
                units = {"mm": 1.0, "micron": 1e-3, "µm": 1e-3, "um": 1e-3, "cm": 10.0}
                if unit not in units:
                    raise ValueError(f"spacing unit {unit!r} is not a length ImageJ writes (mm, µm, micron, cm)")
                scale = units[unit]
                spacing = (float(meta["spacing"]) * scale, yres[1] / yres[0] * scale, xres[1] / xres[0] * scale)
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable TIFF volume ({exc})") from exc
    return volume, spacing


# --- scans in the formats labs have: TIFF, NIfTI, Analyze, GFF, Rosenhain folders ---------------

#: Rosenhain database class names -> our organ names; others (Trachea, Muscle, Tumor, ...) are ignored.
DATABASE_NAMES = {
    "heart": "heart", "lung": "lungs", "lungs": "lungs", "liver": "liver", "kidneys": "kidneys",
    "kidney": "kidneys", "spleen": "spleen", "bladder": "bladder", "intestine": "intestine",
    "stomach": "stomach", "bone": "bone",
}


@dataclass
class Scan:
    """A volume read from disk, (z, y, x), with what the file says about it."""

    image: np.ndarray | None  #: HU, or None for a label map alone (e.g. a .segff)
    spacing: tuple[float, float, float] | None  #: mm
    labels: np.ndarray | None = None
    organs: dict[str, int] | None = None  #: our organ name -> label value in ``labels``
    source: str = ""


def parse_cls(text: str) -> dict[int, str]:
    """Rosenhain ``.cls`` text (ClassNames=a|b, ClassIndices=0|1, ...) to {label value: class name}."""
    fields = {}
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip()] = value.strip()
    try:
        names = fields["ClassNames"].split("|")
        indices = [int(v) for v in fields["ClassIndices"].split("|")]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"class file lacks ClassNames/ClassIndices ({exc})") from exc
    if len(names) != len(indices):
        raise ValueError(f"class file has {len(names)} names but {len(indices)} indices")
    return dict(zip(indices, names))


def map_classes(classes: dict[int, str]) -> dict[str, int]:
    """{label value: database name} to {our organ: label value}, dropping classes we do not model."""
    organs = {}
    for value, name in classes.items():
        organ = DATABASE_NAMES.get(name.strip().lower())
        if organ and value != 0:
            organs[organ] = value
    return organs


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


def _nibabel(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import nibabel

    try:
        img = nibabel.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for bad headers and short files
        raise ValueError(f"{path}: not a readable NIfTI/Analyze volume ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {data.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.transpose(data, (2, 1, 0)), zooms[::-1]  # nibabel is (x, y, z); we are (z, y, x)


def _gff(path: Path) -> Scan:
    import pygff

    try:
        data = pygff.load(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: not a readable GFF file ({exc})") from exc
    array = np.asarray(data).squeeze()
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {array.shape}")
    spacing = tuple(float(v) for v in np.asarray(data.info.voxel_sizes).ravel()[:3])[::-1]  # (x,y,z) -> (z,y,x)
    info = data.info.meta.get("Project info") if isinstance(data.info.meta, dict) else None
    if path.suffix.lower() == ".segff" or info:
        classes = parse_cls("\n".join(f"{k}={v}" for k, v in (info or {}).items()))
        return Scan(None, spacing, array, map_classes(classes), str(path))  # type: ignore[arg-type]
    scale, offset = float(data.info.intensity_scale or 1.0), float(data.info.intensity_offset or 0.0)
    if (scale, offset) != (1.0, 0.0):
        array = array.astype(np.float32) * scale + offset
    return Scan(array, spacing, source=str(path))  # type: ignore[arg-type]


def _rosenhain_folder(folder: Path) -> Scan:
    ct = next((folder / n for n in ("CT280.hdr", "CT140.hdr") if (folder / n).is_file()), None)
    if ct is None:
        raise ValueError(f"{folder}: not a Rosenhain scan folder (no CT280.hdr or CT140.hdr)")
    image, spacing = _nibabel(ct)
    labels = organs = None
    for stem in ("Organ_280", "Organ1_280", "Organ_140", "Organ1_140"):
        img, cls = folder / f"{stem}.img", folder / f"{stem}.cls"
        if img.is_file() and cls.is_file():
            if (folder / f"{stem}.hdr").is_file():
                labels, _ = _nibabel(folder / f"{stem}.hdr")
            else:  # label volume without its own header: same grid as the scan, one byte per voxel
                raw = np.fromfile(img, dtype=np.uint8)
                if raw.size != image.size:
                    raise ValueError(f"{img}: {raw.size} bytes, expected {image.size} for the scan's grid")
                labels = raw.reshape(image.shape)  # x fastest on disk: C order is (z, y, x)
            organs = map_classes(parse_cls(cls.read_text(errors="replace")))
            break
    return Scan(image.astype(np.float32), spacing, labels, organs, str(folder))


def case_name(path: str | os.PathLike) -> str:
    """The case name of a scan file or folder: its name without any extension (``a.nii.gz`` -> ``a``)."""
    return Path(path).name.split(".")[0]


def read_scan(path: str | os.PathLike, spacing: tuple[float, float, float] | None = None) -> Scan:
    """Read a micro-CT scan: TIFF (spacing from the file or ``spacing``), NIfTI, Analyze, GFF/SEGFF
    or a Rosenhain database folder. GFF and Rosenhain data are oriented by :func:`orient_body`."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]).lower() if path.name.lower().endswith(".nii.gz") else path.suffix.lower()
    if path.is_dir():
        return orient_body(_rosenhain_folder(path))
    if not path.is_file():
        raise ValueError(f"{path}: no such file or folder")
    if suffix in (".tif", ".tiff"):
        image, file_spacing = read_tiff(path)
        if image.ndim != 3:
            raise ValueError(f"{path}: expected a 3D (z, y, x) volume, got shape {image.shape}")
        scan = Scan(image, spacing or file_spacing, source=str(path))
    elif suffix in (".nii", ".nii.gz", ".hdr", ".img"):
        image, file_spacing = _nibabel(path)
        scan = Scan(image, spacing or file_spacing, source=str(path))
    elif suffix in (".gff", ".segff"):
        scan = orient_body(_gff(path))
        if spacing:
            scan.spacing = spacing
    else:
        raise ValueError(f"{path}: unsupported scan format {suffix!r} (TIFF, NIfTI, Analyze, GFF or a folder)")
    if scan.spacing is None:
        raise ValueError(f"{path}: the file has no voxel size; give the spacing (--spacing Z,Y,X in mm)")
    if scan.image is not None and not np.isfinite(scan.image).all():
        raise ValueError(f"{path}: the image contains NaN or infinite values")
    return scan
