"""Dataset folders on disk: the micro-CT dataset contract and the lab's ultrasound layout.

Micro-CT (the MOSnet issue's contract)::

    DATASET/dataset.json  {"name", "condition", "organs": {name: value}, "spacing_mm": [z, y, x]}
    DATASET/images/CASE.tif   (z, y, x) HU
    DATASET/labels/CASE.tif   (z, y, x) labels numbered as in dataset.json

Ultrasound (the lab's layout)::

    SERIES/SERIES.tif            35-page stack
    SERIES/SERIES_montage.png    the same frames as one 5x7 montage
    SERIES/hearts/frame_07.zip   ImageJ RoiSet of that frame's hearts (position = frame 7)
    SERIES/livers/...  SERIES/placentas/...

A frame with no instance of an organ has no RoiSet in that organ's folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from ..io.composites import montage, write_stack
from ..io.roi import polygon_roi, write_roiset
from ..io.volumes import write_tiff
from ..organs import CT_DATASET_ORGANS, US_FOLDERS, US_GRID, US_ORGANS
from .phantom_ct import CTPhantom
from .phantom_us import USSeries


def write_ct_case(dataset: str | os.PathLike, case: str, scan: CTPhantom, name: str | None = None,
                  unannotated: tuple[str, ...] = ()) -> Path:
    """Add one phantom to a micro-CT dataset folder, creating dataset.json on first use.

    Only the organs the condition's dataset annotates are kept in the labels and dataset.json,
    as with the real partially annotated datasets; ``unannotated`` removes more (the MOSnet
    paper's Table 3 experiment drops kidneys and bladder from one dataset).
    """
    root = Path(dataset)
    unknown = set(unannotated) - set(scan.organs)
    if unknown:
        raise ValueError(f"unknown organs to leave unannotated: {sorted(unknown)}")
    organs = {o: scan.organs[o] for o in CT_DATASET_ORGANS[scan.condition] if o not in unannotated}
    if not organs:
        raise ValueError("a dataset must annotate at least one organ")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    meta = {
        "name": name or root.name,
        "condition": scan.condition,
        "organs": organs,
        "spacing_mm": list(scan.spacing),
    }
    meta_path = root / "dataset.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old["condition"] != meta["condition"] or old["organs"] != meta["organs"]:
            raise ValueError(f"{meta_path}: dataset is {old['condition']!r} with other organs; "
                             f"cannot add a {scan.condition!r} scan")
    else:
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    labels = scan.labels.copy()
    for organ, value in scan.organs.items():
        if organ not in organs:
            labels[labels == value] = 0
    write_tiff(root / "images" / f"{case}.tif", scan.image, scan.spacing)
    write_tiff(root / "labels" / f"{case}.tif", labels, scan.spacing)
    return root


def write_us_series(folder: str | os.PathLike, series: USSeries, name: str | None = None) -> Path:
    """Write a series in the lab's layout: stack, montage and one RoiSet per organ and frame."""
    root = Path(folder)
    name = name or root.name
    root.mkdir(parents=True, exist_ok=True)
    write_stack(root / f"{name}.tif", series.frames)
    if len(series.frames) == US_GRID[0] * US_GRID[1]:
        iio.imwrite(root / f"{name}_montage.png", montage(series.frames, US_GRID))
    for organ in US_ORGANS:
        organ_dir = root / US_FOLDERS[organ]
        organ_dir.mkdir(exist_ok=True)
        for frame in range(len(series.frames)):
            found = series.organ_instances(organ, frame)
            if found:
                rois = [polygon_roi(i.polygon, i.name, frame=frame) for i in found]
                write_roiset(organ_dir / f"frame_{frame + 1:02d}.zip", rois)
    return root


def convert_ct_dataset(sources: list[str | os.PathLike], out: str | os.PathLike, condition: str,
                       spacing: tuple[float, float, float] | None = None, log=print) -> Path:
    """Convert scans with labels (any format :func:`~napari_mousesegment.io.volumes.read_scan`
    reads) into a dataset folder, renumbering organs to :data:`CT_ORGANS`.

    The dataset annotates the organs every scan annotates; an organ missing from some scans'
    class lists is left out, with a message, rather than being taught as background.
    """
    from ..io.volumes import case_name, read_scan
    from ..organs import CT_ORGANS

    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; choose another --out")
    scans = []
    for src in sources:
        scan = read_scan(src, spacing)
        if scan.image is None or scan.labels is None or not scan.organs:
            raise ValueError(f"{src}: needs both an image and organ labels to join a dataset")
        scans.append((Path(src), scan))
    common = set.intersection(*(set(s.organs) for _, s in scans))
    dropped = set().union(*(set(s.organs) for _, s in scans)) - common
    if dropped:
        log(f"left unannotated (missing from some scans' classes): {sorted(dropped)}")
    if not common:
        raise ValueError("the scans share no annotated organ")
    organs = {o: CT_ORGANS[o] for o in CT_ORGANS if o in common}
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for src, scan in scans:
        labels = np.zeros(scan.labels.shape, np.uint8)
        for organ, value in organs.items():
            labels[scan.labels == scan.organs[organ]] = value
        case = case_name(src)
        write_tiff(root / "images" / f"{case}.tif", np.round(scan.image).astype(np.int16), scan.spacing)
        write_tiff(root / "labels" / f"{case}.tif", labels, scan.spacing)
        log(f"  {src} -> {case}")
    meta = {"name": root.name, "condition": condition, "organs": organs, "spacing_mm": list(scans[0][1].spacing)}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root
