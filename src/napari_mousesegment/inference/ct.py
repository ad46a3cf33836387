"""Whole-volume MOSnet prediction, returned on the input's own grid and spacing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from ..models.mosnet import MOSnet
from ..models.preprocess import fit_square, from_slices, resample, to_slices, unfit_square, window


@dataclass
class CTPrediction:
    """Per-organ probabilities and a label volume, on the input grid."""

    probabilities: np.ndarray  #: (M, z, y, x) float16 in [0, 1]
    labels: np.ndarray  #: (z, y, x) uint8: 1 + index of the most likely organ above 0.5, else 0
    organs: dict[str, int]  #: organ -> label value


def _resample_to(volume: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    if volume.shape == tuple(shape):
        return volume
    factors = np.array(shape, float) / np.array(volume.shape, float)
    out = ndi.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)
    pad = [(0, max(0, s - o)) for s, o in zip(shape, out.shape)]
    return np.pad(out, pad, mode="edge")[tuple(slice(0, s) for s in shape)]


def predict_volume(
    model: MOSnet,
    image: np.ndarray,
    spacing: tuple[float, float, float],
    condition: str,
    batch_size: int = 16,
    threshold: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> CTPrediction:
    """Segment a (z, y, x) HU volume with known spacing (mm).

    The volume is windowed, resampled to the model's voxel size, cut into slices on the model's
    plane and run in batches; probabilities are resampled back to the input grid.
    """
    config = model.config
    if image.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) volume, got shape {image.shape}")
    if condition not in config.conditions:
        raise ValueError(f"condition {condition!r} is unknown to this model; it knows {config.conditions}")
    if spacing is None or len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers in mm, got {spacing!r}")
    device = next(model.parameters()).device
    model.eval()
    resampled = resample(window(image, config.window_level, config.window_width), spacing,
                         config.spacing_mm, order=1)
    slices = to_slices(resampled, config.plane)
    h, w = slices.shape[1:]
    cond = torch.tensor([config.conditions.index(condition)], device=device)
    out = np.empty((len(config.organs), *slices.shape), np.float16)
    with torch.inference_mode():
        for start in range(0, len(slices), batch_size):
            if should_stop():
                raise InterruptedError("prediction cancelled")
            batch = torch.from_numpy(np.ascontiguousarray(slices[start:start + batch_size]))[:, None].to(device)
            x = fit_square(batch, config.image_size, "bilinear")
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits, _ = model(x, cond.expand(len(x)))
            probs = unfit_square(torch.sigmoid(logits.float()), h, w)
            out[:, start:start + len(batch)] = probs.permute(1, 0, 2, 3).cpu().numpy()
            if progress:
                progress(min(start + batch_size, len(slices)), len(slices))
    volume_probs = np.stack([_resample_to(from_slices(p, config.plane).astype(np.float32), image.shape, 1)
                             for p in out]).astype(np.float16)
    best = volume_probs.argmax(0)
    labels = np.where(volume_probs.max(0) > threshold, best + 1, 0).astype(np.uint8)
    return CTPrediction(volume_probs, labels, {o: i + 1 for i, o in enumerate(config.organs)})
