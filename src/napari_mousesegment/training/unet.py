"""Training one ultrasound organ U-Net, with the report's recipe.

Adam at 1e-4, α·Dice + (1−α)·BCE, ReduceLROnPlateau (factor 0.1, patience 5), early stopping
(patience 10), batch 8, then a fine-tuning stage at 1e-5. Training sees random crops of whole
frames, augmented on the device; validation sees whole frames. The probability threshold is then
chosen on the validation series for precision (largest F0.5). Split by series, never by frame.
The epochs themselves run in :func:`.loop.fit`.
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

from ..data.us_dataset import USItem, load_us_items
from ..inference.ultrasound import batch_probabilities, to_unit
from ..models.folder import WEIGHTS, read_config, save_model
from ..models.mosnet import count_parameters
from ..models.unet import UNet, UNetConfig
from . import distributed
from .augment import AugmentSettings, augment
from .checkpoint import TrainingError, last_done, load_checkpoint, prepare_run, record_epoch
from .distributed import Ranks
from .loop import Step, autocast, fit
from .losses import dice_bce_loss
from .thresholds import choose_threshold, pixel_scores


@dataclass
class UNetSettings:
    """The report's recipe; every part can be changed."""

    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    alpha: float = 0.5  #: weight of the Dice term
    plateau_patience: int = 5
    plateau_factor: float = 0.1
    early_stop: int = 10
    finetune_epochs: int = 10
    finetune_lr: float = 1e-5
    precision_target: float | None = None  #: None: threshold by the largest F0.5
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


