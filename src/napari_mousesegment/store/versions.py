"""Versions of a user model: every retraining round publishes one; one of them is current.

The current version is the plain model folder ``MODELS_HOME/NAME`` that every command loads.
All versions are kept under ``MODELS_HOME/.versions/NAME/<version>/`` with ``versions.json``
(current version, promotion history, each version's metrics and the queue items it used).
Promoting copies a version into the model folder by rename, so a crash mid-way leaves the
previous current version in place; rollback promotes the one before. A promotion or rollback
made by someone (a lab server's user) records who and when on the version it made current
(``promoted_by``/``promoted_at`` or ``rolled_back_by``/``rolled_back_at``).

A retraining round publishes its version together with its promote decision (``round`` in the
index: the queue, the round, promote or not and why), then carries the decision out
(:func:`settle`). A worker killed in between leaves a version whose decision is recorded but not
settled; the next worker settles it from that record instead of losing the version or promoting
it blind. :func:`recover` cleans what a killed writer leaves: half-copied ``.NAME-xxxxxxxx``
folders beside the model, half-published version folders, and a model folder that no longer
holds the current version.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from ..io.jsonfile import read_object, write_object
from ..models.folder import (
    ModelError,
    copy_folder,
    is_model,
    read_config,
    save_model,
    update_config,
)
from .registry import check_name, home, is_builtin, resolve

if TYPE_CHECKING:
    import torch

INDEX = "versions.json"
#: Test hook: ``MOUSESEGMENT_FAULT=STAGE`` kills the process (SIGKILL) at that stage of a round, to
#: test what a crash there leaves: ``training`` (after the first epoch, in the worker),
#: ``publish`` (weights of the new version written, the index not), ``published`` (the version and
#: its decision recorded, not promoted yet), ``promote`` (half-way through copying it into place).
FAULT_ENV = "MOUSESEGMENT_FAULT"


def fault_point(stage: str) -> None:
    """Kill this process at once when :data:`FAULT_ENV` names ``stage`` (a test hook; see there)."""
    if os.environ.get(FAULT_ENV) == stage:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def _fault_mid_copy() -> None:
    """For ``MOUSESEGMENT_FAULT=promote``: the next folder copy dies after its first file."""
    if os.environ.get(FAULT_ENV) != "promote":
        return
    copy, copied = shutil.copy2, []

    def copy_then_die(src, dst, *args, **kwargs):
        if copied:
            fault_point("promote")
        copied.append(src)
        return copy(src, dst, *args, **kwargs)

    shutil.copy2 = copy_then_die  # the process dies inside this copy: nothing to restore


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
    if not all(isinstance(v, dict) for v in index["versions"].values()):
        raise ModelError(f"{path}: not an index of versions (an entry of \"versions\" is not a table)")
    index.setdefault("current", None)
    index.setdefault("promotions", [])
    if index["current"] is not None and index["current"] not in index["versions"]:
        raise ModelError(f"{path}: the current version {index['current']!r} is not among its versions")
    if not isinstance(index["promotions"], list):
        raise ModelError(f"{path}: \"promotions\" is a {type(index['promotions']).__name__}, not a list")
    return index


def _write_index(name: str, index: dict[str, Any]) -> None:
    write_object(_root(name) / INDEX, index)


def versions(name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, oldest first, with ``current`` marking the one in use."""
    index = _index(name)
    return [{"version": v, "current": v == index["current"], **info} for v, info in index["versions"].items()]


def current(name: str) -> str | None:
    """The current version of ``name`` (None before its first round)."""
    return _index(name)["current"]


def ensure_base(name: str, start: str) -> None:
    """Record the model a first round starts from as version 0, so that rollback can return to it."""
    if not _index(name)["versions"]:
        resolve(start)  # an unknown model is refused before anything is written
    with _locked(name):
        index = _index(name)
        if index["versions"]:
            if index["current"] is None:  # a crash right after recording version 0
                _promote(name, "0", index)
            return
        source = resolve(start)
        if (home() / name).exists() and source.resolve() != (home() / name).resolve():
            raise ModelError(f"a user model named {name!r} exists and is not {start}; rounds would replace it. "
                             f"Rename one of them (mousesegment models import ... --name)")
        root = _root(name)
        copy_folder(source, root / "0", force=True)
        # The copy is version 0 of this name; its weights are unchanged.
        update_config(root / "0", {"version": "0", "started_from": str(start)})
        index = {"current": None, "promotions": [],
                 "versions": {"0": {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parent": None,
                                    "source": str(start), "items": [], "metrics": {}}}}
        _write_index(name, index)
        _promote(name, "0", index)


