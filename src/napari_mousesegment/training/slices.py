"""Micro-CT scans to MOSnet's preprocessed 2D slices (see :mod:`..models.preprocess`), for training,
fine-tuning and threshold choice; and the train/validation split by scan."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..data.ct_dataset import CTDataset, load_case
from ..models.mosnet import MOSnetConfig
from ..models.preprocess import (
    context_index,
    fit_square,
    model_grid,
    resample,
    slice_positions,
    to_slices,
    window,
    with_position,
)


@dataclass
class SliceSet:
    """Preprocessed training slices of many scans, kept compact in memory."""

    images: torch.Tensor  #: (N, C, S, S) float16 in [0, 1]; C = config.input_channels (1, 2.5D, + position)
    organ_masks: torch.Tensor  #: (N, M, S, S) bool, model organ order
    annotated: torch.Tensor  #: (N, M) bool: α of each slice's dataset
    condition: torch.Tensor  #: (N,) long
    scan: list[str]  #: per slice: "dataset/case", the unit of the train/validation split

    def subset(self, index: torch.Tensor) -> SliceSet:
        """The slices at ``index``, in that order."""
        return SliceSet(self.images[index], self.organ_masks[index], self.annotated[index], self.condition[index],
                        [self.scan[i] for i in index.tolist()])


def model_slices(hu: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float], config: MOSnetConfig,
                 stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A scan (or some of its slices) as the model sees it: windowed, resampled to its voxel size, cut
    on its plane (every ``stride``-th slice; a multi-planar model's planes one after another) and
    fitted to its square; images (N, C, S, S) float32 (each slice with its 2.5D neighbours,
    :meth:`MOSnetConfig.slice_offsets`, and its position when the config has one), labels (N, S, S)
    long, aligned pixel for pixel."""
    volume = resample(window(hu, config.window_level, config.window_width), spacing, config.spacing_mm, order=1)
    truth = resample(labels, spacing, config.spacing_mm, order=0)
    images, masks = [], []
    for plane in config.planes:
        img = to_slices(volume, plane)
        n = len(img)
        img = img[context_index(n, config.slice_offsets())[::stride]]  # (N, C, h, w)
        lab = to_slices(truth, plane)[::stride]
        square = fit_square(torch.from_numpy(np.ascontiguousarray(img)), config.image_size, "bilinear")
        if config.position:
            square = with_position(square, slice_positions(np.arange(n)[::stride], n))
        images.append(square)
        masks.append(fit_square(torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))[:, None].float(),
                                config.image_size, "nearest-exact").long()[:, 0])
    return torch.cat(images), torch.cat(masks)


def organ_masks(labels: torch.Tensor, values: list[int | None]) -> torch.Tensor:
    """(N, M, S, S) bool masks of (N, S, S) labels, organ i being label ``values[i]`` (None: not annotated)."""
    masks = torch.zeros((len(labels), len(values), *labels.shape[1:]), dtype=torch.bool)
    for i, value in enumerate(values):
        if value is not None:
            masks[:, i] = labels == value
    return masks


def build_slices(datasets: list[CTDataset], config: MOSnetConfig, cases: dict[str, list[str]] | None = None,
                 stride: int = 1) -> SliceSet:
    """Preprocess the given cases (default: all) of the datasets into a :class:`SliceSet`."""
    images, masks, annotated, condition, scan = [], [], [], [], []
    for ds in datasets:
        if ds.condition not in config.conditions:
            raise ValueError(f"{ds.root}: condition {ds.condition!r} is not one of the model's {config.conditions}")
        alpha = torch.tensor([o in ds.organs for o in config.organs])
        values = [ds.organs.get(o) for o in config.organs]
        for case in (cases or {}).get(str(ds.root), ds.cases):
            hu, labels, spacing = load_case(ds, case)
            img_t, lab_t = model_slices(hu, labels, spacing, config, stride)
            images.append(img_t.half())
            masks.append(organ_masks(lab_t, values))
            annotated.append(alpha.expand(len(lab_t), -1))
            condition.append(torch.full((len(lab_t),), config.conditions.index(ds.condition)))
            scan += [f"{ds.name}/{case}"] * len(lab_t)
    return SliceSet(torch.cat(images), torch.cat(masks), torch.cat(annotated), torch.cat(condition), scan)


