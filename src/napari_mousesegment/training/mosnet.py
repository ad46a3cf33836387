"""Joint MOSnet training over partially annotated datasets, durable and resumable.

Each sample's dataset sets its condition code and its α (which organs count). Every epoch writes
a checkpoint; the best epoch's weights (by mean validation Dice) are the model folder's weights.
``--resume`` continues from the last checkpoint after a crash or a ``--max-minutes`` stop. The
epochs themselves run in :func:`.loop.fit`.

The learning rate follows the budget the user gave (:class:`.schedule.BudgetSchedule`): a short
linear warm-up, then a cosine down to a floor, over ``--epochs`` x batches steps or
``--max-minutes``, whichever ends first, so a 12-minute run anneals within its 12 minutes. MOSnet
has no early stopping: every run spends its whole budget, and the best epoch is kept.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..data.ct_dataset import CTDataset, read_ct_dataset
from ..metrics import dice_from_counts
from ..models.folder import WEIGHTS, load_folder, update_config
from ..models.mosnet import MOSnet, MOSnetConfig, annotated_by_condition, count_parameters
from . import distributed
from .appearance import Swap, appearance_shifts, describe, swap_appearance
from .augment import AugmentSettings, augment, jitter_positions
from .checkpoint import TrainingError, last_done, load_checkpoint, prepare_run, record_epoch
from .distributed import Ranks
from .loop import Step, autocast, fit
from .losses import RECON_WEIGHT, mosnet_loss, organ_weights
from .schedule import BudgetSchedule, total_steps
from .slices import SliceSet, build_slices, organ_balanced_weights, split_by_scan
from .thresholds import TOLERANCE, choose_thresholds


SAMPLINGS = ("uniform", "organs")


@dataclass
class TrainSettings:
    """The recipe; defaults are the paper's (Adam 1e-3, 100 epochs, batch 16, 9:1 split by scan)."""

    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    val_fraction: float = 0.1
    recon_weight: float = RECON_WEIGHT
    #: weight of a soft Dice term added to the paper's loss (0: the paper's loss alone)
    dice_weight: float = 0.0
    #: weight of the exclusion loss (:func:`.losses.exclusion_loss`; 0: none, the paper's loss)
    exclusion_weight: float = 0.0
    #: probability that a slice of a condition lending organs to another gets that condition's look
    #: (:mod:`.appearance`; 0: never, the paper's training)
    appearance_swap: float = 0.0
    #: how far below an organ's best validation vote Dice its label threshold may score, to be
    #: lower (:data:`.thresholds.TOLERANCE`; 0: the best)
    threshold_tolerance: float = TOLERANCE
    max_minutes: float | None = None
    device: str = "auto"
    seed: int = 0
    slice_stride: int = 1  #: use every n-th slice (neighbouring slices are nearly identical)
    resume: bool = False
    #: "uniform": every slice once per epoch; "organs": half the draws organ by organ, so small
    #: organs are seen as often as big ones (:func:`.slices.organ_balanced_weights`)
    sampling: str = "uniform"
    #: slice augmentation (the paper used none; measured in docs/results-mosnet.md)
    augment: AugmentSettings = field(default_factory=AugmentSettings.for_ct)

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")


class MOSnetSchedule(BudgetSchedule):
    """The budget schedule, which also resumes checkpoints of the former per-epoch cosine."""

    def __init__(self, optimizer: torch.optim.Optimizer, batches_per_epoch: int, **budget) -> None:
        self.batches_per_epoch = batches_per_epoch
        super().__init__(optimizer, **budget)

    def load_state_dict(self, state: dict) -> None:
        if "steps" not in state and "last_epoch" in state:  # a LambdaLR's state: epochs done, no clock
            state = {"steps": int(state["last_epoch"]) * self.batches_per_epoch, "seconds": 0.0}
        super().load_state_dict(state)


def budget_schedule(optimizer: torch.optim.Optimizer, settings: TrainSettings, batches_per_epoch: int
                    ) -> MOSnetSchedule:
    """Warm-up and cosine over ``--epochs`` x batches steps, or ``--max-minutes`` when it ends first."""
    seconds = settings.max_minutes * 60 if settings.max_minutes else None
    return MOSnetSchedule(optimizer, batches_per_epoch, total_steps=total_steps(settings.epochs, batches_per_epoch),
                          total_seconds=seconds)


