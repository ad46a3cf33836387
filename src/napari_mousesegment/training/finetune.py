"""Fine-tuning a trained model on a few corrections (a retraining round), through :func:`.loop.fit`.

A round is short and gentle: few epochs of a few steps at a low learning rate, with replay of the
model's original data when it is given, so the model adapts to the lab's data without forgetting.
The rate warms up, then anneals along a cosine over the round's steps (:class:`.schedule.BudgetSchedule`),
so a round ends at a low rate whatever its length. A U-Net trains at its working scale
(``frame_size``), as it predicts. The original model is left untouched; a fine-tuned copy is returned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..inference.ct import vote
from ..metrics import dice
from ..models.mosnet import MOSnet
from ..models.unet import UNet
from .augment import AugmentSettings, augment
from .loop import Step, autocast, fit
from .losses import dice_bce_loss, mosnet_loss
from .schedule import BudgetSchedule, total_steps
from .unet import crops, working_pair


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
    anneal: bool = True  #: warm-up, then cosine decay over the round's steps; False: ``lr`` throughout
    warmup: float = 0.05  #: share of the round's steps spent warming up, when annealing

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1:
            raise ValueError("epochs, steps per epoch and batch size must be at least 1")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"the warm-up must be a share of the round in [0, 1), got {self.warmup}")
        if not 0.0 <= self.replay_fraction < 1.0:
            raise ValueError(f"the replay fraction must lie in [0, 1), got {self.replay_fraction}")


@dataclass
class _Round:
    """A fine-tuning round's epochs for :func:`.loop.fit`: ``steps_per_epoch`` batches from ``loss``."""

    loss: Callable[[], Step]
    steps: int
    parts: tuple[str, ...] = ()

    def begin_epoch(self, epoch: int, history: list[dict]) -> dict:
        return {}

    def batches(self, epoch: int) -> Sequence[int]:
        return range(self.steps)

    def step(self, _: int) -> Step:
        return self.loss()

    def validate(self) -> dict[str, float]:
        return {}  # a round is scored on its held-out corrections after training

    def end_epoch(self, row: dict, history: list[dict], stopped: str | None) -> None:
        pass


def _run(model: torch.nn.Module, make_loss: Callable[[torch.nn.Module], Callable[[], Step]],
         settings: FineTuneSettings, progress: Callable[[dict], None] | None,
         should_stop: Callable[[], bool]) -> torch.nn.Module:
    """Fine-tune a channels-last copy of ``model``; a cancel raises InterruptedError (nothing is kept).

    Dropout draws from torch's own generator, seeded here from ``settings.seed`` (and restored
    after), so a round on the same corrections gives the same version.
    """
    device = next(model.parameters()).device
    tuned = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(tuned.parameters(), lr=settings.lr)
    schedule = (BudgetSchedule(optimizer, total_steps=total_steps(settings.epochs, settings.steps_per_epoch),
                               warmup=settings.warmup) if settings.anneal else None)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        run = fit(tuned, optimizer, _Round(make_loss(tuned), settings.steps_per_epoch), epochs=settings.epochs,
                  where="fine-tuning", should_stop=should_stop, progress=progress, schedule=schedule)
    if run.stopped:
        raise InterruptedError("retraining cancelled")
    return tuned.eval()