def _stack(items: list[USItem], organ: str, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    chosen = [i for i in items if i.split == split]
    if not chosen:
        return torch.empty(0), torch.empty(0), []
    frames = torch.from_numpy(np.concatenate([to_unit(i.frames) for i in chosen]))[:, None]
    masks = torch.from_numpy(np.concatenate([i.labels[organ] > 0 for i in chosen]).astype(np.float32))[:, None]
    return frames, masks, [i.name for i in chosen]


def crops(frames: torch.Tensor, masks: torch.Tensor, idx: np.ndarray, size: int, rng: np.random.Generator,
          foreground: float = 0.5):
    """Random size x size crops (whole frames padded when smaller), one per index.

    With probability ``foreground`` a crop is centred near an organ pixel of its frame, when the
    frame has one, so that small organs are seen often enough (as nnU-Net oversamples them).
    """
    h, w = frames.shape[-2:]
    out_f, out_m = [], []
    for i in idx:
        y = int(rng.integers(0, max(h - size, 0) + 1))
        x = int(rng.integers(0, max(w - size, 0) + 1))
        if rng.random() < foreground:
            on = torch.nonzero(masks[i, 0])
            if len(on):
                cy, cx = on[int(rng.integers(len(on)))].tolist()
                y = int(np.clip(cy - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0, max(h - size, 0)))
                x = int(np.clip(cx - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0, max(w - size, 0)))
        f, m = frames[i, :, y:y + size, x:x + size], masks[i, :, y:y + size, x:x + size]
        pad = (0, size - f.shape[-1], 0, size - f.shape[-2])
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

    def begin_epoch(self, epoch: int, history: list[dict]) -> dict | None:
        settings = self.settings
        finetune = self._finetuning(history)
        if not finetune and (epoch >= settings.epochs or self.since_best >= settings.early_stop):
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
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(settings.seed * 100003 + epoch * 101 + self.ranks.rank)  # each rank its own
        self.rng = np.random.default_rng([settings.seed, epoch, self.ranks.rank])
        return {"stage": "finetune" if finetune else "train"}

    def batches(self, epoch: int) -> list[np.ndarray]:
        return distributed.epoch_batches(len(self.train_f), self.settings.batch_size, epoch, self.settings.seed,
                                         self.ranks)

    def step(self, idx: np.ndarray) -> Step:
        image, mask = crops(self.train_f, self.train_m, idx, self.model.config.image_size, self.rng)
        image, mask = augment(image.to(self.device), mask.to(self.device), self.settings.augment, self.generator)
        return batch_loss(self.net, image, mask, self.settings.alpha)

    def validate(self) -> dict[str, float]:
        scores = _validate(self.model, self.val_f, self.val_m, self.device, self.settings.alpha)
        return {"val_loss": scores["val_loss"], f"val_dice_{self.organ}": scores["dice"],
                "val_precision": scores["precision"], "val_recall": scores["recall"]}

    def end_epoch(self, row: dict, history: list[dict], stopped: str | None) -> None:
        if row["stage"] == "train" and stopped is None:
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
    items = load_us_items(data, organ, settings.test_series, settings.val_fraction, settings.seed)
    train_f, train_m, train_names = _stack(items, organ, "train")
    val_f, val_m, val_names = _stack(items, organ, "val")
    if not train_names or not val_names:
        raise ValueError(f"need training and validation series annotated for {organ!r}; "
                         f"got {len(train_names)} and {len(val_names)}")
    log(f"{organ}: {len(train_f)} training frames from {len(train_names)} series, {len(val_f)} validation "
        f"frames from {len(val_names)} series; device {device}"
        + (f"; {ranks.world} processes, {settings.batch_size} crops each per step" if ranks.distributed else ""))
    model = UNet(config).to(device).to(memory_format=torch.channels_last)  # oneDNN's/cuDNN's fastest layout
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=settings.plateau_factor,
                                                           patience=settings.plateau_patience)
    history: list[dict] = []
    start_epoch, best, since_best = 0, -1.0, 0
    state = load_checkpoint(checkpoint_dir, model, optimizer, scheduler, device) if settings.resume else None
    if state is not None:
        if state["train_series"] != train_names or state["val_series"] != val_names:
            raise TrainingError(f"{checkpoint_dir}: the series split differs from the checkpoint's; "
                                "resume with the same --data, --seed and split settings")
        start_epoch, best, since_best = state["epoch"] + 1, state["best"], state["since_best"]
        history = [row for row in state["history"] if row["complete"]]  # a cut epoch runs again
        log(f"resumed after epoch {start_epoch} (best validation Dice {best:.3f})")
    distributed.same_as_main(start_epoch, "the checkpoint's epoch", ranks)
    net = distributed.wrap(model, ranks, device)
    extra = {"training": {"organ": organ, "train_series": train_names, "val_series": val_names,
                          "test_series": sorted(i.name for i in items if i.split == "test"),
                          "settings": {k: (vars(v) if k == "augment" else v) for k, v in vars(settings).items()
                                       if k != "resume"},
                          "parameters": count_parameters(model)}}
    recipe = UNetRecipe(model, net, optimizer, scheduler, train_f, train_m, val_f, val_m, settings, out,
                        checkpoint_dir, ranks, device, best, since_best,
                        {"train_series": train_names, "val_series": val_names}, extra, log)
    run = fit(net, optimizer, recipe, epochs=settings.epochs + settings.finetune_epochs, start_epoch=start_epoch,
              history=history, ranks=ranks, where=str(out), should_stop=should_stop,
              max_minutes=settings.max_minutes, bar=progress, desc=f"{organ} epoch")
    if run.stopped:
        log(f"stopped: {run.stopped}; the best weights so far are kept in {out}")
    distributed.barrier(ranks)  # rank 0's files are written
    final = distributed.from_main(partial(_finish, model, config, out, val_f, val_m, device, settings, log), ranks)
    return {"out": str(out), "best_val_dice": recipe.best, "epochs_run": len(run.history), "stopped": run.stopped,
            **final}


def _finish(model: UNet, config: UNetConfig, out: Path, frames: torch.Tensor, masks: torch.Tensor,
            device: torch.device, settings: UNetSettings, log: Callable[[str], None]) -> dict:
    """The threshold for precision, chosen with the best weights on the validation series, saved."""
    model.load_state_dict(best_weights(out, device))
    threshold, chosen = choose_threshold(_probabilities(model, frames, device), masks, settings.precision_target)
    config.threshold = threshold
    saved = read_config(out)
    extra = {k: saved[k] for k in ("training", "metrics") if k in saved}
    save_model(out, model, config, {**extra, "threshold_choice": chosen})
    rule = "largest F0.5" if settings.precision_target is None else f"precision >= {settings.precision_target}"
    log(f"threshold {threshold} ({rule} on validation): Dice {chosen['dice']:.3f}, "
        f"precision {chosen['precision']:.3f}, recall {chosen['recall']:.3f}")
    return {"threshold": threshold, **{f"val_{k}": v for k, v in chosen.items()}}


def best_weights(out: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The state dict of the model folder's (best) weights, on ``device``."""
    from safetensors.torch import load_file

    return load_file(str(out / WEIGHTS), device=str(device))
