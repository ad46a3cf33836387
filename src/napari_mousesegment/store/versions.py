"""Versions of a user model: every retraining round publishes one; one of them is current.

The current version is the plain model folder ``MODELS_HOME/NAME`` that every command loads.
All versions are kept under ``MODELS_HOME/.versions/NAME/<version>/`` with ``versions.json``
(current version, promotion history, each version's metrics and the queue items it used).
Promoting copies a version into the model folder by rename, so a crash mid-way leaves the
previous current version in place; rollback promotes the one before. A promotion or rollback
made by someone (a lab server's user) records who and when on the version it made current
(``promoted_by``/``promoted_at`` or ``rolled_back_by``/``rolled_back_at``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from ..io.jsonfile import read_object, write_object
from ..models.folder import ModelError, copy_folder, read_config, save_model, update_config
from .registry import check_name, home, is_builtin, resolve

if TYPE_CHECKING:
    import torch

INDEX = "versions.json"


def lab_name(model: str) -> str:
    """The user model that rounds started from ``model`` publish to: the same name for a user model,
    ``NAME-lab`` for a built-in one or a model folder (built-in models and folders are never changed)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return check_name(f"{path.resolve().name}-lab")
    return f"{model}-lab" if is_builtin(model) else check_name(model)


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """One writer of a model's versions at a time (rounds of several queues, promote, rollback),
    on every platform (filelock: fcntl on POSIX, msvcrt on Windows)."""
    root = _root(name)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / ".lock"):
        yield


def _root(name: str) -> Path:
    return home() / ".versions" / check_name(name)


def _index(name: str) -> dict[str, Any]:
    path = _root(name) / INDEX
    if not path.is_file():
        return {"current": None, "promotions": [], "versions": {}}
    try:
        index = read_object(path, "an index of versions")
    except ValueError as exc:
        raise ModelError(str(exc)) from exc
    if not isinstance(index.get("versions"), dict):
        raise ModelError(f"{path}: not an index of versions (no \"versions\" table)")
    return index


def _write_index(name: str, index: dict[str, Any]) -> None:
    write_object(_root(name) / INDEX, index)


def versions(name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, oldest first, with ``current`` marking the one in use."""
    index = _index(name)
    return [{"version": v, "current": v == index["current"], **info} for v, info in index["versions"].items()]


def ensure_base(name: str, start: str) -> None:
    """Record the model a first round starts from as version 0, so that rollback can return to it."""
    index = _index(name)
    if index["versions"]:
        if index["current"] is None:  # a crash right after recording version 0
            promote(name, "0")
        return
    source = resolve(start)
    if (home() / name).exists() and source.resolve() != (home() / name).resolve():
        raise ModelError(f"a user model named {name!r} exists and is not {start}; rounds would replace it. "
                         f"Rename one of them (mousesegment models import ... --name)")
    root = _root(name)
    root.mkdir(parents=True, exist_ok=True)
    copy_folder(source, root / "0", force=True)
    # The copy is version 0 of this name; its weights are unchanged.
    update_config(root / "0", {"version": "0", "started_from": str(start)})
    index = {"current": None, "promotions": [],
             "versions": {"0": {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parent": None,
                                "source": str(start), "items": [], "metrics": {}}}}
    _write_index(name, index)
    promote(name, "0")


def publish(name: str, model: torch.nn.Module, config: Any, parent: str, items: list[int],
            metrics: dict[str, Any]) -> str:
    """Save a new version of ``name`` (not yet current) and return its version string."""
    with _locked(name):
        index = _index(name)
        version = str(max((int(v) for v in index["versions"]), default=-1) + 1)
        config.version = version
        extra = {k: v for k, v in read_config(_root(name) / parent).items()
                 if k in ("training", "name", "description")}
        save_model(_root(name) / version, model, config,
                   {**extra, "parent_version": parent, "queue_items": items, "round_metrics": metrics})
        index["versions"][version] = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parent": parent,
                                      "items": items, "metrics": metrics}
        _write_index(name, index)
    return version


def _stamp(action: str, by: str | None) -> dict[str, str]:
    """Who made a version current, and when: ``{ACTION_by, ACTION_at}``, or nothing without ``by``."""
    return {f"{action}_by": by, f"{action}_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")} if by else {}


def promote(name: str, version: str, by: str | None = None) -> Path:
    """Make ``version`` the one every command loads under ``name``; ``by`` records who did."""
    with _locked(name):
        return _promote(name, str(version), _index(name), stamp=_stamp("promoted", by))


def _promote(name: str, version: str, index: dict[str, Any], history: list[str] | None = None,
             stamp: dict[str, str] | None = None) -> Path:
    if version not in index["versions"]:
        known = ", ".join(index["versions"]) or "none"
        raise ModelError(f"model {name!r} has no version {version!r} (versions: {known})")
    folder = copy_folder(_root(name) / version, home() / name, force=True)
    if history is None:
        history = index["promotions"] + ([] if index["current"] == version else [version])
    index["current"], index["promotions"] = version, history
    index["versions"][version].update(stamp or {})
    _write_index(name, index)  # current version, history and who did it in one write
    return folder


def rollback(name: str, by: str | None = None) -> str:
    """Promote the version that was current before the present one; returns it. ``by`` records who did."""
    with _locked(name):
        index = _index(name)
        history = index["promotions"]
        if len(history) < 2:
            raise ModelError(f"model {name!r} has no earlier version to roll back to")
        previous = history[-2]
        _promote(name, previous, index, history[:-1], stamp=_stamp("rolled_back", by))
    return previous


def remove_versions(name: str) -> None:
    shutil.rmtree(_root(name), ignore_errors=True)
