"""What to correct next: frames or slices ranked by the model's uncertainty."""

from __future__ import annotations

import numpy as np


def mean_entropy(probability: np.ndarray) -> np.ndarray:
    """Mean binary entropy (bits) of sigmoid outputs per frame of (N, H, W) probabilities (or per
    slice of (M, N, H, W) organ probabilities, summed over organs)."""
    p = np.clip(np.asarray(probability, np.float64), 1e-6, 1 - 1e-6)
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    if h.ndim == 4:
        h = h.sum(0)
    return h.reshape(len(h), -1).mean(1)


def flip_disagreement(model, frames: np.ndarray) -> np.ndarray:
    """Mean |p - p(flipped input, flipped back)| per frame: test-time-augmentation disagreement."""
    from ..inference.ultrasound import predict_probabilities

    plain = predict_probabilities(model, frames)
    flipped = predict_probabilities(model, np.ascontiguousarray(frames[:, :, ::-1]))[:, :, ::-1]
    return np.abs(plain - flipped).reshape(len(frames), -1).mean(1)


def rank(scores: np.ndarray, exclude: set[int] | None = None) -> list[tuple[int, float]]:
    """(index, score) from the most to the least uncertain, leaving out ``exclude`` (already corrected)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return [(int(k), float(scores[k])) for k in order if int(k) not in (exclude or set())]
