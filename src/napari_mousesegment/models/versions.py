"""Versions of a user model: every retraining round publishes one; one of them is current.

The current version is the plain model folder ``MODELS_HOME/NAME`` that every command loads.
All versions are kept under ``MODELS_HOME/.versions/NAME/<version>/`` with ``versions.json``
(current version, promotion history, each version's metrics and the queue items it used).
Promoting copies a version into the model folder by rename, so a crash mid-way leaves the
previous current version in place; rollback promotes the one before.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .registry import BUILTIN, _copy_model, check_name, home, resolve
from .store import ModelError, read_config, save_model

INDEX = "versions.json"


def lab_name(model: str) -> str:
    """The user model that rounds started from ``model`` publish to: the same name for a user model,
    ``NAME-lab`` for a built-in one (built-in models are never changed)."""
    path = Path(model)
    if path.is_dir():
        return check_name(path.name if (path.parent != BUILTIN) else f"{path.name}-lab")
    return f"{model}-lab" if (BUILTIN / model).is_dir() else check_name(model)


def _root(name: str) -> Path:
    return home() / ".versions" / check_name(name)


def _index(name: str) -> dict[str, Any]:
    path = _root(name) / INDEX
    if not path.is_file():
        return {"current": None, "promotions": [], "versions": {}}
    return json.loads(path.read_text())


def _write_index(name: str, index: dict[str, Any]) -> None:
    path = _root(name) / INDEX
    tmp = path.with_name(INDEX + ".partial")
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, path)


def versions(name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, oldest first, with ``current`` marking the one in use."""
    index = _index(name)
    return [{"version": v, "current": v == index["current"], **info} for v, info in index["versions"].items()]


def ensure_base(name: str, start: str) -> None:
    """Record the model a first round starts from as version 0, so that rollback can return to it."""
    if _index(name)["versions"]:
        return
    source = resolve(start)
    root = _root(name)
    root.mkdir(parents=True, exist_ok=True)
    _copy_model(source, root / "0", force=True)
    config = root / "0" / "config.json"  # the copy is version 0 of this name; its weights are unchanged
    config.write_text(json.dumps({**read_config(root / "0"), "version": "0", "started_from": str(start)}, indent=2))
    index = {"current": None, "promotions": [],
             "versions": {"0": {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parent": None,
                                "source": str(start), "items": [], "metrics": {}}}}
    _write_index(name, index)
    promote(name, "0")


def publish(name: str, model: torch.nn.Module, config: Any, parent: str, items: list[int],
            metrics: dict[str, Any]) -> str:
    """Save a new version of ``name`` (not yet current) and return its version string."""
    index = _index(name)
    version = str(max((int(v) for v in index["versions"]), default=-1) + 1)
    config.version = version
    extra = {k: v for k, v in read_config(_root(name) / parent).items() if k in ("training", "name", "description")}
    save_model(_root(name) / version, model, config,
               {**extra, "parent_version": parent, "queue_items": items, "round_metrics": metrics})
    index["versions"][version] = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parent": parent,
                                  "items": items, "metrics": metrics}
    _write_index(name, index)
    return version


def promote(name: str, version: str) -> Path:
    """Make ``version`` the one every command loads under ``name``."""
    index = _index(name)
    if str(version) not in index["versions"]:
        known = ", ".join(index["versions"]) or "none"
        raise ModelError(f"model {name!r} has no version {version!r} (versions: {known})")
    folder = _copy_model(_root(name) / str(version), home() / name, force=True)
    index["current"] = str(version)
    index["promotions"].append(str(version))
    _write_index(name, index)
    return folder


def rollback(name: str) -> str:
    """Promote the version that was current before the present one; returns it."""
    index = _index(name)
    history = index["promotions"]
    if len(history) < 2:
        raise ModelError(f"model {name!r} has no earlier version to roll back to")
    previous = history[-2]
    promote(name, previous)
    index = _index(name)
    index["promotions"] = history[:-2] + [previous]
    _write_index(name, index)
    return previous


def remove_versions(name: str) -> None:
    shutil.rmtree(_root(name), ignore_errors=True)
