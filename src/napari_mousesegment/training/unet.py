"""Training one ultrasound organ U-Net: defaults measured on real ultrasound, the report's recipe by flags.

The defaults come from measurement on real fetal ultrasound (HC18, see docs/results-ultrasound.md):
frames resized so their longer side is ``--image-size`` (the network sees whole organs), Adam at
1e-3 with a warm-up and a cosine decay that fit the budget given (``--epochs`` or
``--max-minutes``), and validation frames held out within the series when a study has fewer than
:data:`MIN_SERIES_FOR_SERIES_SPLIT` series. The report's literal recipe stays reachable by flags
(``--schedule plateau --lr 1e-4 --val-split series --frame-size 0 --threshold-rule f0.5``):
ReduceLROnPlateau (factor 0.1, patience 5), early stopping (patience 10), then a fine-tuning stage
at 1e-5. Either way the
loss is α·Dice + (1−α)·BCE on augmented crops; validation sees whole frames, and the probability
threshold is chosen on validation: the largest Dice by default, or for precision (``--threshold-rule
f0.5``, ``--precision-target``). The command's default width is 8: on a CPU without bf16 a
width-16 U-Net takes 3.3 times longer per step and, in 12 minutes, learns far less (measured in
docs/results-ultrasound.md). The epochs run in :func:`.loop.fit`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..data.us_dataset import USItem, load_us_items, split_series
from ..inference.ultrasound import batch_probabilities, to_unit, to_working_scale
from ..models.folder import WEIGHTS, read_config, save_model
from ..models.mosnet import count_parameters
from ..models.unet import UNet, UNetConfig
from . import distributed
from .augment import AugmentSettings, augment
from .checkpoint import TrainingError, last_done, load_checkpoint, prepare_run, record_epoch
from .distributed import Ranks
from .loop import Step, autocast, fit
from .losses import dice_bce_loss
from .schedule import BudgetSchedule, total_steps
from .thresholds import THRESHOLD_RULES, choose_threshold, pixel_scores


SCHEDULES = ("cosine", "plateau")
VAL_SPLITS = ("auto", "series", "frames")
#: with fewer series than this (after the test series), validation frames are drawn within each series:
#: holding out whole series would halve a small study's training data, or leave none
MIN_SERIES_FOR_SERIES_SPLIT = 6
DEFAULT_EPOCHS = 100  #: when neither --epochs nor --max-minutes is given
#: an epoch of a small study revisits its frames until it has this many steps: validation,
#: checkpoint and curves after every 7 steps of 56 frames took a third of a CPU budget
MIN_EPOCH_STEPS = 25


@dataclass
class UNetSettings:
    """Measured defaults; the report's recipe is ``schedule="plateau", lr=1e-4, val_split="series",
    threshold_rule="f0.5"``."""

    epochs: int | None = None  #: None: the --max-minutes budget alone, or DEFAULT_EPOCHS without one
    batch_size: int = 8
    lr: float = 1e-3
    schedule: str = "cosine"  #: warm-up + cosine over the budget, or the report's plateau drops
    warmup: float = 0.05  #: fraction of the budget spent warming up (cosine)
    val_split: str = "auto"  #: "series", "frames", or "auto" (frames below MIN_SERIES_FOR_SERIES_SPLIT)
    alpha: float = 0.5  #: weight of the Dice term
    plateau_patience: int = 5
    plateau_factor: float = 0.1
    early_stop: int = 10
    finetune_epochs: int = 10
    finetune_lr: float = 1e-5
    threshold_rule: str = "dice"  #: "dice": the largest validation Dice; "f0.5": precision first
    precision_target: float | None = None  #: overrides the rule: the lowest threshold reaching this precision
    test_series: int = 5
    val_fraction: float = 0.2
    max_minutes: float | None = None
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    augment: AugmentSettings = field(default_factory=AugmentSettings)

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha weighs Dice against BCE and must lie in [0, 1], got {self.alpha}")
        if not 0.0 < self.plateau_factor < 1.0:
            raise ValueError(f"the plateau factor must lie between 0 and 1, got {self.plateau_factor}")
        for name in ("lr", "finetune_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold_rule must be one of {', '.join(THRESHOLD_RULES)}, got {self.threshold_rule!r}")
        if self.val_split not in VAL_SPLITS:
            raise ValueError(f"val_split must be one of {', '.join(VAL_SPLITS)}, got {self.val_split!r}")

    @property
    def total_epochs(self) -> int:
        """Epochs of the main stage: as given, else unbounded under a time budget, else DEFAULT_EPOCHS."""
        if self.epochs is not None:
            return self.epochs
        return 1_000_000 if self.max_minutes else DEFAULT_EPOCHS


def working_pair(frames: np.ndarray, masks: np.ndarray, frame_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, h, w) [0, 1] frames and {0, 1} masks at the model's working scale, from (N, H, W) frames and labels."""
    f = to_working_scale(torch.from_numpy(to_unit(frames))[:, None], frame_size)
    m = to_working_scale(torch.from_numpy((np.asarray(masks) > 0).astype(np.float32))[:, None], frame_size, masks=True)
    return f.contiguous(), (m > 0.5).float()


