"""Micro-CT dataset folders to 2D training slices, and the preprocessing MOSnet expects.

Preprocessing, the same at training and prediction time:

1. window at level 400 / width 1000 HU and scale to [0, 1];
2. resample to the model's isotropic voxel size using the scan's own spacing;
3. cut slices on the configured plane (axial by default: (y, x) slices along z);
4. pad each slice to a square, centred, and resize it to ``image_size``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.nn import functional as F

from ..io.volumes import read_tiff
from ..models.mosnet import MOSnetConfig

_PLANE_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}


def window(hu: np.ndarray, level: float = 400.0, width: float = 1000.0) -> np.ndarray:
    """HU to [0, 1] float32: level ± width/2 maps to 0..1 (W1000/L400: -100..900 HU)."""
    if not np.isfinite(hu).all():
        raise ValueError("the image contains NaN or infinite values")
    return np.clip((hu.astype(np.float32) - (level - width / 2)) / width, 0.0, 1.0)


def resample(volume: np.ndarray, spacing: tuple[float, float, float], target: float, order: int) -> np.ndarray:
    """Resample a (z, y, x) volume with the given spacing to isotropic ``target`` mm voxels."""
    factors = np.asarray(spacing, float) / float(target)
    if np.allclose(factors, 1.0, atol=1e-3):
        return volume
    return ndi.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)


def to_slices(volume: np.ndarray, plane: str) -> np.ndarray:
    """(z, y, x) volume to a stack of 2D slices on the plane: axial gives (z, y, x) itself."""
    return np.moveaxis(volume, _PLANE_AXIS[plane], 0)


def from_slices(stack: np.ndarray, plane: str) -> np.ndarray:
    """Inverse of :func:`to_slices`."""
    return np.moveaxis(stack, 0, _PLANE_AXIS[plane])


def square_size(h: int, w: int) -> int:
    return max(h, w)


def fit_square(slices: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(N, C, h, w) to (N, C, size, size): centred zero-pad to a square, then resize.

    ``mode`` is "bilinear" for images or "nearest-exact" for labels: both sample at pixel
    centres, so labels stay aligned with their image (plain "nearest" shifts them by half a pixel).
    """
    h, w = slices.shape[-2:]
    s = square_size(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    padded = F.pad(slices, (left, s - w - left, top, s - h - top))
    if s == size:
        return padded
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(padded, size=(size, size), mode=mode, **kwargs)


def unfit_square(slices: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`fit_square` (bilinear): back to (N, C, h, w)."""
    s = square_size(h, w)
    if slices.shape[-1] != s:
        slices = F.interpolate(slices, size=(s, s), mode="bilinear", align_corners=False)
    top, left = (s - h) // 2, (s - w) // 2
    return slices[..., top:top + h, left:left + w]


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
