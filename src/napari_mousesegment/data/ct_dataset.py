"""The micro-CT dataset folder, written and read here alone.

Contract (``mousesegment dataset ct``, ``synth ct``, ``queue export``; read by ``train mosnet``,
``evaluate ct`` and ``worker --replay``)::

    DATASET/dataset.json  {"name", "condition", "organs": {name: value}, "spacing_mm": [z, y, x]}
    DATASET/images/CASE.tif   (z, y, x) HU
    DATASET/labels/CASE.tif   (z, y, x) labels numbered as in dataset.json

No torch here: the training slices are made from these arrays in ``training.slices``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.jsonfile import read_object, write_object
from ..io.readers import read_label_map, read_scan
from ..io.scan import case_name
from ..io.tiff import read_tiff, write_tiff
from ..organs import CT_DATASET_ORGANS, CT_ORGANS
from .phantom_ct import CTPhantom

META = "dataset.json"


@dataclass
class CTDataset:
    """One dataset folder: its metadata and cases."""

    root: Path
    name: str
    condition: str
    organs: dict[str, int]
    spacing: tuple[float, float, float]
    cases: list[str]


def write_meta(root: str | os.PathLike, name: str, condition: str, organs: dict[str, int],
               spacing: tuple[float, float, float]) -> Path:
    """Write dataset.json; when the folder already has one, check that it describes the same
    condition and organs instead (a scan of another kind must not join the dataset)."""
    path = Path(root) / META
    meta = {"name": name, "condition": condition, "organs": dict(organs), "spacing_mm": [float(s) for s in spacing]}
    if path.exists():
        old = read_object(path, "a dataset description")
        if old["condition"] != meta["condition"] or old["organs"] != meta["organs"]:
            raise ValueError(f"{path}: dataset is {old['condition']!r} with other organs; "
                             f"cannot add a {condition!r} scan")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_object(path, meta)


def write_case(root: str | os.PathLike, case: str, image: np.ndarray, labels: np.ndarray,
               spacing: tuple[float, float, float]) -> None:
    """images/CASE.tif and labels/CASE.tif, both with the voxel size."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    write_tiff(root / "images" / f"{case}.tif", image, spacing)
    write_tiff(root / "labels" / f"{case}.tif", labels, spacing)


def read_ct_dataset(root: str | os.PathLike) -> CTDataset:
    """Read and check a dataset folder (dataset.json, images/CASE.tif, labels/CASE.tif)."""
    root = Path(root)
    meta_path = root / META
    if not meta_path.is_file():
        raise ValueError(f"{root}: not a dataset folder (no {META})")
    meta = read_object(meta_path, "a dataset description")
    try:
        organs = {str(k): int(v) for k, v in meta["organs"].items()}
        spacing = tuple(float(s) for s in meta["spacing_mm"])
        condition = str(meta["condition"])
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{meta_path}: malformed ({exc})") from exc
    if not organs:
        raise ValueError(f"{meta_path}: the dataset annotates no organ")
    cases = sorted(p.stem for p in (root / "images").glob("*.tif"))
    if not cases:
        raise ValueError(f"{root / 'images'}: no CASE.tif images")
    missing = [c for c in cases if not (root / "labels" / f"{c}.tif").is_file()]
    if missing:
        raise ValueError(f"{root / 'labels'}: no labels for {missing[:5]}")
    return CTDataset(root, str(meta.get("name", root.name)), condition, organs, spacing, cases)  # type: ignore[arg-type]


def load_case(dataset: CTDataset, case: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Image (HU), labels and spacing of one case; label values must be listed in dataset.json."""
    image, spacing = read_tiff(dataset.root / "images" / f"{case}.tif")
    labels, _ = read_tiff(dataset.root / "labels" / f"{case}.tif")
    if image.ndim == 2 and labels.ndim == 2:  # a single corrected slice (a case exported from the queue)
        image, labels = image[None], labels[None]
    if image.shape != labels.shape:
        raise ValueError(f"{dataset.root}/{case}: image {image.shape} and labels {labels.shape} differ in shape")
    unknown = set(np.unique(labels).tolist()) - {0, *dataset.organs.values()}
    if unknown:
        raise ValueError(f"{dataset.root / 'labels' / (case + '.tif')}: label values {sorted(unknown)} "
                         f"are not listed in {META}")
    return image, labels, spacing or dataset.spacing


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
    write_meta(root, name or root.name, scan.condition, organs, scan.spacing)
    labels = scan.labels.copy()
    for organ, value in scan.organs.items():
        if organ not in organs:
            labels[labels == value] = 0
    write_case(root, case, scan.image, labels, scan.spacing)
    record_phantom(root, case, {"seed": scan.seed, "anatomy": scan.anatomy,
                                **({"borrowed": scan.borrowed} if scan.borrowed else {}),
                                **({"voids": scan.voids} if scan.anatomy != "ellipsoids" else {})})
    return root


def record_phantom(root: str | os.PathLike, case: str, info: dict) -> None:
    """Note in dataset.json where a phantom case came from (``"phantoms": {case: {seed, anatomy}}``,
    ``borrowed``: {organ: map} when organs took another map's shape, and ``voids`` for a map's
    phantom: what fills the room its organs leave, absent before 2026-12-05, when it was muscle), so
    a held-out anatomy experiment can show which label maps each scan was drawn from, and how."""
    path = Path(root) / META
    meta = read_object(path, "a dataset description")
    phantoms = meta.get("phantoms") if isinstance(meta.get("phantoms"), dict) else {}
    write_object(path, {**meta, "phantoms": {**phantoms, case: info}})


def convert_ct_dataset(sources: list[str | os.PathLike], out: str | os.PathLike, condition: str,
                       spacing: tuple[float, float, float] | None = None, log=print,
                       labels: list[str | os.PathLike] | None = None, hu=None, series: str | None = None) -> Path:
    """Convert scans with labels (any format :func:`~napari_mousesegment.io.readers.read_scan`
    reads) into a dataset folder, renumbering organs to :data:`CT_ORGANS`.

    A scan's labels come from the scan itself (GFF/SEGFF, Rosenhain folders) or from ``labels``,
    one label map per scan on its grid (see :func:`~napari_mousesegment.io.readers.read_label_map`).
    The dataset annotates the organs every scan annotates; an organ missing from some scans'
    class lists is left out, with a message, rather than being taught as background.
    """
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; choose another --out")
    scans = []
    for k, src in enumerate(sources):
        scan = read_scan(src, spacing, hu=hu, series=series)
        if labels is not None and scan.image is not None:
            scan.labels, scan.organs = read_label_map(labels[k], scan)
            if scan.organs is None:
                raise ValueError(f"{labels[k]}: no organ names beside it (a labels.json or .ctbl, as predict writes)")
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
    for src, scan in scans:
        labels = np.zeros(scan.labels.shape, np.uint8)
        for organ, value in organs.items():
            labels[scan.labels == scan.organs[organ]] = value
        case = case_name(src)
        write_case(root, case, np.round(scan.image).astype(np.int16), labels, scan.spacing)
        log(f"  {src} -> {case}")
    write_meta(root, root.name, condition, organs, scans[0][1].spacing)  # last: a crash leaves no dataset
    return root
