"""Organ vocabularies shared by the phantoms, the readers and the models.

Plain data only, so that every layer (io, data, models, widgets) can import it cheaply.
"""

from __future__ import annotations

#: Micro-CT organs and their label values, as written by the phantoms and dataset folders.
CT_ORGANS: dict[str, int] = {
    "heart": 1,
    "lungs": 2,
    "liver": 3,
    "kidneys": 4,
    "spleen": 5,
    "bladder": 6,
    "intestine": 7,
    "stomach": 8,
    "bone": 9,
}

#: Organs each micro-CT dataset annotates (MOSnet paper; design NOTES.md).
CT_DATASET_ORGANS: dict[str, tuple[str, ...]] = {
    "native": ("heart", "lungs", "liver", "kidneys", "spleen", "bladder", "intestine"),
    "contrast": (
        "heart", "lungs", "liver", "kidneys", "spleen", "bladder", "intestine", "stomach", "bone",
    ),
}

#: RGBA-free display colours for the micro-CT organs (hex), used by napari layers and figures.
CT_COLORS: dict[str, str] = {
    "heart": "#e6194b",
    "lungs": "#46f0f0",
    "liver": "#9a6324",
    "kidneys": "#f58231",
    "spleen": "#911eb4",
    "bladder": "#ffe119",
    "intestine": "#3cb44b",
    "stomach": "#f032e6",
    "bone": "#fffac8",
}

#: Fetal-ultrasound organs, with the folder name the lab's layout uses for each.
US_ORGANS: tuple[str, ...] = ("heart", "liver", "placenta")
US_FOLDERS: dict[str, str] = {"heart": "hearts", "liver": "livers", "placenta": "placentas"}

#: Frames in one ultrasound series, and the montage grid (rows, columns) they arrive in.
US_FRAMES = 35
US_GRID = (5, 7)
