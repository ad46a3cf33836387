"""Appearance swap: teach the reading that lends organs to another condition that condition's look.

A native scan never labels the stomach, so prediction reads it under the contrast condition
(:meth:`~..models.mosnet.MOSnetConfig.borrowed_organs`). That reading has only seen contrast
slices, where the agent makes liver and spleen bright; on a native slice it takes the dull liver for
stomach. The swap gives some slices of a lending condition the borrowing condition's per-organ
intensities, measured on the training labels of the organs both conditions annotate, so the lent
reading also learns the organs it lends on the look it will be borrowed for. A swapped slice keeps
all its labels: training only the lent organs on it was tried, and cost the lending condition's own
organs more than it gave (docs/results-mosnet.md, "The appearance swap"). Nothing is assumed about
which organs an agent enhances: an organ shifts only when its mean intensity differs between the two
conditions' training slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..models.mosnet import MOSnetConfig
from .slices import SliceSet

#: an organ whose mean differs by less than this (windowed units; 0.02 = 20 HU at width 1000) keeps its look
MIN_SHIFT = 0.02
_SAMPLE = 1024  #: slices per condition the means are measured on (a seeded sample; means need no more)


@dataclass(frozen=True)
class Swap:
    """What a training step needs to swap appearances."""

    shifts: torch.Tensor  #: (K, M) from :func:`appearance_shifts`
    probability: float  #: of a swap, per slice of a condition that has shifts


def _organ_means(data: SliceSet, config: MOSnetConfig, condition: int, rng: np.random.Generator) -> torch.Tensor:
    """(M,) mean windowed intensity of each organ on the centre channel of ``condition``'s slices
    that annotate it (NaN where none shows it)."""
    rows = torch.nonzero(data.condition == condition).flatten().numpy()
    if len(rows) > _SAMPLE:
        rows = np.sort(rng.choice(rows, _SAMPLE, replace=False))
    index = torch.from_numpy(rows)
    centre = config.slice_offsets().index(0)
    image = data.images[index, centre].float()
    means = torch.full((len(config.organs),), float("nan"))
    for m in range(len(config.organs)):  # one organ at a time: a (n, S, S) mask, not (n, M, S, S) floats
        mask = data.organ_masks[index, m] & data.annotated[index, m][:, None, None]
        # Its interior (2 pixels in from the edge), where the scanner's blur mixes in no neighbour;
        # an organ too thin to have one is measured whole.
        inner = -F.max_pool2d(-mask[:, None].float(), 5, stride=1, padding=2)[:, 0] > 0.5
        mask = inner if inner.any() else mask
        if mask.any():
            means[m] = float(image[mask].sum(dtype=torch.float64) / mask.sum())
    return means


def appearance_shifts(data: SliceSet, config: MOSnetConfig, seed: int = 0) -> torch.Tensor:
    """(K, M) per-condition, per-organ intensity shifts: row ``c`` takes a slice of condition ``c``
    to the look of the first condition that borrows organs from ``c``; zero rows for conditions
    that lend nothing, zero entries for organs that look alike in both or that either leaves
    unlabelled."""
    shifts = torch.zeros(len(config.conditions), len(config.organs))
    rng = np.random.default_rng(seed)
    means: dict[int, torch.Tensor] = {}
    for borrower, name in enumerate(config.conditions):
        for lender, _ in config.borrowed_organs(name):
            if shifts[lender].any():
                continue  # a condition lending to several takes the first one's look
            for k in (lender, borrower):
                if k not in means:
                    means[k] = _organ_means(data, config, k, rng)
            delta = means[borrower] - means[lender]
            shifts[lender] = torch.where(delta.abs() >= MIN_SHIFT, delta, torch.zeros_like(delta)).nan_to_num(0.0)
    return shifts


def describe(shifts: torch.Tensor, config: MOSnetConfig) -> list[str]:
    """The shifts in HU, one line per lending condition, for the training log."""
    lines = []
    for lender, row in enumerate(shifts):
        parts = [f"{organ} {float(v) * config.window_width:+.0f} HU" for organ, v in zip(config.organs, row) if v]
        if parts:
            lines.append(f"{config.conditions[lender]} slices: " + ", ".join(parts))
    return lines


def swap_appearance(image: torch.Tensor, masks: torch.Tensor, condition: torch.Tensor, swap: Swap,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``image`` (B, C, S, S) with, on each slice drawn with the swap's probability whose condition
    has a shift, every shifted organ moved to the borrowing condition's mean; edges softened over 3
    pixels, as the scanner blurs them. ``masks`` (B, M, S, S) are the slice's labels (a lending
    condition labels the organs that shift); 2.5D neighbour channels take the centre slice's shift."""
    drawn = torch.rand(len(image), device=image.device, generator=generator) < swap.probability
    drawn &= swap.shifts[condition].any(1)
    if not drawn.any():
        return image
    per_slice = swap.shifts[condition] * drawn[:, None]  # (B, M)
    delta = torch.einsum("bm,bmhw->bhw", per_slice, masks.float())[:, None]
    delta = F.avg_pool2d(delta, 3, stride=1, padding=1, count_include_pad=False)
    return (image + delta).clamp(0.0, 1.0).contiguous(memory_format=torch.channels_last)