def _batches(n: int, batch_size: int) -> list[np.ndarray]:
    return [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _to_device(data: SliceSet, idx: np.ndarray, device: torch.device):
    """A batch (image, masks, annotated, condition) on the device; images channels-last, as the model."""
    index = torch.from_numpy(idx)
    image = data.images[index].to(device, non_blocking=True).float().contiguous(memory_format=torch.channels_last)
    return (image, data.organ_masks[index].to(device).float(), data.annotated[index].to(device),
            data.condition[index].to(device))


def batch_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...], beta: torch.Tensor,
               recon_weight: float, augmentation: AugmentSettings | None = None,
               generator: torch.Generator | None = None, dice_weight: float = 0.0,
               exclusion_weight: float = 0.0, swap: Swap | None = None, channels: int | None = None) -> Step:
    """MOSnet's loss (eqs. 6-9) of a batch from :func:`_to_device`, augmented first when asked.
    ``swap``: the appearance swap (:mod:`.appearance`), before augmentation. ``channels``: the
    image channels (``config.channels``); a position channel after them is jittered, not warped.
    The reconstruction target is the augmented slice, the one the network sees."""
    image, masks, annotated, condition = batch
    channels = image.shape[1] if channels is None else channels
    image, position = image[:, :channels], image[:, channels:]
    if swap is not None and swap.probability > 0:
        image = swap_appearance(image, masks, condition, swap, generator)
    # The position jitter alone is no reason to resample the slices (a model without the channel ignores it).
    if augmentation is not None and replace(augmentation, position=0.0) != AugmentSettings.off():
        image, masks = augment(image, masks, augmentation, generator)
    net_input = image
    if position.shape[1]:
        if augmentation is not None and augmentation.position:
            position = jitter_positions(position, augmentation.position, generator)
        net_input = torch.cat([image, position], 1)
    net_input = net_input.contiguous(memory_format=torch.channels_last)
    with autocast(image.device):
        logits, recon = model(net_input, condition)
    loss, parts = mosnet_loss(logits.float(), masks, annotated, beta, recon, image, recon_weight, dice_weight,
                              exclusion_weight)
    return Step(loss, len(image), parts)


def evaluate_slices(model: MOSnet, data: SliceSet, beta: torch.Tensor, settings: TrainSettings,
                    device: torch.device) -> dict[str, float]:
    """Validation loss and per-organ Dice over all validation slices (annotated organs only)."""
    model.eval()
    organs = model.config.organs
    inter = torch.zeros(len(organs), dtype=torch.float64)
    total = torch.zeros(len(organs), dtype=torch.float64)
    losses = []
    with torch.inference_mode():
        for idx in _batches(len(data.images), settings.batch_size * 2):
            image, masks, annotated, condition = _to_device(data, idx, device)
            with autocast(device):
                logits, recon = model(image, condition)
            loss, _ = mosnet_loss(logits.float(), masks, annotated, beta, recon, image[:, :model.config.channels],
                                  settings.recon_weight,
                                  settings.dice_weight, settings.exclusion_weight)
            losses.append(float(loss) * len(idx))
            pred = (logits.float() > 0).double()
            a = annotated.double()[:, :, None, None]
            inter += (pred * masks.double() * a).sum(dim=(0, 2, 3)).cpu()
            total += ((pred + masks.double()) * a).sum(dim=(0, 2, 3)).cpu()
    dice = {o: dice_from_counts(float(inter[i]), float(total[i])) if total[i] > 0 else float("nan")
            for i, o in enumerate(organs)}
    valid = [d for d in dice.values() if not math.isnan(d)]
    return {"val_loss": sum(losses) / len(data.images), "val_dice_mean": float(np.mean(valid)) if valid else 0.0,
            **{f"val_dice_{o}": d for o, d in dice.items()}}


