"""Whole-volume MOSnet prediction, returned on the input's own grid and spacing.

The volume streams through in slabs of ``batch_size`` slices on the model's plane: each slab is
windowed, resampled to the model's voxel size (linear along the slice axis, bilinear in plane),
segmented, and its probabilities resampled back onto the input grid before the next slab starts.
Working memory is therefore a few slabs, whatever the scan's length; only the label volume (and
the probabilities, when asked for) grow with it. The resampling is the same linear interpolation
as ``scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest")`` on the whole volume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..models.fold import inference_copy
from ..models.mosnet import MOSnet
from ..models.preprocess import PLANE_AXIS, fit_square, model_grid, to_slices, unfit_square, window


@dataclass
class CTPrediction:
    """A label volume and, when asked for, per-organ probabilities, on the input grid."""

    labels: np.ndarray  #: (z, y, x) uint8: 1 + index of the organ most above its threshold, else 0
    organs: dict[str, int]  #: organ -> label value
    probabilities: np.ndarray | None = None  #: (M, z, y, x) float16 in [0, 1], with keep_probabilities


def linear_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output sample of a grid-mode linear resampling from n_in to n_out samples: the two
    input indices it reads and the weight of the second (edges repeat, as mode="nearest")."""
    coord = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    low = np.floor(coord).astype(int)
    return low, np.minimum(low + 1, n_in - 1), (coord - low).astype(np.float32)


def vote(logits: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Labels (N, H, W) from logits (N, M, H, W): 1 + the organ whose logit most exceeds its offset
    (the logit of its threshold, shape (M,)), 0 where none does."""
    top, best = (logits - offsets[None, :, None, None]).max(1)
    return torch.where(top > 0, best + 1, 0)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _model_slabs(net: MOSnet, stack: np.ndarray, grid: tuple[int, int, int], condition: int,
                 borrowed: list[tuple[int, list[int]]], batch_size: int, device: torch.device,
                 should_stop: Callable[[], bool]) -> Iterator[torch.Tensor]:
    """Probabilities (B, M, h, w) of successive slabs of model-grid slices, on the input's in-plane grid.

    ``grid`` is the model-grid size of the stack: (slices, height, width).
    """
    config = net.config
    n, h, w = stack.shape
    low, high, weight = linear_taps(grid[0], n)
    plane = grid[1:]  # model-grid (height, width)
    cond = torch.tensor([condition], device=device)
    for start in range(0, len(low), batch_size):
        if should_stop():
            raise InterruptedError("prediction cancelled")
        lo, hi, wt = low[start:start + batch_size], high[start:start + batch_size], weight[start:start + batch_size]
        first = int(lo[0])
        slab = torch.from_numpy(window(stack[first:int(hi[-1]) + 1], config.window_level, config.window_width))
        mixed = torch.lerp(slab[lo - first], slab[hi - first], torch.from_numpy(wt)[:, None, None])
        x = _resize(mixed[:, None].to(device), plane)
        x = fit_square(x, config.image_size, "bilinear").contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = net.segment(x, cond.expand(len(x)), borrowed)
        del x, mixed, slab  # nothing of this slab outlives its probabilities (bounded memory)
        probs = _resize(unfit_square(logits.float().sigmoid_(), *plane), (h, w))
        del logits
        yield probs


def predict_volume(
    model: MOSnet,
    image: np.ndarray,
    spacing: tuple[float, float, float],
    condition: str,
    batch_size: int | None = None,
    threshold: float | None = None,
    keep_probabilities: bool = False,
    borrow: bool = True,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> CTPrediction:
    """Segment a (z, y, x) HU volume with known spacing (mm); the result is on the input grid.

    ``image`` may be a memory-mapped array: it is read one slab at a time. ``batch_size`` slices
    go through the network at once (default: 4 on a CPU, where larger batches gain little speed
    and cost about 5 MB per slice at 128 px; 32 on a GPU). ``keep_probabilities`` also returns the
    per-organ probabilities (2 bytes per organ per voxel). A voxel is labelled with the organ whose
    probability most exceeds that organ's threshold (in logits): ``threshold`` for every organ, or by
    default the model's own (:meth:`MOSnetConfig.organ_thresholds`). With ``borrow``, organs that no
    training dataset of ``condition`` annotated are read under a condition that did
    (:meth:`MOSnetConfig.borrowed_organs`); without it, every organ is read under ``condition``.
    """
    config = model.config
    if image.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) volume, got shape {image.shape}")
    if condition not in config.conditions:
        raise ValueError(f"condition {condition!r} is unknown to this model; it knows {config.conditions}")
    if spacing is None or len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers in mm, got {spacing!r}")
    device = next(model.parameters()).device
    if batch_size is None:
        batch_size = 32 if device.type == "cuda" else 4
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    net = inference_copy(model)
    axis = PLANE_AXIS[config.plane]
    stack = to_slices(image, config.plane)  # a view: slices along axis 0
    grid = model_grid(stack.shape, [spacing[axis], *(s for i, s in enumerate(spacing) if i != axis)],
                      config.spacing_mm)
    labels = np.zeros(image.shape, np.uint8)
    label_stack = to_slices(labels, config.plane)
    probabilities = np.zeros((len(config.organs), *image.shape), np.float16) if keep_probabilities else None
    prob_stack = np.moveaxis(probabilities, 1 + axis, 1) if probabilities is not None else None
    n, n_model = len(stack), grid[0]
    # Each input slice j reads model slices low[j] and high[j]; emit it once both are computed.
    low, high, weight = linear_taps(n, n_model)
    same_grid = n_model == n  # then input slice j is model slice j: no interpolation, no copies
    done, emitted, tail, tail_start = 0, 0, None, 0
    with torch.inference_mode():
        borrowed = config.borrowed_organs(condition) if borrow else []
        cutoffs = [threshold] * len(config.organs) if threshold is not None else config.organ_thresholds()
        offsets = torch.logit(torch.tensor(cutoffs, device=device))
        slabs = _model_slabs(net, stack, grid, config.conditions.index(condition), borrowed, batch_size, device,
                             should_stop)
        for slab in slabs:
            held = slab if tail is None else torch.cat([tail, slab])
            done += len(slab)
            ready = int(np.searchsorted(high, done, side="left"))  # input slices whose taps are all done
            if ready > emitted:
                if same_grid:
                    chunk = held[emitted - tail_start:ready - tail_start]
                else:
                    lo = torch.from_numpy(low[emitted:ready] - tail_start).to(held.device)
                    hi = torch.from_numpy(high[emitted:ready] - tail_start).to(held.device)
                    wt = torch.from_numpy(weight[emitted:ready]).to(held.device)[:, None, None, None]
                    chunk = torch.lerp(held[lo], held[hi], wt)
                best = vote(torch.logit(chunk, eps=1e-6), offsets)
                label_stack[emitted:ready] = best.to(torch.uint8).cpu().numpy()
                if prob_stack is not None:
                    prob_stack[:, emitted:ready] = chunk.to(torch.float16).permute(1, 0, 2, 3).cpu().numpy()
                emitted = ready
                del chunk, best
            # Keep the model slices the next input slice still needs; the next slab starts at `done`
            # (when slices are thicker than two model voxels, the next one may need none of these).
            keep_from = min(int(low[emitted]) if emitted < n else done, done)
            tail = held[keep_from - tail_start:].clone() if keep_from < done else None
            tail_start = keep_from
            del held, slab
            if progress:
                progress(done, n_model)
    return CTPrediction(labels, {o: i + 1 for i, o in enumerate(config.organs)}, probabilities)