def _stack(items: list[USItem], organ: str, split: str,
           frame_size: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One split's frames and masks (at the working scale), and its series' names."""
    chosen = [i for i in items if i.split == split]
    if not chosen:
        return torch.empty(0), torch.empty(0), []
    pairs = [working_pair(i.frames, i.labels[organ], frame_size) for i in chosen]
    shapes = {tuple(f.shape[-2:]) for f, _ in pairs}
    if len(shapes) > 1:  # series of different frame sizes: pad to the largest (crops see the real pixels)
        h, w = max(s[0] for s in shapes), max(s[1] for s in shapes)
        pairs = [tuple(F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2])) for t in pair) for pair in pairs]
    return torch.cat([f for f, _ in pairs]), torch.cat([m for _, m in pairs]), [i.name for i in chosen]


def assign_validation(items: list[USItem], mode: str, fraction: float, seed: int,
                      log: Callable[[str], None] = lambda _: None) -> tuple[list[USItem], dict[str, list[int]]]:
    """Items with a validation split: the dataset's own, whole series, or frames within each series.

    ``mode`` "auto" keeps a dataset folder's validation series, holds out whole series when there
    are at least :data:`MIN_SERIES_FOR_SERIES_SPLIT`, and frames within each series otherwise
    (one annotated series is enough). Returns the items and, for a frame split, the validation
    frame indices of each series.
    """
    pool = [i for i in items if i.split != "test"]
    has_val = any(i.split == "val" for i in pool)
    if mode == "auto":
        mode = "keep" if has_val else ("series" if len(pool) >= MIN_SERIES_FOR_SERIES_SPLIT else "frames")
    if mode in ("keep", "series") and has_val:
        return items, {}
    if mode == "series":
        chosen = split_series([i.name for i in pool], test=0, val_fraction=fraction or 0.2, seed=seed)
        return [replace(i, split=chosen.get(i.name, i.split)) if i.split != "test" else i for i in items], {}
    rng = np.random.default_rng(seed)
    out, held = [i for i in items if i.split == "test"], {}
    for item in pool:
        n = len(item.frames)
        k = min(max(1, round(n * (fraction or 0.2))), n - 1) if n > 1 else 0
        val = np.sort(rng.choice(n, k, replace=False)) if k else np.array([], int)
        train = np.setdiff1d(np.arange(n), val)
        out.append(replace(item, split="train", frames=item.frames[train],
                           labels={o: lab[train] for o, lab in item.labels.items()}))
        if k:
            out.append(replace(item, split="val", frames=item.frames[val],
                               labels={o: lab[val] for o, lab in item.labels.items()}))
            held[item.name] = val.tolist()
    if not held:
        raise ValueError("need at least 2 annotated frames to hold one out for validation")
    log(f"validation: {sum(map(len, held.values()))} frames held out within {len(held)} series "
        f"(fewer than {MIN_SERIES_FOR_SERIES_SPLIT} series: whole series held out would halve the training data)")
    return out, held


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def crops(frames: torch.Tensor, masks: torch.Tensor, idx: np.ndarray, size: int, rng: np.random.Generator,
          foreground: float = 0.5, multiple: int | None = None):
    """Random size x size crops (whole frames padded when smaller), one per index.

    With ``multiple``, a frame side shorter than ``size`` is padded only to the next multiple of it,
    not to ``size``: whole small frames train without wasted padding.

    With probability ``foreground`` a crop is centred near an organ pixel of its frame, when the
    frame has one, so that small organs are seen often enough (as nnU-Net oversamples them).
    """
    h, w = frames.shape[-2:]
    sh, sw = (size, size) if multiple is None else (min(size, _round_up(h, multiple)), min(size, _round_up(w, multiple)))
    out_f, out_m = [], []
    for i in idx:
        y = int(rng.integers(0, max(h - sh, 0) + 1))
        x = int(rng.integers(0, max(w - sw, 0) + 1))
        if rng.random() < foreground:
            on = torch.nonzero(masks[i, 0])
            if len(on):
                cy, cx = on[int(rng.integers(len(on)))].tolist()
                y = int(np.clip(cy - sh // 2 + rng.integers(-sh // 4, sh // 4 + 1), 0, max(h - sh, 0)))
                x = int(np.clip(cx - sw // 2 + rng.integers(-sw // 4, sw // 4 + 1), 0, max(w - sw, 0)))
        f, m = frames[i, :, y:y + sh, x:x + sw], masks[i, :, y:y + sh, x:x + sw]
        pad = (0, sw - f.shape[-1], 0, sh - f.shape[-2])
        out_f.append(F.pad(f, pad))
        out_m.append(F.pad(m, pad))
    return torch.stack(out_f), torch.stack(out_m)


def batch_loss(model: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5) -> Step:
    """α·Dice + (1−α)·BCE of a batch of (B, 1, S, S) crops on the model's device."""
    with autocast(image.device):
        logits = model(image.contiguous(memory_format=torch.channels_last))
    return Step(dice_bce_loss(logits.float(), mask, alpha), len(image))


def _probabilities(model: UNet, frames: torch.Tensor, device: torch.device, batch: int = 8) -> torch.Tensor:
    model.eval()
    return torch.cat([batch_probabilities(model, frames[s:s + batch].to(device)) for s in range(0, len(frames), batch)])


def _validate(model: UNet, frames: torch.Tensor, masks: torch.Tensor, device: torch.device,
              alpha: float) -> dict[str, float]:
    """Validation loss and pixel Dice, precision and recall at 0.5."""
    prob = _probabilities(model, frames, device)
    val_loss = float(dice_bce_loss(torch.logit(prob.clamp(1e-6, 1 - 1e-6)), masks, alpha))
    return {"val_loss": val_loss, **pixel_scores(prob, masks, 0.5)}


@dataclass
class UNetRecipe:
    """A U-Net's epochs for :func:`.loop.fit`: augmented crops, the plateau schedule, early stopping,
    then the fine-tuning stage from the best weights; the best validation Dice kept as the model."""

    model: UNet
    net: torch.nn.Module  #: what trains: the model, or DDP around it under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_f: torch.Tensor
    train_m: torch.Tensor
    val_f: torch.Tensor
    val_m: torch.Tensor
    settings: UNetSettings
    out: Path
    checkpoint_dir: Path
    ranks: Ranks
    device: torch.device
    best: float  #: the best validation Dice so far
    since_best: int  #: epochs without a better one
    state: dict  #: what each checkpoint records besides the epoch, scores and history
    extra: dict  #: what the model's config.json records besides the config and metrics
    log: Callable[[str], None]
    parts: tuple[str, ...] = ()
    rng: np.random.Generator | None = None
    generator: torch.Generator | None = None

    @property
    def organ(self) -> str:
        return self.model.config.organ

    def _finetuning(self, history: list[dict]) -> bool:
        return any(r["stage"] == "finetune" for r in history)

    @property
    def cosine(self) -> bool:
        return isinstance(self.scheduler, BudgetSchedule)

    def begin_epoch(self, epoch: int, history: list[dict]) -> dict | None:
        settings = self.settings
        if self.cosine:  # the schedule has its say in full: no early stop, no fine-tuning stage after it
            if epoch >= settings.total_epochs or self.scheduler.done:
                return None
            return self._seed_epoch(epoch, "train")
        finetune = self._finetuning(history)
        if not finetune and (epoch >= settings.total_epochs or self.since_best >= settings.early_stop):
            if self.since_best >= settings.early_stop:
                self.log(f"early stop: no better validation Dice for {self.since_best} epochs")
            self.log(f"fine-tuning the best weights at lr {settings.finetune_lr}")
            distributed.barrier(self.ranks)  # rank 0 has written them
            self.model.load_state_dict(best_weights(self.out, self.device))
            for group in self.optimizer.param_groups:
                group["lr"] = settings.finetune_lr
            finetune = True
        if finetune and sum(r["stage"] == "finetune" for r in history) >= settings.finetune_epochs:
            return None
        return self._seed_epoch(epoch, "finetune" if finetune else "train")

    def _seed_epoch(self, epoch: int, stage: str) -> dict:
        seed = self.settings.seed
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed * 100003 + epoch * 101 + self.ranks.rank)  # each rank its own
        self.rng = np.random.default_rng([seed, epoch, self.ranks.rank])
        return {"stage": stage}

    def batches(self, epoch: int) -> list[np.ndarray]:
        return epoch_batches(len(self.train_f), self.settings.batch_size, epoch, self.settings.seed, self.ranks)

    def step(self, idx: np.ndarray) -> Step:
        config = self.model.config
        image, mask = crops(self.train_f, self.train_m, idx, config.image_size, self.rng,
                            multiple=2 ** (config.levels - 1) if config.frame_size else None)
        image, mask = augment(image.to(self.device), mask.to(self.device), self.settings.augment, self.generator)
        return batch_loss(self.net, image, mask, self.settings.alpha)

    def validate(self) -> dict[str, float]:
        scores = _validate(self.model, self.val_f, self.val_m, self.device, self.settings.alpha)
        return {"val_loss": scores["val_loss"], f"val_dice_{self.organ}": scores["dice"],
                "val_precision": scores["precision"], "val_recall": scores["recall"]}

    def end_epoch(self, row: dict, history: list[dict], stopped: str | None) -> None:
        if row["stage"] == "train" and stopped is None and not self.cosine:
            self.scheduler.step(row["val_loss"])
        dice = row[f"val_dice_{self.organ}"]
        improved = dice > self.best
        if improved:
            self.best, self.since_best = dice, 0
        elif stopped is None:
            self.since_best += 1
        if self.ranks.main:
            config = self.model.config
            if improved:
                config.threshold = 0.5  # the threshold is chosen once training ends
            record_epoch(self.out, self.checkpoint_dir, self.model, self.optimizer, self.scheduler, history,
                         {**self.state, "epoch": last_done(row), "best": self.best, "since_best": self.since_best,
                          "history": history}, f"{self.organ} U-Net ({config.arch}, width {config.width})",
                         best=(config, {**self.extra, "metrics": row}) if improved else None)
        self.log(f"epoch {row['epoch']} ({row['stage']}): train loss {row['train_loss']:.4f}, "
                 f"val loss {row['val_loss']:.4f}, val Dice {dice:.3f}, precision {row['val_precision']:.3f}"
                 f"{' (best)' if improved else ''}, {row['seconds']:.0f} s")