def organ_balanced_weights(data: SliceSet, share: float = 0.5) -> np.ndarray:
    """Sampling weights (summing to 1) that draw ``share`` of the slices organ by organ and the rest uniformly.

    The organ-by-organ part picks an organ uniformly among those labelled somewhere, then a slice
    that shows it (under a dataset that annotates it), as nnU-Net oversamples its foreground
    classes: small organs seen on a few slices of each scan (kidneys, spleen, bladder) are drawn
    as often as the liver, and slices showing no organ less often.
    """
    n = len(data.organ_masks)
    shows = (data.organ_masks.flatten(2).any(2) & data.annotated).numpy()  # (N, M)
    counts = shows.sum(0)
    uniform = np.full(n, 1.0 / n)
    if not counts.any():
        return uniform
    per_organ = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0) / np.count_nonzero(counts)
    weights = (1 - share) * uniform + share * (shows * per_organ).sum(1)
    return weights / weights.sum()


def corrected_slices(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float], touched: list[int],
                     config: MOSnetConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's slices (N, C, S, S) and organ masks (N, M, S, S) of the touched input slices (axis
    0, axial), labels numbered as the model's organs (1 = its first organ, as predict writes them).

    A multi-planar model that slices the axial plane among others learns from them on that plane:
    only the touched slices are corrected, so a coronal or sagittal cut through the scan would mix
    corrected rows with the prediction's."""
    if "axial" not in config.planes:
        raise ValueError("micro-CT corrections are taken slice by slice on the axial plane")
    # Each corrected axial slice becomes one model slice: resampled in plane only, so its labels
    # are the corrected ones whatever the scan's z spacing (a z resample would mix in neighbours).
    in_plane = (config.spacing_mm, *spacing[1:])
    flat = replace(config, context=0, plane="axial", position=False)
    touched = np.asarray(touched, int)
    channels = []
    for offset in config.slice_offsets():
        img_t, lab_t = model_slices(_slices_at(image, touched + offset * config.spacing_mm / spacing[0], config),
                                    labels[touched], in_plane, flat)
        channels.append(img_t)
    images = torch.cat(channels, 1)
    if config.position:  # each input slice's place on the model grid, as predict_volume gives it
        n, n_model = len(image), model_grid(image.shape, spacing, config.spacing_mm)[0]
        images = with_position(images, slice_positions((touched + 0.5) * n_model / n - 0.5, n_model))
    return images, organ_masks(lab_t, list(range(1, len(config.organs) + 1)))


def _slices_at(image: np.ndarray, positions: np.ndarray, config: MOSnetConfig) -> np.ndarray:
    """HU slices at fractional slice ``positions`` (clipped to the scan), mixed linearly after the
    window as the predictor mixes them (a 2.5D neighbour of a corrected slice lies between two input
    slices when the scan's slices are not a whole number of model voxels apart); returned in HU
    inside the window, which model_slices maps back to the same values."""
    pos = np.clip(positions, 0, len(image) - 1)
    low = np.floor(pos).astype(int)
    high = np.minimum(low + 1, len(image) - 1)
    weight = (pos - low).astype(np.float32)[:, None, None]
    a = window(image[low], config.window_level, config.window_width)
    b = window(image[high], config.window_level, config.window_width)
    mixed = a + (b - a) * weight
    return mixed * config.window_width + (config.window_level - config.window_width / 2)


def split_by_scan(scans: list[str], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split scan ids ("dataset/case"), never slices, into train and validation, per dataset.

    Each dataset with two or more scans gives round(val_fraction·n) of them, at least one, to
    validation, so every condition is validated.
    """
    unique = sorted(set(scans))
    by_dataset: dict[str, list[str]] = {}
    for s in unique:
        by_dataset.setdefault(s.split("/", 1)[0], []).append(s)
    rng = np.random.default_rng(seed)
    val: list[str] = []
    for members in by_dataset.values():
        if len(members) >= 2:
            n_val = min(max(1, round(val_fraction * len(members))), len(members) - 1)
            val += [members[i] for i in rng.permutation(len(members))[:n_val]]
    if not val:
        raise ValueError("need at least two scans in a dataset to split into training and validation")
    return sorted(set(unique) - set(val)), sorted(val)
