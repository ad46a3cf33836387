"""Organ vocabularies shared by the phantoms, the readers and the models.

Plain data and small functions of it, so that every layer (io, data, models, widgets) can import
it cheaply.
"""

from __future__ import annotations

import hashlib

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

#: Plausible volume of each micro-CT organ in an adult (20-30 g) mouse, (low, high) in mm³. A
#: predicted volume outside it, or an organ found nowhere, is flagged (:func:`volume_flag`): a QC
#: hint that the scan, its spacing or the model is off, never a correction. The bands are generous
#: on purpose (strain, age, sex, fasting, disease), built around two sources:
#:   - the Rosenhain et al. (2018) database's label map (Sci Data 5:180294; our copy in
#:     docs/synthetic-data.md): heart 265, lungs 470, liver 1882, kidneys 437, bone 784 mm³;
#:   - organ weights of adult laboratory mice as a share of body weight (heart ~0.5 %, liver
#:     ~4-6 %, both kidneys ~1.5 %, spleen ~0.3 %; e.g. Davies & Morris 1993, Pharm Res 10:1093),
#:     at ~1.05 g/mL for a 20-30 g mouse: heart 95-145, liver 760-1700, kidneys 285-430, spleen 55-85 mm³.
#: Lungs hold air, so their CT volume exceeds their tissue weight's; bladder, stomach and gut vary
#: with filling; bone depends on how much skeleton the scan holds. See docs/mosnet.md.
CT_VOLUME_RANGES_MM3: dict[str, tuple[float, float]] = {
    "heart": (80.0, 450.0),
    "lungs": (200.0, 1500.0),
    "liver": (700.0, 3000.0),
    "kidneys": (150.0, 800.0),
    "spleen": (20.0, 300.0),
    "bladder": (5.0, 600.0),
    "intestine": (300.0, 4000.0),
    "stomach": (30.0, 1000.0),
    "bone": (100.0, 3000.0),
}
#: The flags :func:`volume_flag` gives: within the range, below, above, found nowhere, no range known.
VOLUME_FLAGS = ("ok", "low", "high", "absent", "")


def volume_flag(organ: str, mm3: float) -> str:
    """``ok``, ``low`` or ``high`` against :data:`CT_VOLUME_RANGES_MM3`; ``absent`` when the organ
    was found nowhere (0 mm³, whatever the organ); ``""`` for an organ without a known range."""
    if mm3 <= 0:
        return "absent"
    band = CT_VOLUME_RANGES_MM3.get(organ.strip().lower())
    if band is None:
        return ""
    return "low" if mm3 < band[0] else "high" if mm3 > band[1] else "ok"


def volume_range_text(organ: str) -> str:
    """The plausible range of an organ as text ("80-450 mm³"), or "" when none is known."""
    band = CT_VOLUME_RANGES_MM3.get(organ.strip().lower())
    return f"{band[0]:g}-{band[1]:g} mm³" if band else ""


#: Fetal-ultrasound organs, with the folder name the lab's layout uses for each.
US_ORGANS: tuple[str, ...] = ("heart", "liver", "placenta")
US_FOLDERS: dict[str, str] = {"heart": "hearts", "liver": "livers", "placenta": "placentas"}
#: Display colours of the ultrasound organs (hex): heart and liver as in :data:`CT_COLORS`.
US_COLORS: dict[str, str] = {"heart": CT_COLORS["heart"], "liver": CT_COLORS["liver"], "placenta": "#4363d8"}

#: Frames in one ultrasound series, and the montage grid (rows, columns) they arrive in.
US_FRAMES = 35
US_GRID = (5, 7)


def hex_rgb(color: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` as (r, g, b), 0..255."""
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


#: Colours ImageJ draws ROI groups 1..63 in: entries 1..63 of Fiji's ``luts/glasbey.lut``. ImageJ
#: reads ``luts/Glasbey.lut`` (newer versions fall back to ``glasbey.lut``; 1.53t does not); without
#: it every group is drawn in the default ROI colour. Entry 0 stands for group 0, "no group".
GLASBEY: tuple[str, ...] = (
    "#000000",
    "#0000ff", "#ff0000", "#00ff00", "#000033", "#ff00b6", "#005300", "#ffd300",
    "#009fff", "#9a4d42", "#00ffbe", "#783fc1", "#1f9698", "#ffacfd", "#b1cc71",
    "#f1085c", "#fe8f42", "#dd00ff", "#201a01", "#720055", "#766c95", "#02ad24",
    "#c8ff00", "#886c00", "#ffb79f", "#858567", "#a10300", "#14f9ff", "#00479e",
    "#dc5e93", "#93d4ff", "#004cff", "#004250", "#39a76a", "#ee70fe", "#000064",
    "#abf5cc", "#a192ff", "#a4ff73", "#ffce71", "#470015", "#d4adc5", "#fb766f",
    "#abbc00", "#7500d7", "#a6009a", "#0073fe", "#a55dae", "#628402", "#0079a8",
    "#00ff83", "#563500", "#9f003f", "#422d42", "#fff2bb", "#005d43", "#fcff7c",
    "#9fbfba", "#a75413", "#4a276c", "#0010a6", "#914e6d", "#cf9500", "#c3bbff",
)

#: ImageJ ROI group of each known organ in exported RoiSets. ImageJ draws a grouped ROI in its
#: group's :data:`GLASBEY` colour whatever colour the file stores, so each group is the one whose
#: colour is closest to the organ's napari colour (:data:`US_COLORS`, :data:`CT_COLORS`).
ROI_GROUPS: dict[str, int] = {
    "heart": 2, "liver": 9, "placenta": 8,  # red, brown, sky blue
    "lungs": 10, "kidneys": 16, "spleen": 11, "bladder": 7, "intestine": 3, "stomach": 5, "bone": 54,
}
#: Groups other organ names are hashed into: not a known organ's, and light enough to see.
OTHER_ROI_GROUPS: tuple[int, ...] = (
    12, 13, 14, 20, 21, 22, 23, 24, 25, 27, 29, 30, 33, 34, 36, 37, 38, 39, 41, 42, 43, 47, 48, 50,
    56, 57, 58, 61, 62, 63,
)


def roi_style(organ: str) -> tuple[int, tuple[int, int, int]]:
    """ImageJ ROI group and stroke colour (r, g, b) of an organ's ROIs, the same in every process.

    Known organs have fixed groups (:data:`ROI_GROUPS`); any other name gets one of
    :data:`OTHER_ROI_GROUPS` from a sha256 of its name (not Python's per-process ``hash``), so two
    rare organs may share a group. The colour is the one ImageJ gives the group, so the stored
    stroke colour and what Fiji draws agree.
    """
    name = organ.strip().lower()
    group = ROI_GROUPS.get(name)
    if group is None:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
        group = OTHER_ROI_GROUPS[int.from_bytes(digest[:4], "big") % len(OTHER_ROI_GROUPS)]
    return group, hex_rgb(GLASBEY[group])
