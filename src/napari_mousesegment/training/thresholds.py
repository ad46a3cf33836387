"""Per-organ decision thresholds for MOSnet's label vote, chosen on the validation scans.

The β-weighted BCE (eq. 7) counts each positive pixel β_i times, which moves the probability at
which a pixel is best called organ i well above the true odds: at 0.5 the model over-segments,
most for organs with large β. The label vote (see :func:`..inference.ct.predict_volume`) takes
the organ whose logit most exceeds its threshold's logit. The thresholds that maximise the mean
validation Dice of that vote are found by coordinate ascent, one organ at a time, so that organs
competing for the same voxels are tuned together. Test scans are never used.
"""

from __future__ import annotations

import numpy as np
import torch

from ..inference.ct import vote
from ..models.mosnet import MOSnet
from .ct_data import SliceSet

#: Threshold logits tried for each organ: probabilities from 0.27 to 0.993.
OFFSETS = np.arange(-1.0, 5.01, 0.25)


def vote_dice(logits: torch.Tensor, data: SliceSet, offsets: torch.Tensor) -> float:
    """Mean over organs of the vote's Dice, each organ counted on the slices that annotate it."""
    labels = vote(logits, offsets)
    scores = []
    for i in range(logits.shape[1]):
        annotated = data.annotated[:, i]
        truth = data.organ_masks[annotated, i]
        if not truth.any():
            continue
        pred = labels[annotated] == i + 1
        scores.append(float(2 * (pred & truth).sum() / (pred.sum() + truth.sum())))
    return float(np.mean(scores)) if scores else 0.0


@torch.no_grad()
def validation_logits(model: MOSnet, data: SliceSet, device: torch.device, batch_size: int = 32) -> torch.Tensor:
    """Logits (N, M, S, S) of the slices as prediction makes them (organs a condition never
    annotated are read under a condition that did)."""
    model.eval()
    config = model.config
    out = []
    for start in range(0, len(data.images), batch_size):
        image = data.images[start:start + batch_size].to(device).float()
        condition = data.condition[start:start + batch_size].to(device)
        logits = torch.empty((len(image), len(config.organs), *image.shape[2:]), device=device)
        for c in condition.unique().tolist():
            rows = condition == c
            logits[rows] = model.segment(image[rows], condition[rows], config.borrowed_organs(config.conditions[c]))
        out.append(logits.cpu())
    return torch.cat(out)


def choose_thresholds(model: MOSnet, data: SliceSet, device: torch.device, passes: int = 2,
                      max_slices: int = 512) -> tuple[dict[str, float], float, float]:
    """Per-organ thresholds, and the validation vote Dice at 0.5 and at those thresholds.

    At most ``max_slices`` evenly spaced slices are used, to bound time and memory.
    """
    if len(data.images) > max_slices:
        keep = torch.linspace(0, len(data.images) - 1, max_slices).long()
        data = SliceSet(data.images[keep], data.organ_masks[keep], data.annotated[keep], data.condition[keep],
                        [data.scan[i] for i in keep.tolist()])
    logits = validation_logits(model, data, device)
    offsets = torch.zeros(logits.shape[1])
    start = best = vote_dice(logits, data, offsets)
    for _ in range(passes):
        for i in range(len(offsets)):
            for value in OFFSETS:
                trial = offsets.clone()
                trial[i] = float(value)
                score = vote_dice(logits, data, trial)
                if score > best + 1e-6:
                    best, offsets = score, trial
    thresholds = {organ: round(float(torch.sigmoid(offsets[i])), 4) for i, organ in enumerate(model.config.organs)}
    return thresholds, start, best
