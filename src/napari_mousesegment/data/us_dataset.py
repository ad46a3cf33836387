"""Ultrasound training data: series folders to a dataset folder, split by series, never by frame.

Dataset folder contract (written by ``mousesegment dataset ultrasound``)::

    DATASET/dataset.json                     {"kind": "ultrasound", "organs": [...],
                                              "series": {NAME: {"split": "train"|"val"|"test",
                                                                "frames": N, "organs": [...], "source": ...}}}
    DATASET/series/NAME/frames.tif           (N, H, W) frames
    DATASET/series/NAME/ORGAN_labels.tif     (N, H, W) uint16 instance ids, for annotated organs

As in the report, 5 whole series are held out for testing and the rest split 80/20 into training
and validation series.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from ..io.composites import write_stack
from ..io.series import read_series, series_folders

SPLITS = ("train", "val", "test")


@dataclass
class USItem:
    """One series ready for training or evaluation."""

    name: str
    split: str
    frames: np.ndarray  #: (N, H, W)
    labels: dict[str, np.ndarray]  #: organ -> (N, H, W) instance ids; only annotated organs


def split_series(names: list[str], test: int = 5, val_fraction: float = 0.2, seed: int = 0) -> dict[str, str]:
    """Assign whole series to test, validation and training, reproducibly from ``seed``."""
    if len(set(names)) != len(names):
        raise ValueError(f"series names must be unique, got {sorted(names)}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if len(names) - test < 2:
        raise ValueError(f"{len(names)} series cannot give {test} test series and still train and validate; "
                         "pass a smaller --test")
    names = sorted(names)  # the same series get the same split whatever order they were given in
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    rest = order[test:]
    n_val = max(1, round(len(rest) * val_fraction)) if val_fraction > 0 else 0
    split = {name: "test" for name in order[:test]}
    split.update({name: "val" for name in rest[:n_val]})
    split.update({name: "train" for name in rest[n_val:]})
    return split


def build_us_dataset(sources: list[str | os.PathLike], out: str | os.PathLike, organs: list[str],
                     test: int = 5, val_fraction: float = 0.2, seed: int = 0,
                     grid: tuple[int, int] | None = None, log=print) -> Path:
    """Read series folders in the lab's layout and write a dataset folder with its split."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; choose another --out")
    folders = series_folders(list(sources))
    split = split_series([f.name for f in folders], test, val_fraction, seed)
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    meta: dict = {"kind": "ultrasound", "organs": list(organs), "test": test, "val_fraction": val_fraction,
                  "seed": seed, "series": {}}
    for folder in folders:
        series = read_series(folder, organs, grid=grid)
        if not series.labels:
            log(f"  {folder}: no ROIs for {', '.join(organs)}; kept as an unannotated series")
        target = staging / "series" / series.name
        target.mkdir(parents=True)
        write_stack(target / "frames.tif", series.frames)
        for organ, labels in series.labels.items():
            write_stack(target / f"{organ}_labels.tif", labels, compress=True)
        counts = {o: int(sum(len(np.unique(f[f > 0])) for f in lab)) for o, lab in series.labels.items()}
        meta["series"][series.name] = {"split": split[series.name], "frames": len(series.frames),
                                       "organs": sorted(series.labels), "instances": counts, "source": str(folder)}
        log(f"  {folder} -> {split[series.name]}: {len(series.frames)} frames, instances {counts}")
    (staging / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    if root.exists():
        root.rmdir()
    os.replace(staging, root)
    return root


def is_us_dataset(path: str | os.PathLike) -> bool:
    meta = Path(path) / "dataset.json"
    return meta.is_file() and json.loads(meta.read_text()).get("kind") == "ultrasound"


def load_us_items(data: list[str | os.PathLike], organ: str, test: int = 5, val_fraction: float = 0.2,
                  seed: int = 0, grid: tuple[int, int] | None = None, lab_split: str | None = None) -> list[USItem]:
    """Series annotated for ``organ``, from dataset folders (their split) or lab folders (split here,
    or all put in ``lab_split``)."""
    items: list[USItem] = []
    lab: list[Path] = []
    for path in map(Path, data):
        if is_us_dataset(path):
            meta = json.loads((path / "dataset.json").read_text())
            for name, info in meta["series"].items():
                if organ not in info["organs"]:
                    continue
                folder = path / "series" / name
                items.append(USItem(name, info["split"], tifffile.imread(folder / "frames.tif"),
                                    {organ: tifffile.imread(folder / f"{organ}_labels.tif")}))
        else:
            lab.extend(series_folders([path]))
    if lab:
        names = [f.name for f in lab]
        split = {n: lab_split for n in names} if lab_split else split_series(names, test, val_fraction, seed)
        for folder in lab:
            series = read_series(folder, [organ], grid=grid)
            if organ in series.labels:
                items.append(USItem(series.name, split[series.name], series.frames, series.labels))
    names = [i.name for i in items]
    if len(set(names)) != len(names):
        raise ValueError(f"series names repeat across --data folders: {sorted(n for n in names if names.count(n) > 1)}")
    if not items:
        raise ValueError(f"no series annotated for {organ!r} in {', '.join(map(str, data))}")
    for item in items:
        if item.frames.ndim != 3 or item.labels[organ].shape != item.frames.shape:
            raise ValueError(f"series {item.name}: frames {item.frames.shape} and {organ} labels "
                             f"{item.labels[organ].shape} differ in shape")
    return items
