"""Ultrasound U-Net prediction: probabilities per frame, then separate organ instances.

The network sees whole frames at their own resolution (it is fully convolutional), padded to a
multiple of its downsampling. Instances come from the thresholded probability by hole filling,
small-object removal and a distance-transform watershed that splits touching organs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed
from torch.nn import functional as F

from ..models.unet import UNet


def to_unit(frames: np.ndarray) -> np.ndarray:
    """Frames to float32 in [0, 1]: uint8 by 255, other types by their own range."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"expected (frames, height, width), got shape {frames.shape}")
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) / 255.0
    data = frames.astype(np.float32)
    if not np.isfinite(data).all():
        raise ValueError("the frames contain NaN or infinite values")
    lo, hi = float(data.min()), float(data.max())
    return (data - lo) / (hi - lo) if hi > lo else np.zeros_like(data)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph)), (h, w)


def predict_probabilities(model: UNet, frames: np.ndarray, batch_size: int = 8,
                          progress: Callable[[int, int], None] | None = None,
                          should_stop: Callable[[], bool] = lambda: False) -> np.ndarray:
    """(N, H, W) organ probabilities for (N, H, W) frames."""
    device = next(model.parameters()).device
    model.eval()
    unit = to_unit(frames)
    out = np.empty(unit.shape, np.float32)
    multiple = 2 ** (model.config.levels - 1)
    with torch.inference_mode():
        for start in range(0, len(unit), batch_size):
            if should_stop():
                raise InterruptedError("prediction cancelled")
            x = torch.from_numpy(unit[start:start + batch_size])[:, None].to(device)
            x, (h, w) = pad_to_multiple(x, multiple)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x)
            out[start:start + len(x)] = torch.sigmoid(logits.float())[:, 0, :h, :w].cpu().numpy()
            if progress:
                progress(min(start + batch_size, len(unit)), len(unit))
    return out


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero the labelled pieces smaller than ``min_size`` pixels."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def instances(probability: np.ndarray, threshold: float, min_size: int, depth: float = 2.0) -> np.ndarray:
    """Instance ids 1.. per frame from (N, H, W) probabilities (or one (H, W) frame).

    Touching organs are split where the mask narrows by more than ``depth`` pixels of radius.
    """
    if probability.ndim == 2:
        return instances(probability[None], threshold, min_size, depth)[0]
    labels = np.zeros(probability.shape, np.uint16)
    for k, prob in enumerate(probability):
        blobs = _drop_small(ndi.label(ndi.binary_fill_holes(prob > threshold))[0], min_size)
        mask = blobs > 0
        if not mask.any():
            continue
        distance = ndi.distance_transform_edt(mask)
        # One marker per distance maximum that stands out by more than `depth` pixels: a neck
        # between two organs splits them, a long organ's flat ridge does not.
        markers, _ = ndi.label(h_maxima(distance, depth))
        split = watershed(-distance, markers, mask=mask)
        split = _drop_small(split, min_size)
        values = np.unique(split[split > 0])
        lookup = np.zeros(int(split.max()) + 1, np.uint16)
        lookup[values] = np.arange(1, len(values) + 1)
        labels[k] = lookup[split]
    return labels
