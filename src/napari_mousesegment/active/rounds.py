"""Retraining rounds as types: their states, the record the queue keeps, and what a round did.

The queue stores a round's state as its enum value; everything that reads rounds (the CLI, the
widget, the benchmark) decides on :class:`RoundState` and :attr:`Round.promoted`, never on a
human-readable message.

Whether a round's version is promoted is decided here (:func:`promotion`), on like with like: the
current and the new version scored on the same held-out corrected frames (or slices), each at its
own threshold(s) (the new version's were chosen in the round, see :class:`ThresholdChoice`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

#: Held-out corrected frames (or slices) with an organ a round needs before its version may be
#: promoted: with fewer there is no evidence that the new version is not worse, or finds anything.
MIN_EVIDENCE = 2


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
class HeldOut:
    """How one version does on a round's held-out corrected frames or slices, at its own threshold(s)."""

    dice: float | None  #: pixel Dice (U-Net) or mean Dice of the organs present (MOSnet); None: no organ
    found: int  #: frames or slices with an organ on which the version finds one overlapping it
    with_organs: int  #: held-out frames or slices whose corrections have an organ


@dataclass(frozen=True)
class ThresholdChoice:
    """The new version's threshold(s), chosen in the round by the rule ``train`` uses."""

    before: Any  #: the current version's: a probability (U-Net) or organ -> probability (MOSnet)
    after: Any  #: the new version's
    on: str  #: "held-out" or "training" (too few held-out frames with an organ), or "kept" (no organ to choose on)

    def text(self) -> str:
        """One phrase for the log and the summary (a MOSnet's organs whose threshold changed)."""
        if isinstance(self.after, dict):
            changed = [f"{organ} {self.before.get(organ, 0.5):g} -> {value:g}" for organ, value in self.after.items()
                       if value != self.before.get(organ)]
            what = "thresholds " + (", ".join(changed) or "unchanged")
        else:
            what = f"threshold {self.before:g} -> {self.after:g}"
        if self.on == "kept":
            return f"{what} (kept: no organ to choose on)"
        where = ("the held-out corrections" if self.on == "held-out"
                 else "the corrections it trained on: too few held-out ones with an organ")
        return f"{what} (chosen on {where})"


def promotion(before: HeldOut, after: HeldOut, guard: float, unit: str = "frames") -> tuple[bool, str]:
    """Whether a round's new version replaces the current one, and the verdict in words.

    Never promoted on no evidence (fewer than :data:`MIN_EVIDENCE` held-out ``unit`` with an
    organ), when it finds nothing where the corrections have organs, or when its held-out Dice is
    more than ``guard`` below the current version's.
    """
    n = after.with_organs
    if n < MIN_EVIDENCE or before.dice is None or after.dice is None:
        return False, (f"kept, not promoted (no evidence: {n} held-out {unit} with an organ, "
                       f"at least {MIN_EVIDENCE} needed)")
    if after.found == 0:
        return False, f"kept, not promoted (it finds nothing on the {n} held-out {unit} whose corrections have organs)"
    scores = f"held-out Dice {before.dice:.3f} -> {after.dice:.3f}"
    if after.dice < before.dice - guard:
        return False, f"kept, not promoted (worse on the held-out {unit}: {scores})"
    return True, f"promoted ({scores}; finds organs on {after.found} of {n} held-out {unit})"


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
    with_organs: int = 0  #: held-out frames or slices whose corrections have an organ
    found_before: int | None = None  #: of those, where the current version finds an organ
    found_after: int | None = None  #: of those, where the new version finds an organ
    threshold: ThresholdChoice | None = None  #: the new version's threshold(s) and what they were chosen on
    verdict: str | None = None  #: promoted or not, and why

    @property
    def failed(self) -> bool:
        return self.error is not None

    def metrics(self) -> dict[str, Any]:
        """The figures recorded with the version and the round."""
        out = {"held_out": self.held_out, "dice_before": self.dice_before, "dice_after": self.dice_after,
               "trained_on": self.trained_on, "held_out_with_organs": self.with_organs,
               "found_before": self.found_before, "found_after": self.found_after}
        if self.threshold is not None:
            out |= {"threshold_before": self.threshold.before, "threshold_after": self.threshold.after,
                    "threshold_chosen_on": self.threshold.on}
        if self.verdict is not None:
            out["verdict"] = self.verdict
        return out

    def summary(self) -> str:
        """One line for the CLI and the widget."""
        aside = f"; {len(self.set_aside)} item(s) set aside as failed" if self.set_aside else ""
        if self.failed:
            return f"{self.model}: round failed ({self.error}){aside}"
        verdict = self.verdict or ("promoted" if self.promoted else "not promoted")
        scores = ("n/a" if self.dice_after is None or self.dice_before is None
                  else f"{self.dice_before:.3f} -> {self.dice_after:.3f}")
        parts = [] if "held-out Dice" in verdict else [f"held-out Dice {scores}"]
        parts += [self.threshold.text()] if self.threshold is not None else []
        return f"{self.model} v{self.version}: {verdict}" + "".join(f"; {p}" for p in parts) + aside