def publish(name: str, model: torch.nn.Module, config: Any, parent: str, items: list[int],
            metrics: dict[str, Any], decision: dict[str, Any] | None = None) -> str:
    """Save a new version of ``name`` (not yet current) and return its version string.

    ``decision`` records a round's verdict with the version, in the same write of the index:
    ``{"queue": FOLDER, "id": ROUND, "promote": bool, "verdict": "..."}``; :func:`settle` carries
    it out. A full disk or a read-only store leaves no half version behind and raises a
    :class:`ModelError` naming the folder; the current version is unchanged.
    """
    with _locked(name):
        index = _index(name)
        version = str(max((int(v) for v in index["versions"]), default=-1) + 1)
        folder = _root(name) / version
        config.version = version
        extra = {k: v for k, v in read_config(_root(name) / parent).items()
                 if k in ("training", "name", "description")}
        entry = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parent": parent, "items": items,
                 "metrics": metrics}
        if decision is not None:
            entry["round"] = {**decision, "settled": False}
        try:
            shutil.rmtree(folder, ignore_errors=True)  # left by a writer killed before recording it
            save_model(folder, model, config,
                       {**extra, "parent_version": parent, "queue_items": items, "round_metrics": metrics})
            fault_point("publish")
            index["versions"][version] = entry
            _write_index(name, index)
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise ModelError(f"{folder}: could not save version {version} of {name} ({exc}); the current "
                             f"version {index['current']} is unchanged") from exc
    fault_point("published")
    return version


def settle(name: str, version: str) -> tuple[bool, str]:
    """Carry out the promote decision a round recorded with ``version`` (see :func:`publish`);
    returns whether it became current and the verdict in words.

    Done once: a settled version is left as it is. A version whose round said "promote" becomes
    current only if the current version is still the one it was compared against (or already
    itself): a version someone made current meanwhile is not replaced behind their back.
    """
    with _locked(name):
        index = _index(name)
        version = str(version)
        if version not in index["versions"]:
            raise ModelError(f"model {name!r} has no version {version!r}")
        entry = index["versions"][version]
        decision = dict(entry.get("round") or {})
        if decision.get("settled"):
            return bool(decision.get("promoted")), str(decision.get("verdict", ""))
        promoted = False
        if not decision.get("promote"):
            verdict = str(decision.get("verdict") or "kept, not promoted")
        elif index["current"] not in (entry.get("parent"), version):
            verdict = (f"kept, not promoted (version {index['current']} was made current while the round ran; "
                       f"`mousesegment models promote {name} {version}` to use it)")
        else:
            if index["current"] != version or not _serves(name, version):
                _promote(name, version, index)
            promoted, verdict = True, str(decision.get("verdict") or "promoted")
        entry["round"] = {**decision, "settled": True, "promoted": promoted, "verdict": verdict}
        _write_index(name, index)
    return promoted, verdict


def published_rounds(name: str, queue: str) -> dict[int, str]:
    """The versions of ``name`` that rounds of the queue folder ``queue`` published: round id -> version."""
    found = {}
    for version, entry in _index(name)["versions"].items():
        record = entry.get("round")
        if isinstance(record, dict) and record.get("queue") == queue and isinstance(record.get("id"), int):
            found[record["id"]] = version
    return found


def _serves(name: str, version: str) -> bool:
    """Whether the model folder holds ``version`` (True too for a folder that is not one of ours)."""
    folder = home() / name
    if not is_model(folder):
        return False
    try:
        meta = read_config(folder)
    except ModelError:
        return True  # not ours to judge: left alone
    if "parent_version" not in meta and "started_from" not in meta:
        return True  # a model imported under this name since: never overwritten from here
    return str(meta.get("version")) == version


def _leftover(entry: str, name: str) -> bool:
    """Whether ``entry`` of the models folder is what a killed copy of ``name`` left
    (:func:`..models.folder.copy_folder` copies through ``.NAME-xxxxxxxx`` and ``.NAME-old``)."""
    return re.fullmatch(rf"\.{re.escape(name)}-([a-z0-9_]{{8}}|old)", entry) is not None


def recover(name: str) -> list[str]:
    """Clean up after a writer of ``name``'s versions was killed; returns a line per thing done.

    Skipped (nothing done) while another process holds the versions' lock. Restores
    ``.NAME-old`` if the model folder is gone, removes half-copied ``.NAME-xxxxxxxx`` folders and
    half-published version folders, and copies the current version into the model folder again
    when it holds another one of ours.
    """
    from .registry import _restore_interrupted

    root = _root(name)
    if not root.is_dir():
        return []
    lock = FileLock(root / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return []
    try:
        done = []
        _restore_interrupted(name)
        for entry in home().iterdir():
            if entry.is_dir() and _leftover(entry.name, name):
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"removed {entry}, left by a copy that was killed")
        index = _index(name)
        for entry in root.iterdir():
            if entry.is_dir() and (entry.name.startswith(".") or entry.name not in index["versions"]):
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"removed {entry}, a version that was never recorded")
        if index["current"] is not None and not _serves(name, index["current"]):
            _promote(name, index["current"], index, history=index["promotions"])
            done.append(f"{home() / name}: put the current version {index['current']} back in place")
        return done
    finally:
        lock.release()


def recover_all() -> list[str]:
    """:func:`recover` for every model with versions; a broken index is reported, not raised."""
    folder = home() / ".versions"
    done: list[str] = []
    if not folder.is_dir():
        return done
    for root in sorted(folder.iterdir()):
        if root.is_dir() and not root.name.startswith("."):
            try:
                done += recover(root.name)
            except (ModelError, OSError) as exc:
                done.append(f"{root}: could not check it for crash leftovers: {exc}")
    return done


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
    _fault_mid_copy()
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
