"""Retraining rounds as types: their states, the record the queue keeps, and what a round did.

The queue stores a round's state as its enum value; everything that reads rounds (the CLI, the
widget, the benchmark) decides on :class:`RoundState` and :attr:`Round.promoted`, never on a
human-readable message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class RoundState(str, Enum):
    """Where a round is; stored as its value in the queue's ``rounds`` table."""

    RUNNING = "running"
    DONE = "done"  #: a version was published (promoted or not: see :attr:`Round.promoted`)
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  #: its worker died mid-round; the items stay pending

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Round:
    """One row of the queue's ``rounds`` table, typed."""

    id: int
    model: str | None
    state: RoundState
    started: str
    version: str | None = None
    heartbeat: float | None = None
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    eta_s: float | None = None
    items: list[int] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str | None = None

    @property
    def promoted(self) -> bool:
        """Whether the round's version became the current one."""
        return self.state is RoundState.DONE and bool(self.metrics.get("promoted"))

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Round:
        """From a ``rounds`` row as SQLite returns it (items and metrics as JSON text)."""
        return cls(id=int(row["id"]), model=row["model"], state=RoundState(row["state"]), started=row["started"],
                   version=row["version"], heartbeat=row["heartbeat"], epoch=row["epoch"], epochs=row["epochs"],
                   loss=row["loss"], eta_s=row["eta_s"], items=json.loads(row["items"] or "[]"),
                   metrics=json.loads(row["metrics"] or "{}"), message=row["message"])


@dataclass(frozen=True)
class RoundResult:
    """What one round of :func:`..active.worker.run_rounds` did: a published version, or a failure."""

    model: str
    version: str | None = None
    promoted: bool = False
    held_out: int = 0  #: corrected frames or slices held out to check the new version on
    dice_before: float | None = None  #: held-out Dice of the current version (None: nothing to score)
    dice_after: float | None = None  #: held-out Dice of the new version
    trained_on: int = 0
    error: str | None = None  #: why the round failed; its items stay pending
    set_aside: tuple[int, ...] = ()  #: items of the group marked failed (unreadable, or not fit to train on)

    @property
    def failed(self) -> bool:
        return self.error is not None

    def metrics(self) -> dict[str, Any]:
        """The figures recorded with the version and the round."""
        return {"held_out": self.held_out, "dice_before": self.dice_before, "dice_after": self.dice_after,
                "trained_on": self.trained_on}

    def summary(self) -> str:
        """One line for the CLI and the widget."""
        aside = f"; {len(self.set_aside)} item(s) set aside as failed" if self.set_aside else ""
        if self.failed:
            return f"{self.model}: round failed ({self.error}){aside}"
        scores = ("n/a" if self.dice_after is None or self.dice_before is None
                  else f"{self.dice_before:.3f} -> {self.dice_after:.3f}")
        return (f"{self.model} v{self.version}: held-out Dice {scores}, "
                f"{'promoted' if self.promoted else 'not promoted'}{aside}")
