"""Durable training runs: per-epoch checkpoints written atomically, and resuming from them.

A run's folder is the model folder itself: the best epoch's weights and config (what every command
loads), ``history.csv`` and ``curves.png``, and ``checkpoint/``, which holds last.safetensors (weights), optimizer.pt (optimizer and scheduler state,
tensors and plain values only, loaded with ``weights_only=True``), state.json (epoch, best score,
history, split) and config.json (the model config, which a resume must match).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..io.atomic import write_atomic
from ..models.folder import save_model
from .curves import plot_history, write_history


class TrainingError(ValueError):
    """Training cannot go on: a diverged loss, a checkpoint that does not fit, a changed split."""


def stop_reason(should_stop: Callable[[], bool], started: float, max_minutes: float | None) -> str | None:
    """Why a run should stop now (a cancel, or the --max-minutes budget spent), or None."""
    if should_stop():
        return "cancelled"
    if max_minutes and time.monotonic() - started > max_minutes * 60:
        return f"--max-minutes {max_minutes} reached"
    return None


def prepare_run(out: Path, config_json: str, resume: bool) -> Path:
    """The checkpoint folder of a new run, or of the run being resumed (which must match the config)."""
    checkpoint_dir = out / "checkpoint"
    state_path = checkpoint_dir / "state.json"
    if resume and state_path.is_file():
        saved = json.loads((checkpoint_dir / "config.json").read_text())
        now = json.loads(config_json)
        if saved != now:
            changed = ", ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}"
                                for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k))
            raise ValueError(f"{out}: --resume with a different model config than the checkpoint's ({changed}); "
                             "pass the checkpoint's values again")
    elif (out / "weights.safetensors").exists() or state_path.exists():
        raise FileExistsError(f"{out} already holds a model or checkpoint; pass --resume or choose another --out")
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (checkpoint_dir / "config.json").write_text(config_json)
    return checkpoint_dir


def save_checkpoint(checkpoint_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: dict) -> None:
    """Weights, optimizer and scheduler, then state.json last: a checkpoint is whole or absent."""
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(checkpoint_dir / "last.safetensors", lambda p: save_file(weights, str(p)))
    write_atomic(checkpoint_dir / "optimizer.pt",
           lambda p: torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, p))
    write_atomic(checkpoint_dir / "state.json", lambda p: p.write_text(json.dumps(state, indent=1)))


def load_checkpoint(checkpoint_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, device: torch.device) -> dict | None:
    """Restore a run in place and return its state, or None when there is no checkpoint."""
    state_path = checkpoint_dir / "state.json"
    if not state_path.is_file():
        return None
    try:
        state = json.loads(state_path.read_text())
        model.load_state_dict(load_file(str(checkpoint_dir / "last.safetensors"), device=str(device)))
        saved = torch.load(checkpoint_dir / "optimizer.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    except Exception as exc:  # safetensors, torch and json raise many types for damaged files
        raise TrainingError(f"{checkpoint_dir}: cannot resume from this checkpoint ({exc})") from exc
    return state


def last_done(row: dict) -> int:
    """The 0-based epoch done in full by the time of ``row``: an interrupted epoch does not count,
    so ``--resume`` runs it again."""
    return row["epoch"] - 1 if row["complete"] else row["epoch"] - 2


def record_epoch(out: Path, checkpoint_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, history: list[dict], state: dict, title: str,
                 best: tuple[Any, dict] | None = None) -> None:
    """What every training run writes after an epoch: the weights as the model folder's when they
    are the best so far (``best`` = (config, config.json extras)), the checkpoint, history and curves."""
    if best is not None:
        save_model(out, model, *best)
    save_checkpoint(checkpoint_dir, model, optimizer, scheduler, state)
    write_history(out / "history.csv", history)
    plot_history(out / "curves.png", history, title)
