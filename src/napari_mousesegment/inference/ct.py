"""Whole-volume MOSnet prediction, returned on the input's own grid and spacing.

The volume streams through in slabs of ``batch_size`` slices on the model's plane: each slab is
windowed, resampled to the model's voxel size (linear along the slice axis, bilinear in plane),
segmented, and its probabilities resampled back onto the input grid before the next slab starts.
Working memory is therefore a few slabs, whatever the scan's length; only the label volume (and
the probabilities, when asked for) grow with it. The resampling is the same linear interpolation
as ``scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest")`` on the whole volume.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..io.arrays import load
from ..io.limits import check_allocation, nbytes, reserve_disk
from ..models.fold import inference_copy
from ..models.mosnet import MOSnet
from ..models.preprocess import (
    PLANE_AXIS,
    context_index,
    fit_square,
    model_grid,
    slice_positions,
    to_slices,
    unfit_square,
    window,
    with_position,
)

#: Bytes of full-resolution probabilities turned into labels at once (a 1024 x 1024 scan with 9
#: organs holds 38 MB per slice, so one slice at a time; a 128 x 128 one, batch_size slices).
CHUNK_BYTES = 32 * 2**20


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
    offsets = config.slice_offsets()
    for start in range(0, len(low), batch_size):
        if should_stop():
            raise InterruptedError("prediction cancelled")
        # The model slices of this slab and, for a 2.5D model, their neighbours: one read of the input.
        channels = context_index(len(low), offsets, start, min(start + batch_size, len(low)))  # (B, C)
        need = np.arange(channels.min(), channels.max() + 1)
        lo, hi, wt = low[need], high[need], weight[need]
        first = int(lo[0])
        raw = load(stack[first:int(hi[-1]) + 1])  # the one read of this slab (numpy, memmap or dask)
        slab = torch.from_numpy(window(raw, config.window_level, config.window_width))
        mixed = torch.lerp(slab[lo - first], slab[hi - first], torch.from_numpy(wt)[:, None, None])
        x = _resize(mixed[torch.from_numpy(channels - need[0])].to(device), plane)
        x = fit_square(x, config.image_size, "bilinear")
        if config.position:
            x = with_position(x, slice_positions(np.arange(start, start + len(x)), len(low)))
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = net.segment(x, cond.expand(len(x)), borrowed)
        del x, mixed, slab, raw  # nothing of this slab outlives its probabilities (bounded memory)
        probs = _resize(unfit_square(logits.float().sigmoid_(), *plane), (h, w))
        del logits
        yield probs


#: How much coarser than the model's voxels a scan's may be: beyond it the scan is no micro-CT of a
#: mouse (8x 0.28 mm is 2.24 mm: a whole mouse in about 40 voxels), and upsampling would be slow.
MAX_UPSAMPLING = 8.0


def _check(model: MOSnet, image, spacing, condition: str, batch_size: int | None) -> int:
    """The batch size to use, after refusing what the predictor cannot segment."""
    config = model.config
    if image.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) volume, got shape {tuple(image.shape)}")
    if condition not in config.conditions:
        raise ValueError(f"condition {condition!r} is unknown to this model; it knows {config.conditions}")
    if spacing is None or len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive, finite numbers in mm, got {spacing!r}")
    coarsest = max(float(s) for s in spacing)
    if coarsest > MAX_UPSAMPLING * config.spacing_mm:  # a wrong --spacing: resampling it would take ages
        raise ValueError(f"voxel size {coarsest:g} mm is {coarsest / config.spacing_mm:.0f}x coarser than the "
                         f"model's {config.spacing_mm:g} mm: no micro-CT scan of a mouse; check --spacing")
    if batch_size is None:
        batch_size = 32 if next(model.parameters()).device.type == "cuda" else 4
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return batch_size


def slice_probabilities(model: MOSnet, slices: np.ndarray, condition: str, borrow: bool = True) -> np.ndarray:
    """(N, M, H, W) float32 organ probabilities of (N, H, W) HU slices that are already on the
    model's plane and voxel size, by the same code as :func:`iter_labels` (window, square fit,
    network, sigmoid): what a bioimage.io package of the model is tested against."""
    config = model.config
    if slices.ndim != 3:
        raise ValueError(f"expected (slices, height, width), got shape {slices.shape}")
    device = next(model.parameters()).device
    borrowed = config.borrowed_organs(condition) if borrow else []
    slabs = _model_slabs(inference_copy(model), slices, slices.shape, config.conditions.index(condition),
                         borrowed, 4, device, lambda: False)
    with torch.inference_mode():
        return torch.cat(list(slabs)).float().cpu().numpy()


def iter_labels(
    model: MOSnet,
    image,
    spacing: tuple[float, float, float],
    condition: str,
    batch_size: int | None = None,
    threshold: float | None = None,
    keep_probabilities: bool = False,
    borrow: bool = True,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    plane: str | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Labels of successive input slices on the model's plane, as they are ready.

    Yields ``(start, labels, probabilities)``: ``labels`` (k, ...) uint8 are the input slices
    ``start .. start + k`` along the plane's axis, ``probabilities`` (M, k, ...) float16 or None.
    At most ``batch_size`` slices come at a time, so nothing here grows with the scan: a caller
    may write them out as they come (:func:`predict_volume` gathers them). ``image`` may be a
    numpy, memory-mapped or dask array; it is read one slab at a time. ``plane``: one of a
    multi-planar model's planes (default: the model's only plane).
    """
    config = model.config
    batch_size = _check(model, image, spacing, condition, batch_size)
    if plane is None and len(config.planes) > 1:
        raise ValueError(f"a multi-planar MOSnet ({config.plane}) streams one plane at a time: give the plane, "
                         "or use predict_volume, which fuses them")
    plane = plane or config.plane
    if plane not in config.planes:
        raise ValueError(f"this MOSnet was trained on {config.plane} slices, not {plane}")
    device = next(model.parameters()).device
    net = inference_copy(model)
    axis = PLANE_AXIS[plane]
    stack = to_slices(image, plane)  # a view: slices along axis 0
    grid = model_grid(stack.shape, [spacing[axis], *(s for i, s in enumerate(spacing) if i != axis)],
                      config.spacing_mm)
    n, n_model = len(stack), grid[0]
    # One slab at the model's voxel size in plane, then its probabilities of every organ: refused
    # before allocating when a voxel size in the wrong unit makes a model slice absurdly large.
    # A 2.5D slab also reads its neighbours and holds each slice's channels before resizing.
    slab_slices = (batch_size * (1 + config.input_channels + len(config.organs))
                   + 2 * config.context * config.context_step)
    check_allocation(nbytes((slab_slices, *grid[1:]), 4),
                     f"a slab of {batch_size} slices at the model's {config.spacing_mm} mm voxels "
                     f"({grid[1]}x{grid[2]} each, from {tuple(float(s) for s in spacing)} mm)")
    # Each input slice j reads model slices low[j] and high[j]; emit it once both are computed.
    low, high, weight = linear_taps(n, n_model)
    same_grid = n_model == n  # then input slice j is model slice j: no interpolation, no copies
    # Input slices labelled at once: at most batch_size, and ~CHUNK_BYTES of float32 probabilities.
    slice_bytes = 4 * len(config.organs) * int(np.prod(stack.shape[1:]))
    per_chunk = max(1, min(batch_size, CHUNK_BYTES // slice_bytes))
    done, emitted, tail, tail_start = 0, 0, None, 0
    with torch.inference_mode():
        borrowed = config.borrowed_organs(condition) if borrow else []
        cutoffs = [threshold] * len(config.organs) if threshold is not None else config.organ_thresholds()
        offsets = torch.logit(torch.tensor(cutoffs, device=device))
    slabs = _model_slabs(net, stack, grid, config.conditions.index(condition), borrowed, batch_size, device,
                         should_stop)
    while True:
        # Torch runs in inference mode only between yields: the caller's own code never inherits it.
        with torch.inference_mode():
            slab = next(slabs, None)
            if slab is None:
                return
            held = slab if tail is None else torch.cat([tail, slab])
            done += len(slab)
            ready = int(np.searchsorted(high, done, side="left"))  # input slices whose taps are all done
            out = []
            for start in range(emitted, ready, per_chunk):  # a few slices at full size at once
                stop = min(start + per_chunk, ready)
                if same_grid:
                    chunk = held[start - tail_start:stop - tail_start]
                else:
                    lo = torch.from_numpy(low[start:stop] - tail_start).to(held.device)
                    hi = torch.from_numpy(high[start:stop] - tail_start).to(held.device)
                    wt = torch.from_numpy(weight[start:stop]).to(held.device)[:, None, None, None]
                    chunk = torch.lerp(held[lo], held[hi], wt)
                best = vote(torch.logit(chunk, eps=1e-6), offsets).to(torch.uint8).cpu().numpy()
                probs = chunk.to(torch.float16).permute(1, 0, 2, 3).cpu().numpy() if keep_probabilities else None
                del chunk
                out.append((start, best, probs))
            emitted = max(emitted, ready)
            # Keep the model slices the next input slice still needs; the next slab starts at `done`
            # (when slices are thicker than two model voxels, the next one may need none of these).
            keep_from = min(int(low[emitted]) if emitted < n else done, done)
            tail = held[keep_from - tail_start:].clone() if keep_from < done else None
            tail_start = keep_from
            del held, slab
        yield from out  # uint8 labels of this slab's input slices (numpy: outside torch)
        del out
        if progress:
            progress(done, n_model)


def iter_fused_labels(
    model: MOSnet,
    image,
    spacing: tuple[float, float, float],
    condition: str,
    batch_size: int | None = None,
    threshold: float | None = None,
    keep_probabilities: bool = False,
    borrow: bool = True,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    scratch: str | os.PathLike | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """A multi-planar MOSnet's labels of successive axial input slices, as :func:`iter_labels` yields them.

    Each organ's probability is averaged over the model's planes (as the Multi-Planar U-Net of
    Perslev et al. 2019 fuses its views, here with equal weights), then voted on at the model's
    thresholds. A slice on one plane sees the whole body along another axis, which a stack of
    axial slices alone never shows the network. Every plane must be read before the first axial
    slice is known, so the planes' summed probabilities (4 bytes per organ per voxel) are held in
    memory, or with ``scratch`` in a file under that folder, given its disk space up front and
    removed when the labels are out: then only the image is held in memory.
    """
    config = model.config
    batch_size = _check(model, image, spacing, condition, batch_size)
    planes = config.planes
    image = load(image)  # read once: slabs are cut along several axes
    shape = (len(config.organs), *image.shape)
    what = f"the {len(planes)} planes' summed probabilities of a scan of {tuple(image.shape)} voxels"
    with contextlib.ExitStack() as stack:
        if scratch is None:
            check_allocation(nbytes(shape, 4), what)
            total = np.zeros(shape, np.float32)
        else:
            path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".planes-", dir=scratch))) / "sum.f32"
            reserve_disk(path, nbytes(shape, 4), what)
            total = np.memmap(path, np.float32, "r+", shape=shape)
        done = 0

        def step(k: int, n: int) -> None:
            if progress:
                progress(done * n + k, n * len(planes))

        for done, plane in enumerate(planes):
            view = np.moveaxis(total, 1 + PLANE_AXIS[plane], 1)
            for start, _best, probs in iter_labels(model, image, spacing, condition, batch_size, threshold, True,
                                                   borrow, step, should_stop, plane):
                view[:, start:start + probs.shape[1]] += probs
        cutoffs = [threshold] * len(config.organs) if threshold is not None else config.organ_thresholds()
        offsets = torch.logit(torch.tensor(cutoffs))
        per_chunk = max(1, min(batch_size, CHUNK_BYTES // nbytes(shape[:1] + shape[2:], 4)))
        for z in range(0, image.shape[0], per_chunk):
            mean = np.asarray(total[:, z:z + per_chunk]) / len(planes)  # (M, k, y, x)
            with torch.inference_mode():
                best = vote(torch.logit(torch.from_numpy(np.moveaxis(mean, 0, 1)), eps=1e-6), offsets)
            yield z, best.to(torch.uint8).numpy(), mean.astype(np.float16) if keep_probabilities else None
        del total, view


def predict_volume(
    model: MOSnet,
    image,
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

    ``image`` may be a memory-mapped or dask array: it is read one slab at a time. ``batch_size``
    slices go through the network at once (default: 4 on a CPU, where larger batches gain little
    speed and cost about 5 MB per slice at 128 px; 32 on a GPU). ``keep_probabilities`` also returns
    the per-organ probabilities (2 bytes per organ per voxel). A voxel is labelled with the organ
    whose probability most exceeds that organ's threshold (in logits): ``threshold`` for every
    organ, or by default the model's own (:meth:`MOSnetConfig.organ_thresholds`). With ``borrow``,
    organs that no training dataset of ``condition`` annotated are read under a condition that did
    (:meth:`MOSnetConfig.borrowed_organs`); without it, every organ is read under ``condition``.
    The whole label volume is kept in memory; :func:`iter_labels` streams it instead. A multi-planar
    model (``plane`` "axial+coronal", ...) runs on each of its planes and votes on the mean of their
    probabilities, held in memory too (:func:`iter_fused_labels`, which can hold them on disk).
    """
    config = model.config
    _check(model, image, spacing, condition, batch_size)
    fused = len(config.planes) > 1
    plane = "axial" if fused else config.plane
    check_allocation(nbytes(image.shape, 1 + (2 * len(config.organs) if keep_probabilities else 0)),
                     f"the labels{' and probabilities' if keep_probabilities else ''} of a scan of "
                     f"{tuple(image.shape)} voxels")
    labels = np.zeros(image.shape, np.uint8)
    label_stack = to_slices(labels, plane)
    probabilities = np.zeros((len(config.organs), *image.shape), np.float16) if keep_probabilities else None
    prob_stack = np.moveaxis(probabilities, 1 + PLANE_AXIS[plane], 1) if probabilities is not None else None
    slabs = (iter_fused_labels if fused else iter_labels)(model, image, spacing, condition, batch_size, threshold,
                                                          keep_probabilities, borrow, progress, should_stop)
    for start, best, probs in slabs:
        label_stack[start:start + len(best)] = best
        if prob_stack is not None:
            prob_stack[:, start:start + len(best)] = probs
    return CTPrediction(labels, {o: i + 1 for i, o in enumerate(config.organs)}, probabilities)
