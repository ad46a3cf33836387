"""The one training loop: MOSnet, the ultrasound U-Nets and fine-tuning rounds all run through :func:`fit`.

A :class:`Recipe` says what differs between them: the batches of an epoch, the loss of a batch,
validation, and what an epoch's end does (schedulers, best weights, checkpoints, early stopping).
The loop does what is the same for all: optimisation steps (bf16 autocast on CUDA), a loss that
is not finite stopped with an error naming the run, the stop flag and ``--max-minutes`` (agreed
between torchrun's ranks), the epoch's mean loss and its parts over all ranks, validation on rank 0,
one history row per epoch, and a progress event per epoch (epoch, epochs, loss, ETA).
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import TrainingError, stop_reason
from .distributed import Ranks
from .schedule import BudgetSchedule


@dataclass
class Step:
    """The loss of one batch, before its optimisation step."""

    loss: torch.Tensor
    size: int  #: samples in the batch: the epoch's mean loss weighs each batch by it
    parts: dict[str, float] = field(default_factory=dict)  #: named parts of the loss, as floats


class Recipe(Protocol):
    """What one kind of training supplies to :func:`fit`."""

    #: loss parts recorded in each history row as ``train_<part>``
    parts: tuple[str, ...]

    def begin_epoch(self, epoch: int, history: list[dict]) -> dict | None:
        """Prepare epoch ``epoch`` (0-based); the fields that open its history row, or None to end training."""

    def batches(self, epoch: int) -> Sequence[Any]:
        """This rank's batches of the epoch, each handed to :meth:`step`."""

    def step(self, batch: Any) -> Step:
        """The loss of one batch (the network's forward pass runs under :func:`autocast`)."""

    def validate(self) -> dict[str, float]:
        """Validation figures for the history row; run on rank 0 alone, shared with the others."""

    def end_epoch(self, row: dict, history: list[dict], stopped: str | None) -> None:
        """After an epoch: schedulers, best weights, checkpoint, log (``row`` is already in ``history``)."""


@dataclass
class Fit:
    """How a :func:`fit` ended."""

    history: list[dict]
    stopped: str | None  #: why it stopped early ("cancelled", "--max-minutes ... reached"), or None


@functools.cache
def cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast trains a U-Net
    step about 1.8x faster than fp32 (measured on a 2-core EPYC); ``MOUSESEGMENT_CPU_BF16=0`` turns it off."""
    if os.environ.get("MOUSESEGMENT_CPU_BF16", "1") == "0":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell native bf16 from emulated (slow) bf16
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags)) and torch.backends.mkldnn.is_available()


def autocast(device: torch.device):
    """bf16 autocast for training steps on CUDA, and on CPUs with native bf16; a no-op elsewhere."""
    enabled = device.type == "cuda" or (device.type == "cpu" and cpu_bf16())
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def optimise(optimizer: torch.optim.Optimizer, loss: torch.Tensor, where: str) -> float:
    """One optimisation step on ``loss``; a loss that is not finite stops training with an error naming ``where``."""
    if not torch.isfinite(loss):
        raise TrainingError(f"{where}: loss became {float(loss.detach())}; lower --lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def fit(net: torch.nn.Module, optimizer: torch.optim.Optimizer, recipe: Recipe, *, epochs: int,
        start_epoch: int = 0, history: list[dict] | None = None, ranks: Ranks = Ranks(), where: str = "training",
        should_stop: Callable[[], bool] = lambda: False, max_minutes: float | None = None,
        progress: Callable[[dict], None] | None = None, bar: bool = False, desc: str = "epoch",
        schedule: BudgetSchedule | None = None) -> Fit:
    """Train ``net`` with ``recipe`` from epoch ``start_epoch`` up to ``epochs`` (or until the recipe ends it).

    ``should_stop`` and ``max_minutes`` end the run after the current step, the interrupted epoch
    recorded as not complete. ``progress`` gets ``{"epoch", "epochs", "loss", "eta_s"}`` after each
    epoch; ``bar`` shows a tqdm bar per epoch.
    """
    history = [] if history is None else history
    started = time.monotonic()
    stopped = None
    for epoch in range(start_epoch, epochs):
        opening = recipe.begin_epoch(epoch, history)
        if opening is None:
            break
        net.train()
        t0 = time.monotonic()
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trains with
        sums = dict.fromkeys(("loss", *recipe.parts), 0.0)
        seen = steps = 0
        batches = tqdm(recipe.batches(epoch), desc=f"{desc} {epoch + 1}/{epochs}", disable=not bar, leave=False)
        for batch in batches:
            step = recipe.step(batch)
            value = optimise(optimizer, step.loss, f"{where}, epoch {epoch + 1}")
            if schedule is not None:
                schedule.step()
            seen += step.size
            steps += 1
            sums["loss"] += value * step.size
            for name in recipe.parts:
                sums[name] += step.parts.get(name, 0.0) * step.size
            batches.set_postfix(loss=f"{value:.4f}")
            stopped = distributed.agree_stop(stop_reason(should_stop, started, max_minutes), ranks)
            if stopped:
                break
        *totals, seen = distributed.sum_over_ranks([*sums.values(), seen], ranks)
        means = {("train_loss" if name == "loss" else f"train_{name}"): total / max(seen, 1)
                 for name, total in zip(sums, totals)}
        scores = distributed.from_main(recipe.validate, ranks)
        row = {"epoch": epoch + 1, **opening, **means, **scores, "lr": lr,
               "seconds": round(time.monotonic() - t0, 1), "steps": steps, "complete": stopped is None}
        history.append(row)
        recipe.end_epoch(row, history, stopped)
        if progress is not None:
            done = epoch + 1 - start_epoch
            elapsed = time.monotonic() - started
            progress({"epoch": epoch + 1, "epochs": epochs, "loss": row["train_loss"],
                      "eta_s": elapsed / done * (epochs - epoch - 1)})
        if stopped:
            break
    return Fit(history, stopped)