def train_unet(data: list[str | os.PathLike], out: str | os.PathLike, config: UNetConfig, settings: UNetSettings,
               log: Callable[[str], None] = print, should_stop: Callable[[], bool] = lambda: False,
               progress: bool = True) -> dict:
    """Train ``config.organ``'s U-Net on the series in ``data`` and write the model folder ``out``."""
    out = Path(out)
    config = replace(config)  # the chosen threshold goes into this copy, not the caller's
    ranks, device = distributed.start(settings.device)
    if not ranks.main:  # rank 0 alone logs and writes
        log, progress = (lambda _: None), False
    checkpoint_dir = prepare_run(out, config.to_json(), settings.resume) if ranks.main else out / "checkpoint"
    distributed.barrier(ranks)
    torch.manual_seed(settings.seed)
    organ = config.organ
    if settings.val_split == "series":
        items = load_us_items(data, organ, settings.test_series, settings.val_fraction, settings.seed)
    else:  # lab series go to training or test; validation is assigned below
        items = load_us_items(data, organ, settings.test_series, 0.0, settings.seed)
    items, val_frames = assign_validation(items, settings.val_split, settings.val_fraction, settings.seed, log)
    train_f, train_m, train_names = _stack(items, organ, "train", config.frame_size)
    val_f, val_m, val_names = _stack(items, organ, "val", config.frame_size)
    if not train_names or not val_names:
        raise ValueError(f"need training and validation series annotated for {organ!r}; "
                         f"got {len(train_names)} and {len(val_names)}")
    scale = f" at {tuple(train_f.shape[-2:])} px" if config.frame_size else ""
    log(f"{organ}: {len(train_f)} training frames from {len(train_names)} series, {len(val_f)} validation "
        f"frames from {len(val_names)} series{scale}; device {device}"
        + (f"; {ranks.world} processes, {settings.batch_size} crops each per step" if ranks.distributed else ""))
    model = UNet(config).to(device).to(memory_format=torch.channels_last)  # oneDNN's/cuDNN's fastest layout
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = _scheduler(optimizer, settings, len(train_f), ranks)
    history: list[dict] = []
    start_epoch, best, since_best = 0, -1.0, 0
    state = load_checkpoint(checkpoint_dir, model, optimizer, scheduler, device) if settings.resume else None
    if state is not None:
        if (state["train_series"] != train_names or state["val_series"] != val_names
                or state.get("val_frames", {}) != val_frames):
            raise TrainingError(f"{checkpoint_dir}: the series split differs from the checkpoint's; "
                                "resume with the same --data, --seed and split settings")
        if isinstance(scheduler, BudgetSchedule) and settings.max_minutes:  # this run's minutes on top
            scheduler.run_for(settings.max_minutes * 60 * 0.97)
        start_epoch, best, since_best = state["epoch"] + 1, state["best"], state["since_best"]
        history = [row for row in state["history"] if row["complete"]]  # a cut epoch runs again
        log(f"resumed after epoch {start_epoch} (best validation Dice {best:.3f})")
    distributed.same_as_main(start_epoch, "the checkpoint's epoch", ranks)
    net = distributed.wrap(model, ranks, device)
    extra = {"training": {"organ": organ, "train_series": train_names, "val_series": val_names,
                          "val_frames": val_frames,
                          "test_series": sorted(i.name for i in items if i.split == "test"),
                          "settings": {k: (vars(v) if k == "augment" else v) for k, v in vars(settings).items()
                                       if k != "resume"},
                          "parameters": count_parameters(model)}}
    recipe = UNetRecipe(model, net, optimizer, scheduler, train_f, train_m, val_f, val_m, settings, out,
                        checkpoint_dir, ranks, device, best, since_best,
                        {"train_series": train_names, "val_series": val_names, "val_frames": val_frames}, extra, log)
    cosine = isinstance(scheduler, BudgetSchedule)
    epochs = settings.total_epochs + (0 if cosine else settings.finetune_epochs)
    run = fit(net, optimizer, recipe, epochs=epochs, start_epoch=start_epoch,
              history=history, ranks=ranks, where=str(out), should_stop=should_stop,
              max_minutes=settings.max_minutes, bar=progress, desc=f"{organ} epoch",
              schedule=scheduler if cosine else None)
    if run.stopped:
        log(f"stopped: {run.stopped}; the best weights so far are kept in {out}")
    distributed.barrier(ranks)  # rank 0's files are written
    final = distributed.from_main(partial(_finish, model, config, out, val_f, val_m, device, settings, log), ranks)
    return {"out": str(out), "best_val_dice": recipe.best, "epochs_run": len(run.history), "stopped": run.stopped,
            **final}


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, ranks: Ranks) -> list[np.ndarray]:
    """This rank's batches of an epoch: every frame once, or several times over for a small study
    so that an epoch has at least :data:`MIN_EPOCH_STEPS` steps."""
    repeats = max(1, -(-MIN_EPOCH_STEPS * batch_size * ranks.world // max(n, 1)))
    batches = distributed.epoch_batches(n * repeats, batch_size, epoch, seed, ranks)
    return [b % n for b in batches]


def _scheduler(optimizer: torch.optim.Optimizer, settings: UNetSettings, n_train: int, ranks: Ranks):
    """The cosine :class:`.schedule.BudgetSchedule` over the budget given, or the report's plateau drops."""
    if settings.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=settings.plateau_factor,
                                                          patience=settings.plateau_patience)
    per_epoch = len(epoch_batches(n_train, settings.batch_size, 0, settings.seed, ranks))
    timed_only = settings.epochs is None and settings.max_minutes
    steps = None if timed_only else total_steps(settings.total_epochs, per_epoch)
    seconds = settings.max_minutes * 60 * 0.97 if settings.max_minutes else None  # the floor before the stop
    return BudgetSchedule(optimizer, total_steps=steps, total_seconds=seconds, warmup=settings.warmup)


def _finish(model: UNet, config: UNetConfig, out: Path, frames: torch.Tensor, masks: torch.Tensor,
            device: torch.device, settings: UNetSettings, log: Callable[[str], None]) -> dict:
    """The threshold, chosen by the settings' rule with the best weights on the validation frames, saved."""
    model.load_state_dict(best_weights(out, device))
    threshold, chosen = choose_threshold(_probabilities(model, frames, device), masks, settings.precision_target,
                                         settings.threshold_rule)
    config.threshold = threshold
    saved = read_config(out)
    extra = {k: saved[k] for k in ("training", "metrics") if k in saved}
    save_model(out, model, config, {**extra, "threshold_choice": chosen})
    rule = (f"precision >= {settings.precision_target}" if settings.precision_target is not None
            else {"dice": "largest Dice", "f0.5": "largest F0.5"}[settings.threshold_rule])
    log(f"threshold {threshold} ({rule} on validation): Dice {chosen['dice']:.3f}, "
        f"precision {chosen['precision']:.3f}, recall {chosen['recall']:.3f}")
    return {"threshold": threshold, **{f"val_{k}": v for k, v in chosen.items()}}


def best_weights(out: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The state dict of the model folder's (best) weights, on ``device``."""
    from safetensors.torch import load_file

    return load_file(str(out / WEIGHTS), device=str(device))
