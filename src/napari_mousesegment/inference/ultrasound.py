"""Ultrasound U-Net prediction: probabilities per frame, then separate organ instances (:func:`segment_frames`).

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

from ..models.fold import inference_copy
from ..models.packaged import PackagedModel
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


def working_shape(shape: tuple[int, int], frame_size: int) -> tuple[int, int]:
    """The (height, width) frames of ``shape`` are resized to, their longer side ``frame_size`` (0: as they are)."""
    h, w = shape
    if not frame_size:
        return h, w
    scale = frame_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def to_working_scale(x: torch.Tensor, frame_size: int, masks: bool = False) -> torch.Tensor:
    """(B, C, H, W) frames resized to the model's working scale (bilinear, antialiased when shrinking);
    ``masks`` are resized as fractions of foreground, for losses and scores at that scale."""
    size = working_shape(tuple(x.shape[-2:]), frame_size)
    if size == tuple(x.shape[-2:]):
        return x
    if masks:
        return F.interpolate(x.float(), size=size, mode="area")
    return F.interpolate(x.float(), size=size, mode="bilinear", antialias=size[0] < x.shape[-2], align_corners=False)


def batch_probabilities(model: UNet, x: torch.Tensor) -> torch.Tensor:
    """Probabilities (on the CPU) of a (B, 1, H, W) batch of [0, 1] frames already on the model's device,
    computed at the model's working scale and returned at the frames' own size."""
    h0, w0 = x.shape[-2:]
    x = to_working_scale(x, model.config.frame_size)
    x, (h, w) = pad_to_multiple(x, 2 ** (model.config.levels - 1))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        logits = model(x)
    logits = logits.float()[:, :, :h, :w]
    if (h, w) != (h0, w0):  # logits, not probabilities, are interpolated: sharper edges
        logits = F.interpolate(logits, size=(h0, w0), mode="bilinear", align_corners=False)
    return torch.sigmoid(logits).cpu()


def predict_probabilities(model: UNet, frames: np.ndarray, batch_size: int = 8,
                          progress: Callable[[int, int], None] | None = None,
                          should_stop: Callable[[], bool] = lambda: False) -> np.ndarray:
    """(N, H, W) organ probabilities for (N, H, W) frames."""
    device = next(model.parameters()).device
    net = inference_copy(model)
    unit = to_unit(frames)
    out = np.empty(unit.shape, np.float32)
    for start in range(0, len(unit), batch_size):
        if should_stop():
            raise InterruptedError("prediction cancelled")
        x = torch.from_numpy(unit[start:start + batch_size])[:, None].to(device)
        out[start:start + len(x)] = batch_probabilities(net, x)[:, 0].numpy()
        if progress:
            progress(min(start + batch_size, len(unit)), len(unit))
    return out


def organ_probabilities(model: UNet | PackagedModel, frames: np.ndarray,
                        progress: Callable[[int, int], None] | None = None,
                        should_stop: Callable[[], bool] = lambda: False) -> np.ndarray:
    """(N, H, W) probabilities of one organ: our U-Net on [0, 1] frames, or an imported bioimage.io
    package on the raw frames with its own pre- and postprocessing."""
    if isinstance(model, PackagedModel):
        return model.probabilities(frames, progress=progress, should_stop=should_stop)
    return predict_probabilities(model, frames, progress=progress, should_stop=should_stop)


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero the labelled pieces smaller than ``min_size`` pixels."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def _merge_wide_necks(regions: np.ndarray, distance: np.ndarray, neck: float) -> np.ndarray:
    """Merge neighbouring regions whose shared border is wider than ``neck`` times the thinner one.

    The width of a border is the largest distance-to-background along it (the saddle); a region's
    is its largest distance (its peak). A saddle near the peaks means no real neck between them.
    """
    n = int(regions.max())
    if n < 2:
        return regions
    saddle = np.zeros((n + 1, n + 1))
    for a, b, da, db in ((regions[:, :-1], regions[:, 1:], distance[:, :-1], distance[:, 1:]),
                         (regions[:-1], regions[1:], distance[:-1], distance[1:])):
        touch = (a != b) & (a > 0) & (b > 0)
        for i, j, d in zip(a[touch], b[touch], np.minimum(da[touch], db[touch])):
            saddle[i, j] = saddle[j, i] = max(saddle[i, j], d)
    peak = ndi.maximum(distance, regions, index=np.arange(n + 1))
    parent = list(range(n + 1))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(saddle))):
        if saddle[i, j] >= neck * min(peak[i], peak[j]):
            parent[root(j)] = root(i)
    return np.array([root(i) for i in range(n + 1)])[regions]


def instances(probability: np.ndarray, threshold: float, min_size: int, depth: float = 2.0,
              neck: float = 0.6) -> np.ndarray:
    """Instance ids 1.. per frame from (N, H, W) probabilities (or one (H, W) frame).

    Touching organs are split where the mask narrows by more than ``depth`` pixels of radius and
    to less than ``neck`` times the thinner organ's half-width.
    """
    if probability.ndim == 2:
        return instances(probability[None], threshold, min_size, depth, neck)[0]
    labels = np.zeros(probability.shape, np.uint16)
    for k, prob in enumerate(probability):
        above = prob > threshold
        box = ndi.find_objects(above.astype(np.uint8))
        if not box:
            continue
        # Work inside the organs' bounding box with a one-pixel background rim (none where the box
        # meets the image edge, as for the whole frame): the same distances to background, the
        # same result, a fraction of the pixels.
        (y, x), (h, w) = box[0], above.shape
        crop = (slice(max(y.start - 1, 0), min(y.stop + 1, h)), slice(max(x.start - 1, 0), min(x.stop + 1, w)))
        blobs = _drop_small(ndi.label(ndi.binary_fill_holes(above[crop]))[0], min_size)
        mask = blobs > 0
        if not mask.any():
            continue
        distance = ndi.distance_transform_edt(mask)
        # One marker per distance maximum that stands out by more than `depth` pixels, then
        # regions joined by a wide neck merged again: two organs touching at a narrow neck stay
        # apart, a long or curved organ (a placenta's crescent) stays whole.
        markers, _ = ndi.label(h_maxima(distance, depth))
        split = _merge_wide_necks(watershed(-distance, markers, mask=mask), distance, neck)
        split = _drop_small(split, min_size)
        values = np.unique(split[split > 0])
        lookup = np.zeros(int(split.max()) + 1, np.uint16)
        lookup[values] = np.arange(1, len(values) + 1)
        labels[k][crop] = lookup[split]
    return labels


def segment_frames(model: UNet | PackagedModel, frames: np.ndarray, threshold: float | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] = lambda: False) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and instance labels of (N, H, W) frames with one organ's U-Net, at the model's
    own threshold and smallest instance size unless ``threshold`` is given."""
    prob = organ_probabilities(model, frames, progress=progress, should_stop=should_stop)
    config = model.config
    return prob, instances(prob, config.threshold if threshold is None else threshold, config.min_size)
