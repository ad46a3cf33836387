"""Label thresholds chosen on the validation data after training; test data are never used.

- **MOSnet, per organ.** The β-weighted BCE (eq. 7) counts each positive pixel β_i times, which
  moves the probability at which a pixel is best called organ i well above the true odds: at 0.5
  the model over-segments, most for organs with large β. The label vote (see
  :func:`..inference.ct.predict_volume`) takes the organ whose logit most exceeds its threshold's
  logit. The thresholds that maximise the mean validation Dice of that vote are found by
  coordinate ascent, one organ at a time, so that organs competing for the same voxels are tuned
  together. Where an organ's Dice curve is flat at its top, the lowest threshold within
  :data:`TOLERANCE` of its best is taken: the validation scans come from the training distribution,
  where the network is confident, and on anatomy it never saw its probabilities fall, so a threshold
  at the far end of the plateau misses organ (docs/results-mosnet.md, "Thresholds that leave room").
- **U-Nets, by Dice or for precision.** By default the threshold with the largest validation Dice:
  on real ultrasound (HC18) the F0.5 rule chose thresholds that cost 1 to 3 points of held-out
  Dice, for precision already above 0.97 (docs/results-ultrasound.md). The report's precision
  first stays reachable: the largest F0.5, or the lowest threshold reaching a precision target.
"""

from __future__ import annotations

import numpy as np
import torch

from ..inference.ct import vote
from ..metrics import dice, segmentation_scores
from ..models.mosnet import MOSnet
from .slices import SliceSet

#: Threshold logits tried for each MOSnet organ: probabilities from 0.27 to 0.993.
OFFSETS = np.arange(-1.0, 5.01, 0.25)
#: How far (in the mean vote Dice over organs) a lower threshold may score below an organ's best
#: and still be taken; 0 takes the best, as the thresholds were chosen before 2026-12-03.
TOLERANCE = 0.002
#: How a U-Net's threshold is chosen on validation: the largest Dice, or the largest F0.5.
THRESHOLD_RULES = ("dice", "f0.5")
#: Probability thresholds tried for a U-Net.
THRESHOLDS = (*np.round(np.arange(0.3, 0.96, 0.05), 2), 0.97, 0.98, 0.99)


def vote_dice(logits: torch.Tensor, data: SliceSet, offsets: torch.Tensor) -> float:
    """Mean over organs of the vote's Dice, each organ counted on the slices that annotate it."""
    labels = vote(logits, offsets)
    scores = []
    for i in range(logits.shape[1]):
        annotated = data.annotated[:, i]
        truth = data.organ_masks[annotated, i]
        if truth.any():
            scores.append(dice((labels[annotated] == i + 1).numpy(), truth.numpy()))
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
                      max_slices: int = 512, tolerance: float = TOLERANCE) -> tuple[dict[str, float], float, float]:
    """Per-organ thresholds, and the validation vote Dice at 0.5 and at those thresholds.

    At most ``max_slices`` evenly spaced slices are used, to bound time and memory. ``tolerance``:
    see :data:`TOLERANCE`.
    """
    data = _at_most(data, max_slices)
    logits = validation_logits(model, data, device)
    offsets, start, best = _ascend(logits, data, torch.zeros(logits.shape[1]), range(logits.shape[1]), passes,
                                   tolerance)
    return _as_thresholds(model, offsets), start, best


def refine_thresholds(model: MOSnet, data: SliceSet, device: torch.device, passes: int = 2,
                      max_slices: int = 512) -> tuple[dict[str, float], float, float]:
    """A fine-tuned MOSnet's per-organ thresholds, chosen as :func:`choose_thresholds` does but
    starting from the thresholds in its config, and only for the organs ``data`` holds.

    A retraining round has a few slices: an organ absent from them keeps its threshold, so it is
    not pushed to 0.99 merely because it competes with the organs present. Its held-out frames are
    the lab's own scans, not the training distribution, so the best threshold is taken (no
    :data:`TOLERANCE`). Returns the thresholds and the vote Dice at the old and the new ones.
    """
    data = _at_most(data, max_slices)
    logits = validation_logits(model, data, device)
    start = torch.logit(torch.tensor(model.config.organ_thresholds()).clamp(1e-4, 1 - 1e-4))
    present = [i for i in range(logits.shape[1]) if (data.organ_masks[:, i] & data.annotated[:, i, None, None]).any()]
    offsets, before, after = _ascend(logits, data, start, present, passes)
    return _as_thresholds(model, offsets), before, after


def _at_most(data: SliceSet, max_slices: int) -> SliceSet:
    """At most ``max_slices`` evenly spaced slices of ``data``."""
    if len(data.images) > max_slices:
        return data.subset(torch.linspace(0, len(data.images) - 1, max_slices).long())
    return data


def _ascend(logits: torch.Tensor, data: SliceSet, offsets: torch.Tensor, organs, passes: int,
            tolerance: float = 0.0) -> tuple[torch.Tensor, float, float]:
    """Coordinate ascent of the vote Dice over the threshold logits of ``organs``, from ``offsets``:
    each organ in turn takes the lowest of :data:`OFFSETS` that scores within ``tolerance`` of the
    best that organ can reach with the others fixed (with 0, the best; its current value on a tie)."""
    trials = VoteTrials(logits, data)
    start = best = vote_dice(logits, data, offsets)
    for _ in range(passes):
        for i in organs:
            scores = trials.scores(offsets, i).tolist()
            top = max(best, *scores)
            if tolerance > 0:  # OFFSETS ascend, so the first within tolerance is the lowest
                chosen = next(t for t, score in enumerate(scores) if score >= top - tolerance)
            elif top > best + 1e-6:
                chosen = next(t for t, score in enumerate(scores) if score > top - 1e-6)
            else:
                continue
            best, offsets = scores[chosen], offsets.clone()
            offsets[i] = float(OFFSETS[chosen])
    return offsets, start, best


