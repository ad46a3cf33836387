"""The naive micro-CT predictor the benchmark compares against.

What a first script would do with the same weights: resample the whole volume with
scipy.ndimage.zoom, run one slice at a time through the whole network (reconstruction decoder
included) in eager fp32 under ``torch.no_grad`` (not ``inference_mode``), keep every organ's
probabilities, and zoom them back. Its output is the reference the optimised predictor must match.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_mousesegment.models.mosnet import MOSnet
from napari_mousesegment.models.preprocess import (
    context_index,
    fit_square,
    from_slices,
    resample,
    slice_positions,
    to_slices,
    unfit_square,
    window,
    with_position,
)


def _zoom_to(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if volume.shape == tuple(shape):
        return volume
    factors = np.array(shape, float) / np.array(volume.shape, float)
    return ndi.zoom(volume, factors, order=1, mode="nearest", grid_mode=True)


def naive_predict_volume(model: MOSnet, image: np.ndarray, spacing: tuple[float, float, float], condition: str,
                         threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels (z, y, x) uint8, probabilities (M, z, y, x) float32) on the input grid."""
    config = model.config
    model.eval()
    volume = resample(window(image, config.window_level, config.window_width), spacing, config.spacing_mm, order=1)
    slices = to_slices(volume, config.plane)
    h, w = slices.shape[1:]
    device = next(model.parameters()).device
    cond = torch.tensor([config.conditions.index(condition)], device=device)
    outputs = []
    with torch.no_grad():
        for k, near in enumerate(context_index(len(slices), config.slice_offsets())):  # with 2.5D neighbours
            x = torch.from_numpy(np.ascontiguousarray(slices[near]))[None].to(device)
            x = fit_square(x, config.image_size, "bilinear")
            if config.position:  # where along the scan the slice lies
                x = with_position(x, slice_positions(np.array([k]), len(slices)))
            logits, _ = model(x, cond)
            for other, organs in config.borrowed_organs(condition):  # the predictor's rule, recomputed whole
                logits[:, organs] = model(x, torch.full_like(cond, other))[0][:, organs]
            outputs.append(unfit_square(torch.sigmoid(logits), h, w)[0].cpu().numpy())
    stacked = np.stack(outputs, 1)  # (M, slices, h, w)
    probabilities = np.stack([_zoom_to(from_slices(p, config.plane), image.shape) for p in stacked])
    cutoffs = np.array([threshold] * len(config.organs) if threshold is not None else config.organ_thresholds())
    p = np.clip(probabilities, 1e-6, 1 - 1e-6)
    score = np.log(p / (1 - p)) - np.log(cutoffs / (1 - cutoffs))[:, None, None, None]
    labels = np.where(score.max(0) > 0, score.argmax(0) + 1, 0).astype(np.uint8)
    return labels, probabilities
