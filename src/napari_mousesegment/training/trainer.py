"""Joint MOSnet training over partially annotated datasets, durable and resumable.

Each sample's dataset sets its condition code and its α (which organs count). Every epoch writes
a checkpoint; the best epoch's weights (by mean validation Dice) are the model folder's weights.
``--resume`` continues from the last checkpoint after a crash or a ``--max-minutes`` stop.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.mosnet import MOSnet, MOSnetConfig, annotated_by_condition, count_parameters
from ..models.store import WEIGHTS, load_mosnet, save_model, update_config
from . import distributed
from .checkpoint import TrainingError, load_checkpoint, prepare_run, save_checkpoint, stop_reason
from .ct_data import SliceSet, build_slices, read_ct_dataset, split_by_scan
from .curves import plot_history, write_history
from .losses import RECON_WEIGHT, mosnet_loss, organ_weights
from .thresholds import choose_thresholds


def cosine_factor(epoch: int, epochs: int) -> float:
    """Learning-rate factor of a cosine schedule over ``epochs``, in closed form.

    Closed form (not torch's recursive CosineAnnealingLR) so that a run resumed with more epochs
    follows the schedule of its new length instead of staying at the old end's zero.
    """
    return 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / max(epochs, 1)))


@dataclass
class TrainSettings:
    """The recipe; defaults are the paper's (Adam 1e-3, 100 epochs, batch 16, 9:1 split by scan)."""

    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    val_fraction: float = 0.1
    recon_weight: float = RECON_WEIGHT
    max_minutes: float | None = None
    device: str = "auto"
    seed: int = 0
    slice_stride: int = 1  #: use every n-th slice (neighbouring slices are nearly identical)
    resume: bool = False


def _batches(n: int, batch_size: int) -> list[np.ndarray]:
    return [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _to_device(data: SliceSet, idx: np.ndarray, device: torch.device):
    """A batch (image, masks, annotated, condition) on the device; images channels-last, as the model."""
    index = torch.from_numpy(idx)
    image = data.images[index].to(device, non_blocking=True).float().contiguous(memory_format=torch.channels_last)
    return (image, data.organ_masks[index].to(device).float(), data.annotated[index].to(device),
            data.condition[index].to(device))


def train_step(model: MOSnet, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...],
               beta: torch.Tensor, recon_weight: float, where: str) -> tuple[float, dict[str, float]]:
    """One optimisation step on a batch from :func:`_to_device`; returns the loss and its parts.

    bf16 autocast on CUDA. A loss that is not finite stops training with an error naming ``where``.
    """
    image, masks, annotated, condition = batch
    device = image.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits, recon = model(image, condition)
    loss, parts = mosnet_loss(logits.float(), masks, annotated, beta, recon, image, recon_weight)
    if not torch.isfinite(loss):
        raise TrainingError(f"{where}: loss became {float(loss)}; lower --lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), parts


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
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits, recon = model(image, condition)
            loss, _ = mosnet_loss(logits.float(), masks, annotated, beta, recon, image, settings.recon_weight)
            losses.append(float(loss) * len(idx))
            pred = (logits.float() > 0).double()
            a = annotated.double()[:, :, None, None]
            inter += (pred * masks.double() * a).sum(dim=(0, 2, 3)).cpu()
            total += ((pred + masks.double()) * a).sum(dim=(0, 2, 3)).cpu()
    dice = {o: float(2 * inter[i] / total[i]) if total[i] > 0 else float("nan") for i, o in enumerate(organs)}
    valid = [d for d in dice.values() if not math.isnan(d)]
    return {"val_loss": sum(losses) / len(data.images), "val_dice_mean": float(np.mean(valid)) if valid else 0.0,
            **{f"val_dice_{o}": d for o, d in dice.items()}}


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
    derived = ("annotated", "thresholds")
    asked = json.dumps({k: v for k, v in asdict(config).items() if k not in derived}, indent=2)
    checkpoint_dir = prepare_run(out, asked, settings.resume) if ranks.main else out / "checkpoint"
    config = replace(config, annotated=annotated_by_condition(
        [{"condition": d.condition, "organs": [o for o in d.organs if o in config.organs]} for d in datasets]))
    distributed.barrier(ranks)
    torch.manual_seed(settings.seed)
    log(f"reading {sum(len(d.cases) for d in datasets)} scans from {len(datasets)} dataset(s)")
    all_scans = [f"{d.name}/{c}" for d in datasets for c in d.cases]
    train_ids, val_ids = split_by_scan(all_scans, settings.val_fraction, settings.seed)

    def cases_of(ids: set[str]) -> dict[str, list[str]]:
        return {str(d.root): [c for c in d.cases if f"{d.name}/{c}" in ids] for d in datasets}

    train = build_slices(datasets, config, cases_of(set(train_ids)), settings.slice_stride)
    val = build_slices(datasets, config, cases_of(set(val_ids)), settings.slice_stride)
    ann = train.annotated.float()
    per_slice = train.organ_masks.sum(dim=(2, 3), dtype=torch.float32) / float(config.image_size**2)
    pos = (per_slice * ann).sum(0) / ann.sum(0).clamp(min=1)
    beta = torch.from_numpy(organ_weights(pos.numpy())).to(device)
    log(f"{len(train.images)} training slices from {len(train_ids)} scans, {len(val.images)} validation slices "
        f"from {len(val_ids)} scans; device {device}"
        + (f"; {ranks.world} processes, {settings.batch_size} slices each per step" if ranks.distributed else ""))

    # Channels-last on every device: oneDNN's and cuDNN's fastest convolution layout (1.6x on a CPU).
    model = MOSnet(config).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: cosine_factor(e, settings.epochs))
    history: list[dict] = []
    start_epoch, best = 0, -1.0
    state = load_checkpoint(checkpoint_dir, model, optimizer, scheduler, device) if settings.resume else None
    if state is not None:
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):  # this run's schedule length
            group["lr"] = base * cosine_factor(scheduler.last_epoch, settings.epochs)
        if (state.get("train_scans"), state.get("val_scans")) != (train_ids, val_ids):
            raise TrainingError(f"{checkpoint_dir}: the train/validation split differs from the checkpoint's "
                                "(other datasets, --seed or --val-fraction); resume with the same ones")
        start_epoch, best = state["epoch"] + 1, state["best"]
        history = [row for row in state["history"] if row["epoch"] <= state["epoch"] + 1 and row["complete"]]
        log(f"resumed after epoch {start_epoch} (best mean Dice {best:.3f})")
    distributed.same_as_main(start_epoch, "the checkpoint's epoch", ranks)
    net = distributed.wrap(model, ranks, device)

    t_start = time.monotonic()
    stopped = None
    summary_extra = {
        "training": {"datasets": [{"name": d.name, "condition": d.condition, "organs": sorted(d.organs),
                                   "scans": len(d.cases)} for d in datasets],
                     "train_scans": train_ids, "val_scans": val_ids, "beta": [round(float(b), 3) for b in beta],
                     "settings": {k: v for k, v in vars(settings).items() if k != "resume"},
                     "parameters": count_parameters(model)},
    }
    for epoch in range(start_epoch, settings.epochs):
        net.train()
        t0 = time.monotonic()
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trains with
        sums = {"loss": 0.0, "seg": 0.0, "recon": 0.0}
        order = distributed.epoch_order(len(train.images), epoch, settings.seed, ranks)
        batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{settings.epochs}", disable=not progress, leave=False)
        seen = 0
        for idx in bar:
            value, parts = train_step(net, optimizer, _to_device(train, idx, device), beta, settings.recon_weight,
                                      f"{out}, epoch {epoch + 1}")
            seen += len(idx)
            sums["loss"] += value * len(idx)
            for k, v in parts.items():
                sums[k] += v * len(idx)
            bar.set_postfix(loss=f"{value:.4f}")
            stopped = distributed.agree_stop(stop_reason(should_stop, t_start, settings.max_minutes), ranks)
            if stopped:
                break
        if stopped is None:
            scheduler.step()
        loss, seg, recon, seen = distributed.sum_over_ranks([sums["loss"], sums["seg"], sums["recon"], seen], ranks)
        scores = distributed.from_main(partial(evaluate_slices, model, val, beta, settings, device), ranks)
        row = {"epoch": epoch + 1, "train_loss": loss / seen, "train_seg": seg / seen, "train_recon": recon / seen,
               **scores, "lr": lr, "seconds": round(time.monotonic() - t0, 1), "complete": stopped is None}
        history.append(row)
        improved = row["val_dice_mean"] > best
        if improved:
            best = row["val_dice_mean"]
        if ranks.main:
            if improved:
                save_model(out, model, config, {**summary_extra, "metrics": {"epoch": epoch + 1, **row}})
            # An interrupted epoch is recorded as not done, so --resume runs it again in full.
            done = epoch if stopped is None else epoch - 1
            save_checkpoint(checkpoint_dir, model, optimizer, scheduler, {
                "epoch": done, "best": best, "history": history, "train_scans": train_ids, "val_scans": val_ids})
            write_history(out / "history.csv", history)
            plot_history(out / "curves.png", history, f"MOSnet ({config.variant}, width {config.width})")
        log(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
            f"val Dice {row['val_dice_mean']:.3f}{' (best)' if improved else ''}, {row['seconds']:.0f} s")
        if stopped:
            log(f"stopped: {stopped}; the best weights so far are kept in {out}")
            break
    if ranks.main and len(val.images) and (out / WEIGHTS).is_file():
        chosen, before, after = choose_thresholds(load_mosnet(out, device)[0], val, device)
        update_config(out, {"thresholds": chosen})
        log(f"label thresholds chosen on the validation scans: their vote's mean Dice {before:.3f} at 0.5, "
            f"{after:.3f} with them")
    distributed.barrier(ranks)  # every rank returns once rank 0's files are written
    return {"out": str(out), "best_val_dice": best, "epochs_run": len(history), "stopped": stopped}