@dataclass
class MOSnetRecipe:
    """MOSnet's epochs for :func:`.loop.fit`: shuffled slice batches, the best mean validation Dice
    kept as the model, a checkpoint (with the budget schedule's state) every epoch."""

    model: MOSnet
    net: torch.nn.Module  #: what trains: the model, or DDP around it under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: BudgetSchedule  #: stepped by :func:`.loop.fit` after every step; saved in each checkpoint
    train: SliceSet
    val: SliceSet
    beta: torch.Tensor
    settings: TrainSettings
    out: Path
    checkpoint_dir: Path
    ranks: Ranks
    device: torch.device
    best: float  #: the best mean validation Dice so far
    state: dict  #: what each checkpoint records besides the epoch, best score and history
    extra: dict  #: what the model's config.json records besides the config and metrics
    log: Callable[[str], None]
    parts: tuple[str, ...] = ("seg", "recon")

    generator: torch.Generator | None = None
    weights: np.ndarray | None = None  #: the training slices' sampling weights; None: a shuffle
    swap: Swap | None = None  #: the appearance swap (``settings.appearance_swap`` > 0)

    def __post_init__(self) -> None:
        if self.settings.dice_weight:
            self.parts = (*self.parts, "dice")
        if self.settings.exclusion_weight:
            self.parts = (*self.parts, "exclusion")
        if self.settings.sampling == "organs":
            self.weights = organ_balanced_weights(self.train)

    def begin_epoch(self, epoch: int, history: list[dict]) -> dict:
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.settings.seed * 100003 + epoch * 101 + self.ranks.rank)  # each rank its own
        return {}

    def batches(self, epoch: int) -> list[np.ndarray]:
        return distributed.epoch_batches(len(self.train.images), self.settings.batch_size, epoch, self.settings.seed,
                                         self.ranks, self.weights)

    def step(self, idx: np.ndarray) -> Step:
        return batch_loss(self.net, _to_device(self.train, idx, self.device), self.beta, self.settings.recon_weight,
                          self.settings.augment, self.generator, self.settings.dice_weight,
                          self.settings.exclusion_weight, self.swap, self.model.config.channels)

    def validate(self) -> dict[str, float]:
        return evaluate_slices(self.model, self.val, self.beta, self.settings, self.device)

    def end_epoch(self, row: dict, history: list[dict], stopped: str | None) -> None:
        improved = row["val_dice_mean"] > self.best
        if improved:
            self.best = row["val_dice_mean"]
        if self.ranks.main:
            record_epoch(self.out, self.checkpoint_dir, self.model, self.optimizer, self.scheduler, history,
                         {**self.state, "epoch": last_done(row), "best": self.best, "history": history},
                         f"MOSnet ({self.model.config.variant}, width {self.model.config.width})",
                         best=(self.model.config, {**self.extra, "metrics": row}) if improved else None)
        self.log(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
                 f"val Dice {row['val_dice_mean']:.3f}{' (best)' if improved else ''}, {row['seconds']:.0f} s")


def _split_slices(datasets: list[CTDataset], config: MOSnetConfig, settings: TrainSettings):
    """The scans split into training and validation (by scan, per dataset), and their slices."""
    all_scans = [f"{d.name}/{c}" for d in datasets for c in d.cases]
    train_ids, val_ids = split_by_scan(all_scans, settings.val_fraction, settings.seed)

    def cases_of(ids: set[str]) -> dict[str, list[str]]:
        return {str(d.root): [c for c in d.cases if f"{d.name}/{c}" in ids] for d in datasets}

    train = build_slices(datasets, config, cases_of(set(train_ids)), settings.slice_stride)
    val = build_slices(datasets, config, cases_of(set(val_ids)), settings.slice_stride)
    return train_ids, val_ids, train, val


def _beta(train: SliceSet, config: MOSnetConfig) -> torch.Tensor:
    """β (eq. 7) from how often each organ is labelled where it is annotated."""
    ann = train.annotated.float()
    per_slice = train.organ_masks.sum(dim=(2, 3), dtype=torch.float32) / float(config.image_size**2)
    pos = (per_slice * ann).sum(0) / ann.sum(0).clamp(min=1)
    return torch.from_numpy(organ_weights(pos.numpy()))