def fine_tune_unet(model: UNet, frames: np.ndarray, masks: np.ndarray, settings: FineTuneSettings,
                   replay: tuple[np.ndarray, np.ndarray] | None = None,
                   progress: Callable[[dict], None] | None = None,
                   should_stop: Callable[[], bool] = lambda: False) -> UNet:
    """A fine-tuned copy of ``model`` (the original is left untouched).

    ``frames`` and ``masks`` are the corrected (n, H, W) frames and their organ masks; ``replay``
    the same for a sample of the original training data. Both are resized to the model's working
    scale (its ``frame_size``) before crops are cut, as
    ``train unet`` and prediction see frames. ``progress`` gets one dict per epoch (epoch, epochs,
    loss, eta_s); ``should_stop`` is checked between steps.
    """
    if len(frames) == 0:
        raise ValueError("no corrected frames to learn from")
    device = next(model.parameters()).device
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(settings.seed)
    own_f, own_m = working_pair(frames, masks, model.config.frame_size)
    if replay is not None and len(replay[0]):
        old_f, old_m = working_pair(*replay, model.config.frame_size)
    else:
        old_f = old_m = None
    n_old = round(settings.batch_size * settings.replay_fraction) if old_f is not None else 0
    size = model.config.image_size
    multiple = 2 ** (model.config.levels - 1) if model.config.frame_size else None  # as train unet crops

    def make_loss(tuned: torch.nn.Module) -> Callable[[], Step]:
        def batch_loss() -> Step:
            f, m = crops(own_f, own_m, rng.integers(0, len(own_f), settings.batch_size - n_old), size, rng,
                         multiple=multiple)
            if n_old:
                rf, rm = crops(old_f, old_m, rng.integers(0, len(old_f), n_old), size, rng, multiple=multiple)
                f, m = torch.cat([f, rf]), torch.cat([m, rm])
            f, m = augment(f.to(device), m.to(device), settings.augment, generator)
            with autocast(device):
                logits = tuned(f.contiguous(memory_format=torch.channels_last))
            return Step(dice_bce_loss(logits.float(), m), len(f))
        return batch_loss

    return _run(model, make_loss, settings, progress, should_stop)


def fine_tune_mosnet(model: MOSnet, images: torch.Tensor, masks: torch.Tensor, annotated: torch.Tensor,
                     conditions: torch.Tensor, beta: torch.Tensor, settings: FineTuneSettings,
                     progress: Callable[[dict], None] | None = None,
                     should_stop: Callable[[], bool] = lambda: False, dice_weight: float = 0.0,
                     exclusion_weight: float = 0.0) -> MOSnet:
    """A fine-tuned copy of a MOSnet on slices (N, 1, S, S) with organ masks (N, M, S, S), each with
    its α (N, M) and condition code (N,): corrections (every organ annotated) and, when given,
    replayed slices of the original datasets (their own α). ``dice_weight``, ``exclusion_weight``: the
    soft Dice and exclusion terms of :func:`.losses.mosnet_loss`; rounds pass the weights the model
    was trained with (the exclusion term acts on the replayed slices, whose datasets label some organs)."""
    device = next(model.parameters()).device
    rng = np.random.default_rng(settings.seed)

    def make_loss(tuned: torch.nn.Module) -> Callable[[], Step]:
        def batch_loss() -> Step:
            idx = torch.from_numpy(rng.integers(0, len(images), settings.batch_size))
            x, y = images[idx].float().to(device), masks[idx].to(device)
            if rng.random() < 0.5:  # left-right flips: mice lie either way up in the scanner bed
                x, y = x.flip(-1), y.flip(-1)
            with autocast(device):
                logits, recon = tuned(x.contiguous(memory_format=torch.channels_last), conditions[idx].to(device))
            loss, parts = mosnet_loss(logits.float(), y, annotated[idx].to(device), beta.to(device), recon,
                                      x[:, :model.config.channels],
                                      dice_weight=dice_weight, exclusion_weight=exclusion_weight)
            return Step(loss, len(x), parts)
        return batch_loss

    return _run(model, make_loss, settings, progress, should_stop)


def ct_labels(model: MOSnet, images: torch.Tensor, condition: int) -> torch.Tensor:
    """Organ labels (N, S, S) of slices (N, 1, S, S) in ``condition`` (its code), voted at the
    model's own thresholds as predict_volume labels them (1 = its first organ)."""
    config = model.config
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        logits = model.segment(images.float().to(device), torch.full((len(images),), condition, device=device),
                               config.borrowed_organs(config.conditions[condition]))
    return vote(logits.float().cpu(), torch.logit(torch.tensor(config.organ_thresholds())))


def organ_dice(labels: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean Dice over the organs present in ``masks`` (N, M, S, S) of the labels (N, S, S); NaN when none is."""
    scores = [dice((labels == i + 1).numpy(), masks[:, i].numpy()) for i in range(masks.shape[1]) if masks[:, i].any()]
    return float(np.mean(scores)) if scores else float("nan")


def ct_dice(model: MOSnet, images: torch.Tensor, masks: torch.Tensor, condition: int) -> float:
    """Mean Dice over the organs present in ``masks`` (slice space), labels as predict_volume makes them."""
    return organ_dice(ct_labels(model, images, condition), masks)
