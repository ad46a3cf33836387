"""The ultrasound dataset folder, written and read here alone: series split by series, never by frame.

Contract (``mousesegment dataset ultrasound`` and ``queue export``; read by ``train unet``,
``evaluate ultrasound`` and ``worker --replay``)::

    DATASET/dataset.json                     {"kind": "ultrasound", "organs": [...],
                                              "series": {NAME: {"split": "train"|"val"|"test",
                                                                "frames": N, "organs": [...],
                                                                "instances": {organ: n}, "source": ...}}}
    DATASET/series/NAME/frames.tif           (N, H, W) frames
    DATASET/series/NAME/ORGAN_labels.tif     (N, H, W) uint16 instance ids, for annotated organs

As in the report, 5 whole series are held out for testing and the rest split 80/20 into training
and validation series.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.jsonfile import read_object, write_object
from ..io.series import read_series, series_folders
from ..io.tiff import read_array, write_stack

SPLITS = ("train", "val", "test")
META = "dataset.json"


@dataclass
class USItem:
    """One series ready for training or evaluation."""

    name: str
    split: str
    frames: np.ndarray  #: (N, H, W)
    labels: dict[str, np.ndarray]  #: organ -> (N, H, W) instance ids; only annotated organs
    source: str = ""


def split_series(names: list[str], test: int = 5, val_fraction: float = 0.2, seed: int = 0) -> dict[str, str]:
    """Assign whole series to test, validation and training, reproducibly from ``seed``."""
    if len(set(names)) != len(names):
        raise ValueError(f"series names must be unique, got {sorted(names)}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if len(names) - test < (2 if val_fraction > 0 else 1):
        raise ValueError(f"{len(names)} series cannot give {test} test series and still train"
                         f"{' and validate' if val_fraction > 0 else ''}; pass a smaller --test")
    names = sorted(names)  # the same series get the same split whatever order they were given in
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    rest = order[test:]
    n_val = max(1, round(len(rest) * val_fraction)) if val_fraction > 0 else 0
    split = {name: "test" for name in order[:test]}
    split.update({name: "val" for name in rest[:n_val]})
    split.update({name: "train" for name in rest[n_val:]})
    return split


def write_us_dataset(root: str | os.PathLike, items: Iterable[USItem], organs: list[str], *, test: int,
                     val_fraction: float, seed: int, source: str | None = None,
                     log: Callable[[str], None] = lambda _: None) -> Path:
    """Write the dataset folder contract into ``root`` (which the caller stages and renames): each
    series' frames and label stacks as they come (one series in memory at a time), dataset.json last."""
    root = Path(root)
    meta: dict = {"kind": "ultrasound", "organs": list(organs), "test": test, "val_fraction": val_fraction,
                  "seed": seed, "series": {}}
    if source is not None:
        meta["source"] = source
    for item in items:
        target = root / "series" / item.name
        target.mkdir(parents=True)
        write_stack(target / "frames.tif", item.frames)
        for organ, labels in item.labels.items():
            write_stack(target / f"{organ}_labels.tif", labels, compress=True)
        counts = {o: int(sum(len(np.unique(f[f > 0])) for f in lab)) for o, lab in item.labels.items()}
        meta["series"][item.name] = {"split": item.split, "frames": len(item.frames), "organs": sorted(item.labels),
                                     "instances": counts, "source": item.source}
        log(f"  {item.source} -> {item.split}: {len(item.frames)} frames, instances {counts}")
    root.mkdir(parents=True, exist_ok=True)
    write_object(root / META, meta)
    return root


def build_us_dataset(sources: list[str | os.PathLike], out: str | os.PathLike, organs: list[str],
                     test: int = 5, val_fraction: float = 0.2, seed: int = 0,
                     grid: tuple[int, int] | None = None, log=print) -> Path:
    """Read series folders in the lab's layout and write a dataset folder with its split."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; choose another --out")
    folders = series_folders(list(sources))
    split = split_series([f.name for f in folders], test, val_fraction, seed)

    def items() -> Iterable[USItem]:
        for folder in folders:
            series = read_series(folder, organs, grid=grid)
            if not series.labels:
                log(f"  {folder}: no ROIs for {', '.join(organs)}; kept as an unannotated series")
            yield USItem(series.name, split[series.name], series.frames, series.labels, str(folder))

    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    write_us_dataset(staging, items(), organs, test=test, val_fraction=val_fraction, seed=seed, log=log)
    if root.exists():
        root.rmdir()
    os.replace(staging, root)
    return root


def is_us_dataset(path: str | os.PathLike) -> bool:
    meta = Path(path) / META
    return meta.is_file() and read_object(meta, "a dataset description").get("kind") == "ultrasound"


def load_us_items(data: list[str | os.PathLike], organ: str, test: int = 5, val_fraction: float = 0.2,
                  seed: int = 0, grid: tuple[int, int] | None = None, lab_split: str | None = None) -> list[USItem]:
    """Series annotated for ``organ``, from dataset folders (their split) or lab folders (split here,
    or all put in ``lab_split``)."""
    items: list[USItem] = []
    lab: list[Path] = []
    for path in map(Path, data):
        if is_us_dataset(path):
            meta = read_object(path / META, "a dataset description")
            for name, info in meta["series"].items():
                if organ not in info["organs"]:
                    continue
                folder = path / "series" / name
                items.append(USItem(name, info["split"], read_array(folder / "frames.tif"),
                                    {organ: read_array(folder / f"{organ}_labels.tif")}, str(folder)))
        else:
            lab.extend(series_folders([path]))
    if lab:
        names = [f.name for f in lab]
        split = {n: lab_split for n in names} if lab_split else split_series(names, test, val_fraction, seed)
        for folder in lab:
            series = read_series(folder, [organ], grid=grid)
            if organ in series.labels:
                items.append(USItem(series.name, split[series.name], series.frames, series.labels, str(folder)))
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