def train_mosnet(
    data_dirs: list[str | os.PathLike],
    out: str | os.PathLike,
    config: MOSnetConfig,
    settings: TrainSettings,
    log: Callable[[str], None] = print,
    should_stop: Callable[[], bool] = lambda: False,
    progress: bool = True,
) -> dict:
    """Train jointly on the dataset folders and write the model folder ``out``; returns a summary.

    Under ``torchrun`` the processes train one DDP model together (see :mod:`.distributed`).
    """
    out = Path(out)
    datasets = [read_ct_dataset(d) for d in data_dirs]
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must differ, got {names}")
    ranks, device = distributed.start(settings.device)
    if not ranks.main:  # rank 0 alone logs and writes
        log, progress = (lambda _: None), False
    # The checkpoint's config is the architecture asked for. Which organs each condition annotates
    # follows from the datasets (the split check compares those on resume), and the thresholds from
    # the best weights: both are recorded in the model folder alone, so older checkpoints resume.
    # A 2D run's config is written without the 2.5D fields, as before they existed, so its older
    # checkpoints resume; a 2.5D checkpoint never resumes as 2D, nor the other way round.
    derived = (("annotated", "thresholds") + (("context", "context_step") if not config.context else ())
               + (("position",) if not config.position else ()))
    asked = json.dumps({k: v for k, v in asdict(config).items() if k not in derived}, indent=2)
    checkpoint_dir = prepare_run(out, asked, settings.resume) if ranks.main else out / "checkpoint"
    config = replace(config, annotated=annotated_by_condition(
        [{"condition": d.condition, "organs": [o for o in d.organs if o in config.organs]} for d in datasets]))
    distributed.barrier(ranks)
    torch.manual_seed(settings.seed)
    log(f"reading {sum(len(d.cases) for d in datasets)} scans from {len(datasets)} dataset(s)")
    train_ids, val_ids, train, val = _split_slices(datasets, config, settings)
    beta = _beta(train, config).to(device)
    log(f"{len(train.images)} training slices from {len(train_ids)} scans, {len(val.images)} validation slices "
        f"from {len(val_ids)} scans; device {device}"
        + (f"; {ranks.world} processes, {settings.batch_size} slices each per step" if ranks.distributed else ""))

    # Channels-last on every device: oneDNN's and cuDNN's fastest convolution layout (1.6x on a CPU).
    model = MOSnet(config).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    per_epoch = len(distributed.epoch_batches(len(train.images), settings.batch_size, 0, settings.seed, ranks))
    scheduler = budget_schedule(optimizer, settings, per_epoch)
    history: list[dict] = []
    start_epoch, best = 0, -1.0
    state = load_checkpoint(checkpoint_dir, model, optimizer, scheduler, device) if settings.resume else None
    if state is not None:
        if settings.max_minutes:  # this run's minutes come on top of those spent: the rate ends with the run
            scheduler.run_for(settings.max_minutes * 60)
        scheduler.load_state_dict(scheduler.state_dict())  # this run's --lr at the restored progress
        if (state.get("train_scans"), state.get("val_scans")) != (train_ids, val_ids):
            raise TrainingError(f"{checkpoint_dir}: the train/validation split differs from the checkpoint's "
                                "(other datasets, --seed or --val-fraction); resume with the same ones")
        start_epoch, best = state["epoch"] + 1, state["best"]
        history = [row for row in state["history"] if row["epoch"] <= state["epoch"] + 1 and row["complete"]]
        log(f"resumed after epoch {start_epoch} (best mean Dice {best:.3f})")
    distributed.same_as_main(start_epoch, "the checkpoint's epoch", ranks)
    net = distributed.wrap(model, ranks, device)
    extra = {
        "training": {"datasets": [{"name": d.name, "condition": d.condition, "organs": sorted(d.organs),
                                   "scans": len(d.cases)} for d in datasets],
                     "train_scans": train_ids, "val_scans": val_ids, "beta": [round(float(b), 3) for b in beta],
                     "settings": {k: v for k, v in asdict(settings).items() if k != "resume"},
                     "parameters": count_parameters(model)},
    }
    recipe = MOSnetRecipe(model, net, optimizer, scheduler, train, val, beta, settings, out, checkpoint_dir, ranks,
                          device, best, {"train_scans": train_ids, "val_scans": val_ids}, extra, log)
    if settings.appearance_swap:
        shifts = appearance_shifts(train, config, settings.seed)
        recipe.swap = Swap(shifts.to(device), settings.appearance_swap)
        lines = describe(shifts, config)
        extra["training"]["appearance_shifts_hu"] = lines
        log("appearance swap: " + ("; ".join(lines) if lines else "no condition lends an organ that looks different "
                                   "in the one borrowing it; nothing to swap"))
    log(f"learning rate {settings.lr:g}: warm-up, then cosine to {scheduler.floor:g}x over {scheduler.total_steps} "
        f"steps" + (f" or {settings.max_minutes:g} minutes, whichever ends first" if settings.max_minutes else ""))
    run = fit(net, optimizer, recipe, epochs=settings.epochs, start_epoch=start_epoch, history=history, ranks=ranks,
              where=str(out), should_stop=should_stop, max_minutes=settings.max_minutes, bar=progress,
              schedule=scheduler)
    if run.stopped:
        log(f"stopped: {run.stopped}; the best weights so far are kept in {out}")
    if ranks.main and len(val.images) and (out / WEIGHTS).is_file():
        chosen, before, after = choose_thresholds(load_folder(out, device, "mosnet")[0], val, device,
                                                  tolerance=settings.threshold_tolerance)
        update_config(out, {"thresholds": chosen})
        log(f"label thresholds chosen on the validation scans: their vote's mean Dice {before:.3f} at 0.5, "
            f"{after:.3f} with them")
    distributed.barrier(ranks)  # every rank returns once rank 0's files are written
    return {"out": str(out), "best_val_dice": recipe.best, "epochs_run": len(run.history), "stopped": run.stopped}