class VoteTrials:
    """The mean vote Dice (:func:`vote_dice`) for every value of :data:`OFFSETS` as one organ's
    threshold logit, the others held, counted from one histogram of the pixels instead of one vote
    per value: 25 times fewer passes over the logits (a 512-slice search took 434 s on 2 cores, now 69 s).

    Organ ``i`` takes a pixel when its logit exceeds the value tried by more than the best margin of
    the other organs over their thresholds (and over 0); otherwise the pixel keeps the others' vote.
    The counts are those of :func:`vote_dice` but for exact ties between logits, which a network's
    floats do not make.
    """

    def __init__(self, logits: torch.Tensor, data: SliceSet):
        self.logits = logits
        self.truth = data.organ_masks
        self.annotated = data.annotated.double()  # (N, M): which slices count for each organ
        self.truth_sizes = torch.einsum("nm,nm->m", self.truth.sum((2, 3)).double(), self.annotated)
        self.scored = self.truth_sizes > 0  # as vote_dice: organs with truth on their annotated slices
        self.edges = torch.as_tensor(OFFSETS, dtype=logits.dtype)

    def scores(self, offsets: torch.Tensor, i: int) -> torch.Tensor:
        """Mean vote Dice (len(OFFSETS),) with organ ``i``'s offset at each value of OFFSETS."""
        if not self.scored.any():  # no truth to score against: 0, as vote_dice
            return torch.zeros(len(OFFSETS), dtype=torch.float64)
        n, m = self.logits.shape[:2]
        bins = len(OFFSETS) + 1
        shifted = self.logits - offsets[None, :, None, None]
        shifted[:, i] = -torch.inf
        top, best = shifted.max(1)
        others = torch.where(top > 0, best + 1, 0)  # the vote without organ i
        # organ i takes a pixel at trial t exactly when t < wins
        wins = torch.searchsorted(self.edges, (self.logits[:, i] - top.clamp(min=0)).contiguous())
        held = torch.gather(self.truth, 1, (others - 1).clamp(min=0)[:, None])[:, 0] & (others > 0)
        slices = torch.arange(n)[:, None, None]
        kept = torch.bincount((((slices * (m + 1) + others) * bins + wins) * 2 + held).flatten(),
                              minlength=n * (m + 1) * bins * 2).view(n, m + 1, bins, 2)[:, 1:].double()
        taken = torch.bincount(((slices * bins + wins) * 2 + self.truth[:, i]).flatten(),
                               minlength=n * bins * 2).view(n, bins, 2).double()
        kept = torch.einsum("nm,nmkg->mkg", self.annotated, kept).cumsum(1)[:, :-1]  # wins <= t: kept
        taken = torch.einsum("n,nkg->kg", self.annotated[:, i], taken).flip(0).cumsum(0).flip(0)[1:]  # wins > t
        size, overlap = kept.sum(2).T.clone(), kept[..., 1].T.clone()  # (trials, M)
        size[:, i], overlap[:, i] = taken.sum(1), taken[:, 1]
        return (2 * overlap / (size + self.truth_sizes))[:, self.scored].mean(1)


def _as_thresholds(model: MOSnet, offsets: torch.Tensor) -> dict[str, float]:
    return {organ: round(float(torch.sigmoid(offsets[i])), 4) for i, organ in enumerate(model.config.organs)}


def pixel_scores(prob: torch.Tensor, masks: torch.Tensor, threshold: float) -> dict[str, float]:
    """Pixel Dice, precision, recall (as :func:`..metrics.segmentation_scores`) and F0.5 at one threshold."""
    pred, truth = prob > threshold, masks > 0.5
    counts = (int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum()))
    s = segmentation_scores(*counts, 0, 0, 0)
    precision, recall = s["precision"], s["recall"]
    f05 = 1.25 * precision * recall / (0.25 * precision + recall) if precision + recall else 0.0
    return {"dice": s["dice"], "precision": precision, "recall": recall, "f05": f05}


def recorded_rule(config: dict) -> str:
    """The rule a U-Net's threshold was chosen by, from its config.json's training settings: "f0.5"
    for models trained before the rule was recorded (F0.5 was then the only rule)."""
    rule = config.get("training", {}).get("settings", {}).get("threshold_rule")
    return rule if rule in THRESHOLD_RULES else "f0.5"


def choose_threshold(prob: torch.Tensor, masks: torch.Tensor, precision_target: float | None = None,
                     rule: str = "dice") -> tuple[float, dict[str, float]]:
    """A U-Net's probability threshold, chosen on validation frames.

    ``rule`` "dice" takes the one with the largest Dice, "f0.5" the largest F0.5 (precision
    weighted over recall). A ``precision_target`` overrides either: the lowest threshold whose
    precision reaches it (the most recall at that precision), or the most precise one when none does.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule must be one of {', '.join(THRESHOLD_RULES)}, got {rule!r}")
    scored = [pixel_scores(prob, masks, float(t)) | {"threshold": float(t)} for t in THRESHOLDS]
    if masks.any():  # predicting nothing is not precise, it is empty
        scored = [s for s in scored if s["recall"] > 0] or scored[:1]
    if precision_target is None:
        best = max(scored, key=lambda s: s["dice" if rule == "dice" else "f05"])
    else:
        reaching = [s for s in scored if s["precision"] >= precision_target]
        best = reaching[0] if reaching else max(scored, key=lambda s: s["precision"])
    return round(best["threshold"], 2), best
