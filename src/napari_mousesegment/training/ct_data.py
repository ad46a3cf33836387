"""Micro-CT dataset folders to preprocessed 2D training slices (see models.preprocess)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.volumes import read_tiff
from ..models.mosnet import MOSnetConfig
from ..models.preprocess import fit_square, resample, to_slices, window

@dataclass
class CTDataset:
    """One dataset folder: its metadata and cases."""

    root: Path
    name: str
    condition: str
    organs: dict[str, int]
    spacing: tuple[float, float, float]
    cases: list[str]


def read_ct_dataset(root: str | Path) -> CTDataset:
    """Read and check a dataset folder (dataset.json, images/CASE.tif, labels/CASE.tif)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise ValueError(f"{root}: not a dataset folder (no dataset.json)")
    try:
        meta = json.loads(meta_path.read_text())
        organs = {str(k): int(v) for k, v in meta["organs"].items()}
        spacing = tuple(float(s) for s in meta["spacing_mm"])
        condition = str(meta["condition"])
    except (KeyError, ValueError, TypeError) as exc:
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
                         "are not listed in dataset.json")
    return image, labels, spacing or dataset.spacing


@dataclass
class SliceSet:
    """Preprocessed training slices of many scans, kept compact in memory."""

    images: torch.Tensor  #: (N, 1, S, S) float16 in [0, 1]
    organ_masks: torch.Tensor  #: (N, M, S, S) bool, model organ order
    annotated: torch.Tensor  #: (N, M) bool: α of each slice's dataset
    condition: torch.Tensor  #: (N,) long
    scan: list[str]  #: per slice: "dataset/case", the unit of the train/validation split


def build_slices(datasets: list[CTDataset], config: MOSnetConfig, cases: dict[str, list[str]] | None = None,
                 stride: int = 1) -> SliceSet:
    """Preprocess the given cases (default: all) of the datasets into a :class:`SliceSet`."""
    images, masks, annotated, condition, scan = [], [], [], [], []
    for ds in datasets:
        if ds.condition not in config.conditions:
            raise ValueError(f"{ds.root}: condition {ds.condition!r} is not one of the model's {config.conditions}")
        alpha = torch.tensor([o in ds.organs for o in config.organs])
        for case in (cases or {}).get(str(ds.root), ds.cases):
            hu, labels, spacing = load_case(ds, case)
            img = to_slices(resample(window(hu, config.window_level, config.window_width), spacing,
                                     config.spacing_mm, order=1), config.plane)[::stride]
            lab = to_slices(resample(labels, spacing, config.spacing_mm, order=0), config.plane)[::stride]
            img_t = fit_square(torch.from_numpy(np.ascontiguousarray(img))[:, None], config.image_size, "bilinear")
            lab_t = fit_square(torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))[:, None].float(),
                               config.image_size, "nearest-exact").long()[:, 0]
            organ_stack = torch.zeros((len(lab_t), len(config.organs), *lab_t.shape[1:]), dtype=torch.bool)
            for i, organ in enumerate(config.organs):
                if organ in ds.organs:
                    organ_stack[:, i] = lab_t == ds.organs[organ]
            images.append(img_t.half())
            masks.append(organ_stack)
            annotated.append(alpha.expand(len(lab_t), -1))
            condition.append(torch.full((len(lab_t),), config.conditions.index(ds.condition)))
            scan += [f"{ds.name}/{case}"] * len(lab_t)
    return SliceSet(torch.cat(images), torch.cat(masks), torch.cat(annotated), torch.cat(condition), scan)


def split_by_scan(scans: list[str], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split scan ids ("dataset/case"), never slices, into train and validation, per dataset.

    Each dataset with two or more scans gives round(val_fraction·n) of them, at least one, to
    validation, so every condition is validated.
    """
    unique = sorted(set(scans))
    by_dataset: dict[str, list[str]] = {}
    for s in unique:
        by_dataset.setdefault(s.split("/", 1)[0], []).append(s)
    rng = np.random.default_rng(seed)
    val: list[str] = []
    for members in by_dataset.values():
        if len(members) >= 2:
            n_val = min(max(1, round(val_fraction * len(members))), len(members) - 1)
            val += [members[i] for i in rng.permutation(len(members))[:n_val]]
    if not val:
        raise ValueError("need at least two scans in a dataset to split into training and validation")
    return sorted(set(unique) - set(val)), sorted(val)
