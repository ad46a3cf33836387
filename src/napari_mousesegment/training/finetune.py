"""Fine-tune a trained U-Net on a few corrected frames, with replay of its original data when available."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..inference.ultrasound import to_unit
from ..models.unet import UNet
from .augment import AugmentSettings, augment
from .losses import dice_bce_loss
from .us_trainer import _crops


@dataclass
class FineTuneSettings:
    """A short, gentle round: few epochs at a low learning rate, so the model adapts without forgetting."""

    epochs: int = 40
    batch_size: int = 8
    lr: float = 3e-4
    steps_per_epoch: int = 4
    replay_fraction: float = 0.5  #: share of each batch drawn from the original data, when given
    seed: int = 0
    augment: AugmentSettings = field(default_factory=AugmentSettings)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1:
            raise ValueError("epochs, steps per epoch and batch size must be at least 1")
        if not 0.0 <= self.replay_fraction < 1.0:
            raise ValueError(f"the replay fraction must lie in [0, 1), got {self.replay_fraction}")


def fine_tune_unet(model: UNet, frames: np.ndarray, masks: np.ndarray, settings: FineTuneSettings,
                   replay: tuple[np.ndarray, np.ndarray] | None = None,
                   progress: Callable[[dict], None] | None = None,
                   should_stop: Callable[[], bool] = lambda: False) -> UNet:
    """A fine-tuned copy of ``model`` (the original is left untouched).

    ``frames`` and ``masks`` are the corrected (n, H, W) frames and their organ masks; ``replay``
    the same for a sample of the original training data. ``progress`` gets one dict per epoch
    (epoch, epochs, loss, eta_s); ``should_stop`` is checked between steps.
    """
    if len(frames) == 0:
        raise ValueError("no corrected frames to learn from")
    device = next(model.parameters()).device
    tuned = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last).train()
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(settings.seed)
    own_f = torch.from_numpy(to_unit(frames))[:, None]
    own_m = torch.from_numpy((masks > 0).astype(np.float32))[:, None]
    if replay is not None and len(replay[0]):
        old_f = torch.from_numpy(to_unit(replay[0]))[:, None]
        old_m = torch.from_numpy((replay[1] > 0).astype(np.float32))[:, None]
    else:
        old_f = old_m = None
    n_old = int(round(settings.batch_size * settings.replay_fraction)) if old_f is not None else 0
    size = tuned.config.image_size

    def batch_loss() -> torch.Tensor:
        f, m = _crops(own_f, own_m, rng.integers(0, len(own_f), settings.batch_size - n_old), size, rng)
        if n_old:
            rf, rm = _crops(old_f, old_m, rng.integers(0, len(old_f), n_old), size, rng)
            f, m = torch.cat([f, rf]), torch.cat([m, rm])
        f, m = augment(f.to(device), m.to(device), settings.augment, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = tuned(f.contiguous(memory_format=torch.channels_last))
        return dice_bce_loss(logits.float(), m)

    return _steps(tuned, batch_loss, settings, progress, should_stop)


def _steps(tuned, batch_loss: Callable[[], torch.Tensor], settings: FineTuneSettings,
           progress: Callable[[dict], None] | None, should_stop: Callable[[], bool]):
    """The optimisation both fine-tunings share: epochs of steps, progress (epoch, loss, ETA) per epoch."""
    optimizer = torch.optim.Adam(tuned.parameters(), lr=settings.lr)
    t0 = time.monotonic()
    for epoch in range(settings.epochs):
        total = 0.0
        for _ in range(settings.steps_per_epoch):
            if should_stop():
                raise InterruptedError("retraining cancelled")
            loss = batch_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        if progress:
            elapsed = time.monotonic() - t0
            progress({"epoch": epoch + 1, "epochs": settings.epochs, "loss": total / settings.steps_per_epoch,
                      "eta_s": elapsed / (epoch + 1) * (settings.epochs - epoch - 1)})
    return tuned.eval()


def ct_slices(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float], touched: list[int],
              config) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's preprocessed slices (N, 1, S, S) and organ masks (N, M, S, S) of the touched input
    slices (axis 0, axial), labels numbered as the model's organs (1 = its first organ, as predict writes them)."""
    from ..models.preprocess import fit_square, resample, to_slices, window

    if config.plane != "axial":
        raise ValueError("micro-CT corrections are taken slice by slice on the axial plane")
    # Each corrected axial slice becomes one model slice: resampled in plane only, so its labels
    # are the corrected ones whatever the scan's z spacing (a z resample would mix in neighbours).
    in_plane = (config.spacing_mm, *spacing[1:])
    img = to_slices(resample(window(image[touched], config.window_level, config.window_width), in_plane,
                             config.spacing_mm, order=1), config.plane)
    lab = to_slices(resample(labels[touched], in_plane, config.spacing_mm, order=0), config.plane)
    img_t = fit_square(torch.from_numpy(np.ascontiguousarray(img))[:, None], config.image_size, "bilinear")
    lab_t = fit_square(torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))[:, None].float(),
                       config.image_size, "nearest-exact").long()[:, 0]
    masks = torch.stack([lab_t == i + 1 for i in range(len(config.organs))], 1)
    return img_t, masks


def fine_tune_mosnet(model, images: torch.Tensor, masks: torch.Tensor, annotated: torch.Tensor,
                     conditions: torch.Tensor, beta: torch.Tensor, settings: FineTuneSettings,
                     progress: Callable[[dict], None] | None = None,
                     should_stop: Callable[[], bool] = lambda: False):
    """A fine-tuned copy of a MOSnet on slices (N, 1, S, S) with organ masks (N, M, S, S), each with
    its α (N, M) and condition code (N,): corrections (every organ annotated) and, when given,
    replayed slices of the original datasets (their own α)."""
    from .losses import mosnet_loss

    device = next(model.parameters()).device
    tuned = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last).train()
    rng = np.random.default_rng(settings.seed)

    def batch_loss() -> torch.Tensor:
        idx = torch.from_numpy(rng.integers(0, len(images), settings.batch_size))
        x, y = images[idx].float().to(device), masks[idx].to(device)
        if rng.random() < 0.5:  # left-right flips: mice lie either way up in the scanner bed
            x, y = x.flip(-1), y.flip(-1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, recon = tuned(x.contiguous(memory_format=torch.channels_last), conditions[idx].to(device))
        return mosnet_loss(logits.float(), y, annotated[idx].to(device), beta.to(device), recon, x)[0]

    return _steps(tuned, batch_loss, settings, progress, should_stop)


def ct_dice(model, images: torch.Tensor, masks: torch.Tensor, condition: int) -> float:
    """Mean Dice over the organs present in ``masks`` (slice space), labels as predict_volume makes them."""
    from ..inference.ct import vote

    config = model.config
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        logits = model.segment(images.float().to(device), torch.full((len(images),), condition, device=device),
                               config.borrowed_organs(config.conditions[condition]))
    labels = vote(logits.float().cpu(), torch.logit(torch.tensor(config.organ_thresholds())))
    scores = []
    for i in range(masks.shape[1]):
        truth = masks[:, i]
        if truth.any():
            pred = labels == i + 1
            scores.append(float(2 * (pred & truth).sum() / (pred.sum() + truth.sum())))
    return float(np.mean(scores)) if scores else float("nan")
