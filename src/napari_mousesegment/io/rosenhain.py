"""The Rosenhain et al. 2018 micro-CT database: scan folders and their ``.cls`` class files.

A scan folder holds ``CT280.hdr/.img`` (Analyze, 0.28 mm; or ``CT140``) and ``Organ_280.img`` with
``Organ_280.cls`` (``ClassNames=a|b``, ``ClassIndices=0|1``). Label numbers differ between scans,
so organs are always mapped through the class names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .nifti import read_nifti
from .scan import Scan

#: Rosenhain database class names -> our organ names; others (Trachea, Muscle, Tumor, ...) are ignored.
DATABASE_NAMES = {
    "heart": "heart", "lung": "lungs", "lungs": "lungs", "liver": "liver", "kidneys": "kidneys",
    "kidney": "kidneys", "spleen": "spleen", "bladder": "bladder", "intestine": "intestine",
    "stomach": "stomach", "bone": "bone",
}
SCANS = ("CT280.hdr", "CT140.hdr")


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


def is_scan_folder(folder: Path) -> bool:
    """Whether a folder looks like a Rosenhain scan folder (a ``CT*.hdr`` inside)."""
    return any(f.name.lower().startswith("ct") and f.suffix.lower() == ".hdr" for f in folder.iterdir())


def read_rosenhain_folder(folder: Path) -> Scan:
    """The scan in HU and, when the folder has them, its organ labels, in the file's own axis order."""
    ct = next((folder / n for n in SCANS if (folder / n).is_file()), None)
    if ct is None:
        raise ValueError(f"{folder}: not a Rosenhain scan folder (no CT280.hdr or CT140.hdr)")
    image, spacing = read_nifti(ct)
    labels = organs = None
    for stem in ("Organ_280", "Organ1_280", "Organ_140", "Organ1_140"):
        img, cls = folder / f"{stem}.img", folder / f"{stem}.cls"
        if img.is_file() and cls.is_file():
            if (folder / f"{stem}.hdr").is_file():
                labels, _ = read_nifti(folder / f"{stem}.hdr")
            else:  # label volume without its own header: same grid as the scan, one byte per voxel
                raw = np.fromfile(img, dtype=np.uint8)
                if raw.size != image.size:
                    raise ValueError(f"{img}: {raw.size} bytes, expected {image.size} for the scan's grid")
                labels = raw.reshape(image.shape)  # x fastest on disk: C order is (z, y, x)
            organs = map_classes(parse_cls(cls.read_text(errors="replace")))
            break
    return Scan(image.astype(np.float32), spacing, labels, organs, str(folder))
