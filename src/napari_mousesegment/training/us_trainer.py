"""Training one ultrasound organ U-Net, with the report's recipe.

Adam at 1e-4, α·Dice + (1−α)·BCE, ReduceLROnPlateau (factor 0.1, patience 5), early stopping
(patience 10), batch 8, then a fine-tuning stage at 1e-5. Training sees random crops of whole
frames, augmented on the device; validation sees whole frames. The probability threshold is then
chosen on the validation series for precision (largest F0.5). Split by series, never by frame.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..data.us_dataset import USItem, load_us_items
from ..inference.ultrasound import batch_probabilities, to_unit
from ..metrics import segmentation_scores
from ..models.mosnet import count_parameters
from ..models.store import save_model
from ..models.unet import UNet, UNetConfig
from . import distributed
from .augment import AugmentSettings, augment
from .checkpoint import TrainingError, load_checkpoint, prepare_run, save_checkpoint, stop_reason
from .curves import plot_history, write_history
from .losses import dice_bce_loss


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


def _crops(frames: torch.Tensor, masks: torch.Tensor, idx: np.ndarray, size: int, rng: np.random.Generator,
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


def train_step(model: UNet, optimizer: torch.optim.Optimizer, image: torch.Tensor, mask: torch.Tensor,
               alpha: float, where: str) -> float:
    """One optimisation step on a batch of (B, 1, S, S) crops; returns the loss (bf16 autocast on CUDA)."""
    device = image.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(image.contiguous(memory_format=torch.channels_last))
    loss = dice_bce_loss(logits.float(), mask, alpha)
    if not torch.isfinite(loss):
        raise TrainingError(f"{where}: loss became {float(loss)}; lower --lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _probabilities(model: UNet, frames: torch.Tensor, device: torch.device, batch: int = 8) -> torch.Tensor:
    model.eval()
    return torch.cat([batch_probabilities(model, frames[s:s + batch].to(device)) for s in range(0, len(frames), batch)])


def _scores(prob: torch.Tensor, masks: torch.Tensor, threshold: float) -> dict[str, float]:
    """Pixel Dice, precision, recall (as :func:`segmentation_scores`) and F0.5 at one threshold."""
    pred, truth = prob > threshold, masks > 0.5
    counts = (int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum()))
    s = segmentation_scores(*counts, 0, 0, 0)
    precision, recall = s["precision"], s["recall"]
    f05 = 1.25 * precision * recall / (0.25 * precision + recall) if precision + recall else 0.0
    return {"dice": s["dice"], "precision": precision, "recall": recall, "f05": f05}


THRESHOLDS = (*np.round(np.arange(0.3, 0.96, 0.05), 2), 0.97, 0.98, 0.99)


def choose_threshold(prob: torch.Tensor, masks: torch.Tensor,
                     precision_target: float | None = None) -> tuple[float, dict[str, float]]:
    """The probability threshold for precision, chosen on validation frames.

    By default the one with the largest F0.5 (precision weighted over recall); with a
    ``precision_target``, the lowest threshold whose precision reaches it (the most recall at that
    precision), or the most precise one when none does.
    """
    scored = [_scores(prob, masks, float(t)) | {"threshold": float(t)} for t in THRESHOLDS]
    if masks.any():  # predicting nothing is not precise, it is empty
        scored = [s for s in scored if s["recall"] > 0] or scored[:1]
    if precision_target is None:
        best = max(scored, key=lambda s: s["f05"])
    else:
        reaching = [s for s in scored if s["precision"] >= precision_target]
        best = reaching[0] if reaching else max(scored, key=lambda s: s["precision"])
    return round(best["threshold"], 2), best


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
    total = settings.epochs + settings.finetune_epochs
    summary = {"training": {"organ": organ, "train_series": train_names, "val_series": val_names,
                            "test_series": sorted(i.name for i in items if i.split == "test"),
                            "settings": {k: (vars(v) if k == "augment" else v) for k, v in vars(settings).items()
                                         if k != "resume"},
                            "parameters": count_parameters(model)}}
    t_start = time.monotonic()
    stopped = None
    generator = torch.Generator(device=device)
    for epoch in range(start_epoch, total):
        finetune = any(r["stage"] == "finetune" for r in history)
        if not finetune and (epoch >= settings.epochs or since_best >= settings.early_stop):
            if since_best >= settings.early_stop:
                log(f"early stop: no better validation Dice for {since_best} epochs")
            log(f"fine-tuning the best weights at lr {settings.finetune_lr}")
            distributed.barrier(ranks)  # rank 0 has written them
            model.load_state_dict(_best_weights(out, device))
            for group in optimizer.param_groups:
                group["lr"] = settings.finetune_lr
            finetune = True
        if finetune and sum(r["stage"] == "finetune" for r in history) >= settings.finetune_epochs:
            break
        net.train()
        generator.manual_seed(settings.seed * 100003 + epoch * 101 + ranks.rank)  # each rank its own augmentations
        rng = np.random.default_rng([settings.seed, epoch, ranks.rank])
        order = distributed.epoch_order(len(train_f), epoch, settings.seed, ranks)
        batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
        bar = tqdm(batches, desc=f"{organ} epoch {epoch + 1}", disable=not progress, leave=False)
        t0, loss_sum, seen = time.monotonic(), 0.0, 0
        lr = optimizer.param_groups[0]["lr"]
        for idx in bar:
            image, mask = _crops(train_f, train_m, idx, config.image_size, rng)
            image, mask = augment(image.to(device), mask.to(device), settings.augment, generator)
            value = train_step(net, optimizer, image, mask, settings.alpha, f"{out}, epoch {epoch + 1}")
            loss_sum += value * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{value:.4f}")
            stopped = distributed.agree_stop(stop_reason(should_stop, t_start, settings.max_minutes), ranks)
            if stopped:
                break
        loss_sum, seen = distributed.sum_over_ranks([loss_sum, seen], ranks)
        scores = distributed.from_main(partial(_validate, model, val_f, val_m, device, settings.alpha), ranks)
        val_loss = scores["val_loss"]
        if not finetune and stopped is None:
            scheduler.step(val_loss)
        row = {"epoch": epoch + 1, "stage": "finetune" if finetune else "train", "train_loss": loss_sum / max(seen, 1),
               "val_loss": val_loss, f"val_dice_{organ}": scores["dice"], "val_precision": scores["precision"],
               "val_recall": scores["recall"], "lr": lr, "seconds": round(time.monotonic() - t0, 1),
               "complete": stopped is None}
        history.append(row)
        improved = scores["dice"] > best
        if improved:
            best, since_best = scores["dice"], 0
        elif stopped is None:
            since_best += 1
        if ranks.main:
            if improved:
                config.threshold = 0.5
                save_model(out, model, config, {**summary, "metrics": row})
            done = epoch if stopped is None else epoch - 1
            save_checkpoint(checkpoint_dir, model, optimizer, scheduler,
                            {"epoch": done, "best": best, "since_best": since_best, "history": history,
                             "train_series": train_names, "val_series": val_names})
            write_history(out / "history.csv", history)
            plot_history(out / "curves.png", history, f"{organ} U-Net ({config.arch}, width {config.width})")
        log(f"epoch {epoch + 1} ({row['stage']}): train loss {row['train_loss']:.4f}, val loss {val_loss:.4f}, "
            f"val Dice {scores['dice']:.3f}, precision {scores['precision']:.3f}{' (best)' if improved else ''}, "
            f"{row['seconds']:.0f} s")
        if stopped:
            log(f"stopped: {stopped}; the best weights so far are kept in {out}")
            break
    distributed.barrier(ranks)  # rank 0's files are written
    final = distributed.from_main(partial(_finish, model, config, out, val_f, val_m, device, settings, log), ranks)
    return {"out": str(out), "best_val_dice": best, "epochs_run": len(history), "stopped": stopped, **final}


def _validate(model: UNet, frames: torch.Tensor, masks: torch.Tensor, device: torch.device,
              alpha: float) -> dict[str, float]:
    """Validation loss and pixel Dice, precision and recall at 0.5."""
    prob = _probabilities(model, frames, device)
    val_loss = float(dice_bce_loss(torch.logit(prob.clamp(1e-6, 1 - 1e-6)), masks, alpha))
    return {"val_loss": val_loss, **_scores(prob, masks, 0.5)}


def _finish(model: UNet, config: UNetConfig, out: Path, frames: torch.Tensor, masks: torch.Tensor,
            device: torch.device, settings: UNetSettings, log: Callable[[str], None]) -> dict:
    """The threshold for precision, chosen with the best weights on the validation series, saved."""
    from ..models.store import read_config

    model.load_state_dict(_best_weights(out, device))
    threshold, chosen = choose_threshold(_probabilities(model, frames, device), masks, settings.precision_target)
    config.threshold = threshold
    saved = read_config(out)
    extra = {k: saved[k] for k in ("training", "metrics") if k in saved}
    save_model(out, model, config, {**extra, "threshold_choice": chosen})
    rule = "largest F0.5" if settings.precision_target is None else f"precision >= {settings.precision_target}"
    log(f"threshold {threshold} ({rule} on validation): Dice {chosen['dice']:.3f}, "
        f"precision {chosen['precision']:.3f}, recall {chosen['recall']:.3f}")
    return {"threshold": threshold, **{f"val_{k}": v for k, v in chosen.items()}}


def _best_weights(out: Path, device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "weights.safetensors"), device=str(device))
