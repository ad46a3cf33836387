"""Learning-rate schedules that fit the budget the user gave: steps, or minutes.

A recipe that anneals over a fixed 100 epochs never leaves its top rate in a 12-minute run on a
laptop. :class:`BudgetSchedule` warms up linearly, then follows a cosine down to a floor, over
whichever budget ends first: a number of optimisation steps (from ``--epochs``) or a number of
seconds (from ``--max-minutes``). Its progress is the larger of the two fractions, so the rate
reaches its floor exactly when the run has to end. :func:`.loop.fit` steps it after every
optimisation step and records the rate of each epoch.
"""

from __future__ import annotations

import math
import time

import torch


class BudgetSchedule:
    """Linear warm-up, then cosine decay to ``floor`` x the base rate, over steps or seconds."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, total_steps: int | None = None,
                 total_seconds: float | None = None, warmup: float = 0.05, floor: float = 0.02) -> None:
        if not total_steps and not total_seconds:
            raise ValueError("a budget schedule needs a number of steps or of seconds")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warm-up must be a fraction of the budget in [0, 1), got {warmup}")
        self.optimizer = optimizer
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.total_steps = total_steps
        self.total_seconds = total_seconds
        self.warmup = warmup
        self.floor = floor
        self.steps = 0
        self.seconds = 0.0  #: training time spent in earlier runs of a resumed training
        self._since: float | None = None
        self._apply()

    @property
    def elapsed(self) -> float:
        """Seconds of training so far, this run and resumed ones."""
        return self.seconds + (time.monotonic() - self._since if self._since is not None else 0.0)

    @property
    def fraction(self) -> float:
        """How much of the budget is spent, from 0 to 1."""
        parts = []
        if self.total_steps:
            parts.append(self.steps / self.total_steps)
        if self.total_seconds:
            parts.append(self.elapsed / self.total_seconds)
        return min(1.0, max(parts))

    @property
    def done(self) -> bool:
        return self.fraction >= 1.0

    def factor(self) -> float:
        """The rate's multiple of the base rate now."""
        t = self.fraction
        if t < self.warmup:
            return max(t / self.warmup, 0.01)
        cosine = 0.5 * (1 + math.cos(math.pi * (t - self.warmup) / (1 - self.warmup)))
        return self.floor + (1 - self.floor) * cosine

    def _apply(self) -> None:
        factor = self.factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def start(self) -> None:
        """Start the clock (the first step calls it); time before it, such as loading data, is not budget."""
        if self._since is None:
            self._since = time.monotonic()

    def step(self) -> None:
        """After one optimisation step: count it and set the rate for the next."""
        self.start()
        self.steps += 1
        self._apply()

    def run_for(self, seconds: float) -> None:
        """Give a resumed run ``seconds`` more (its ``--max-minutes``) on top of the time already spent.

        The rate carries on from the restored progress, re-scaled to the longer budget, and reaches
        its floor just as this run's own clock (:func:`.checkpoint.stop_reason`) stops it."""
        self.total_seconds = self.seconds + seconds
        self._apply()

    def state_dict(self) -> dict:
        return {"steps": self.steps, "seconds": self.elapsed}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.seconds = float(state["seconds"])
        self._since = None
        self._apply()


def total_steps(epochs: int, batches_per_epoch: int) -> int:
    """The steps budget of ``epochs`` epochs."""
    return max(1, epochs * max(1, batches_per_epoch))
