"""``mousesegment queue export``: the queued corrections as dataset folders the trainers read.

The folders are written by the dataset modules themselves (:mod:`..data.us_dataset`,
:mod:`..data.ct_dataset`), so an export is exactly what ``dataset ultrasound`` and ``dataset ct``
would have made.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ..data.ct_dataset import write_case, write_meta
from ..data.us_dataset import USItem, split_series, write_us_dataset
from ..store.registry import model_config
from .queue import Item, Queue, QueueError


def export_dataset(queue: Queue, out: str | os.PathLike, val_fraction: float = 0.2) -> Path:
    """The queued corrections as dataset folder(s) that the CLI trainers read.

    Ultrasound items (the `dataset ultrasound` contract): one series per item, of its touched
    frames, split into training and validation by item. Micro-CT items (the `dataset ct` contract):
    one dataset per condition under OUT/ct_<condition>/, each run of consecutive touched slices a
    case, labels numbered as the model's organs. With both kinds, ultrasound goes to OUT/ultrasound/.
    Failed items are left out. The dataset is written under OUT.partial and renamed into place, so
    a failure leaves neither OUT nor OUT.partial.
    """
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise QueueError(f"{root}: {'not empty' if root.is_dir() else 'not a folder'}; choose another --out")
    items = [i for i in queue.items() if i.state != "failed"]  # set aside: they could not be read
    if not items:
        raise QueueError(f"{queue.root}: the queue holds no item to export (empty, or every item failed)")
    us = [i for i in items if i.kind == "ultrasound"]
    ct = [i for i in items if i.kind == "ct"]
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)  # our own leftover of an export cut short
    try:
        if us:
            _export_ultrasound(us, staging / "ultrasound" if ct else staging, val_fraction, queue.root)
        for condition in sorted({i.condition for i in ct}):
            _export_ct([i for i in ct if i.condition == condition], staging / f"ct_{condition}", condition)
        if root.exists():
            root.rmdir()
        os.replace(staging, root)
    except BaseException:  # a failed export leaves nothing behind: no OUT.partial, never half a dataset
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _export_ultrasound(items: list[Item], root: Path, val_fraction: float, source: Path) -> None:
    if len(items) < 2:
        raise QueueError(f"{len(items)} ultrasound item(s); a dataset needs at least 2 (training and validation)")
    names = {i.id: f"item_{i.id:05d}" for i in items}
    split = split_series(list(names.values()), test=0, val_fraction=val_fraction)
    series = (USItem(names[i.id], split[names[i.id]], i.image()[i.touched], {i.organ: i.labels()[i.touched]},
                     f"queue item {i.id}") for i in items)
    write_us_dataset(root, series, sorted({i.organ for i in items}), test=0, val_fraction=val_fraction, seed=0,
                     source=f"queue {source}")


def _runs(indices: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for k in sorted(indices):
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _export_ct(items: list[Item], root: Path, condition: str) -> None:
    models = {i.model for i in items}
    if None in models or len(models) != 1:
        raise QueueError(f"micro-CT items of condition {condition!r} must name one model (to number the "
                         f"organs); they name {sorted(map(str, models))}")
    organs = model_config(next(iter(models)))["organs"]
    for item in items:
        image, labels = item.image(), item.labels()
        for run in _runs(item.touched):  # consecutive slices: resampling in z stays between real neighbours
            case = f"item_{item.id:05d}_z{run[0]:04d}-{run[-1]:04d}"
            write_case(root, case, image[run], labels[run].astype(np.uint8), item.spacing)
    write_meta(root, root.name, condition, {o: k + 1 for k, o in enumerate(organs)}, items[0].spacing)
