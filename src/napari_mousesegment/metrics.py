"""Segmentation metrics: Dice, Jaccard, HD95 in mm, organ volumes.

Conventions for empty masks (the paper does not say):
- both empty: DSC = JSC = 1 and HD95 = 0 (nothing to find, nothing found);
- exactly one empty: DSC = JSC = 0 and HD95 = NaN (no surface to measure a distance to);
  summaries skip NaN and report how many cases they skipped.

No torch, napari or Qt here.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two masks (any arrays; nonzero is inside); 1 when both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    return dice_from_counts(np.logical_and(pred, truth).sum(), pred.sum() + truth.sum())


def dice_from_counts(overlap: float, sizes: float) -> float:
    """Dice from the overlap of two masks and the sum of their sizes, as counted over many batches
    (1 when both are empty: nothing to find, nothing found)."""
    return 1.0 if sizes == 0 else float(2 * overlap / sizes)


def jaccard(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask, structure=ndi.generate_binary_structure(mask.ndim, 1))


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th percentile of the symmetric surface distances, in mm (the units of ``spacing``)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float("nan")
    sp, st = _surface(pred), _surface(truth)
    to_truth = ndi.distance_transform_edt(~st, sampling=spacing)[sp]
    to_pred = ndi.distance_transform_edt(~sp, sampling=spacing)[st]
    return float(np.percentile(np.concatenate([to_truth, to_pred]), 95))


def volume_mm3(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    return float(mask.astype(bool).sum() * np.prod(spacing))


def write_volumes_csv(path: str | os.PathLike, labels: np.ndarray, organs: dict[str, int],
                      spacing: tuple[float, ...], flag: Callable[[str, float], str] | None = None) -> None:
    """Organ volumes of a label volume as CSV: organ, voxels, mm3 (and flag, see :func:`write_counts_csv`)."""
    write_counts_csv(path, np.bincount(labels.ravel(), minlength=max(organs.values()) + 1), organs, spacing, flag)


def write_counts_csv(path: str | os.PathLike, counts: np.ndarray, organs: dict[str, int],
                     spacing: tuple[float, ...], flag: Callable[[str, float], str] | None = None) -> None:
    """Organ volumes from voxel counts per label value (``counts[value]``) as CSV: organ, voxels, mm3;
    with ``flag`` (organ, mm³ -> text, e.g. :func:`~.organs.volume_flag`) a last column, flag."""
    counts = np.pad(counts, (0, max(0, max(organs.values()) + 1 - len(counts))))
    voxel = float(np.prod(spacing))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["organ", "voxels", "mm3", *(["flag"] if flag else [])])
        for organ, value in organs.items():
            mm3 = float(counts[value] * voxel)
            writer.writerow([organ, int(counts[value]), f"{mm3:.2f}", *([flag(organ, mm3)] if flag else [])])


def organ_scores(pred_labels: np.ndarray, truth_labels: np.ndarray, organs: dict[str, int],
                 truth_organs: dict[str, int], spacing: tuple[float, ...]) -> list[dict]:
    """One row per organ annotated in the truth: DSC, JSC, HD95 (mm) and both volumes (mm³)."""
    rows = []
    for organ, truth_value in truth_organs.items():
        if organ not in organs:
            continue
        p, t = pred_labels == organs[organ], truth_labels == truth_value
        rows.append({"organ": organ, "dsc": dice(p, t), "jsc": jaccard(p, t), "hd95_mm": hd95(p, t, spacing),
                     "volume_pred_mm3": volume_mm3(p, spacing), "volume_truth_mm3": volume_mm3(t, spacing)})
    return rows


def pixel_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of two masks."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    return (int(np.count_nonzero(pred & truth)), int(np.count_nonzero(pred & ~truth)),
            int(np.count_nonzero(~pred & truth)))


def match_instances(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> tuple[int, int, int]:
    """Matched, predicted and true instance counts of one frame; a match needs IoU >= ``iou``.

    Pairs are matched one to one, best IoU first (above 0.5 a pair can only compete with itself;
    at exactly 0.5 ties are possible).
    """
    p_ids = np.unique(pred[pred > 0])
    t_ids = np.unique(truth[truth > 0])
    matched = 0
    if len(p_ids) and len(t_ids):
        both = (pred > 0) & (truth > 0)
        pairs, inter = np.unique(np.stack([pred[both], truth[both]]), axis=1, return_counts=True)
        area_p = dict(zip(*np.unique(pred[pred > 0], return_counts=True)))
        area_t = dict(zip(*np.unique(truth[truth > 0], return_counts=True)))
        scored = sorted(((n / (area_p[p] + area_t[t] - n), p, t) for (p, t), n in zip(pairs.T, inter)), reverse=True)
        used_p, used_t = set(), set()
        for value, p, t in scored:
            if value >= iou and p not in used_p and t not in used_t:
                used_p.add(p)
                used_t.add(t)
                matched += 1
    return matched, len(p_ids), len(t_ids)


def segmentation_scores(tp: int, fp: int, fn: int, matched: int, n_pred: int, n_true: int) -> dict[str, float]:
    """Pixel Dice, precision, recall and IoU, and instance precision, recall and F1.

    Empty conventions: nothing predicted and nothing true scores 1 (nothing to find, nothing found).
    """
    def ratio(a: float, b: float) -> float:
        return 1.0 if b == 0 else float(a / b)

    inst_p, inst_r = ratio(matched, n_pred), ratio(matched, n_true)
    return {"dice": dice_from_counts(tp, 2 * tp + fp + fn), "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "iou": ratio(tp, tp + fp + fn), "instance_precision": inst_p, "instance_recall": inst_r,
            "instance_f1": ratio(2 * matched, n_pred + n_true),
            "instances_pred": int(n_pred), "instances_true": int(n_true)}


def frame_counts(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per frame of (N, H, W) instance labels: tp, fp, fn pixels and matched, predicted, true
    instances, as an (N, 6) array whose sums feed :func:`segmentation_scores`."""
    return np.array([[*pixel_counts(p > 0, t > 0), *match_instances(p, t)] for p, t in zip(pred, truth)],
                    np.int64).reshape(-1, 6)


def write_rows(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rows of dicts as CSV, columns in first-seen order; nothing is written for no rows."""
    if not rows:
        return
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
