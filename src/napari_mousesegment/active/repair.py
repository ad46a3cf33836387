"""``mousesegment queue repair``: rebuild a queue's manifest from its item folders.

Each item folder holds ``item.json``, the item's record (its state, the versions it was used in,
why it failed), kept in step with ``queue.sqlite`` by :class:`.queue.Queue`. A manifest that is
missing, empty or damaged is moved aside (``queue.sqlite.damaged-<time>``, never deleted) and a new
one is built from those records; the rounds history is copied over when the damaged file still
reads, and is lost otherwise. Items are never lost: a folder whose record cannot be read is named
in the report and left where it is. On a healthy manifest, item folders that have no record (an
add cut short between the rename and its commit) are adopted; otherwise nothing changes.

Refused while a worker holds the queue's lock, which repair holds while it works.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from ..io.jsonfile import read_object
from .queue import (
    KINDS,
    MANIFEST,
    SCHEMA,
    STATES,
    QueueError,
    StorageError,
    item_folders,
    migrate_schema,
    sqlite_error,
)
from .rounds import RoundState


@dataclass
class RepairReport:
    """What :func:`repair_queue` found and did."""

    root: Path
    problem: str | None = None  #: what was wrong with the manifest (None: it was healthy)
    moved_aside: list[Path] = field(default_factory=list)  #: the damaged manifest's files, renamed
    restored: dict[str, int] = field(default_factory=dict)  #: items recorded again, by state
    adopted: list[int] = field(default_factory=list)  #: item folders with no record, now recorded
    kept: list[str] = field(default_factory=list)  #: "folder: why" of folders left unrecorded, untouched
    missing: list[int] = field(default_factory=list)  #: records whose folder is gone (kept as they are)
    rounds: int | None = None  #: rounds history copied from the damaged manifest (None: lost)

    @property
    def changed(self) -> bool:
        return bool(self.problem or self.adopted)

    def lines(self) -> list[str]:
        """The report as the CLI prints it."""
        manifest = self.root / MANIFEST
        out = []
        if self.problem:
            out.append(f"{manifest} {self.problem}")
            if self.moved_aside:
                out.append("moved aside (not deleted): " + ", ".join(p.name for p in self.moved_aside))
            states = ", ".join(f"{n} {s}" for s, n in self.restored.items() if n) or "none"
            out.append(f"{sum(self.restored.values())} item(s) restored from their item.json ({states})")
            out.append("rounds history lost (the damaged file does not read)" if self.rounds is None
                       else f"{self.rounds} round(s) of history kept")
        elif self.adopted:
            out.append(f"{len(self.adopted)} item folder(s) without a record adopted: "
                       + ", ".join(map(str, self.adopted)))
        else:
            out.append(f"{manifest} is healthy: {sum(self.restored.values())} item(s); nothing to repair")
        out += [f"kept, not restored: {why}" for why in self.kept]
        out += [f"item {i}: recorded, but its folder is missing (kept; `queue remove {i}` drops it)"
                for i in self.missing]
        return out


def _problem(root: Path) -> str | None:
    """What is wrong with the manifest, or None when it is healthy; a manifest that cannot be
    written to (read-only folder, full disk) cannot be repaired here and is a StorageError."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        return "is missing"
    if manifest.stat().st_size == 0:
        return "is empty (0 bytes)"
    try:
        with closing(sqlite3.connect(f"{manifest.absolute().as_uri()}?mode=rw", uri=True, timeout=60)) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "items" not in tables:
                return "holds no items table"
            check = [r[0] for r in db.execute("PRAGMA quick_check")]
            if check != ["ok"]:
                return f"fails SQLite's integrity check ({check[0][:200]})"
            rows = db.execute("SELECT id, shape, touched, used_in FROM items").fetchall()
            for row in rows:
                json.loads(row[1]), json.loads(row[2]), json.loads(row[3] or "[]")
            if not rows and item_folders(root):
                return "records no items"
    except sqlite3.Error as exc:
        error = sqlite_error(root, exc)
        if isinstance(error, StorageError):
            raise error from exc
        return f"is damaged ({str(exc).strip()[:200]})"
    except (ValueError, TypeError) as exc:
        return f"holds a damaged item record ({exc})"
    return None


def _record(folder: Path) -> dict:
    """The row of an item folder, from its item.json; a ValueError says why it cannot be."""
    try:
        meta = read_object(folder / "item.json")
    except OSError as exc:
        raise ValueError(f"{folder / 'item.json'}: cannot be read ({exc.strerror or exc})") from None
    kind, shape, touched = meta.get("kind"), meta.get("shape"), meta.get("touched")
    if kind not in KINDS:
        raise ValueError(f"{folder / 'item.json'}: kind {kind!r} is not one of {KINDS}")
    if not (isinstance(shape, list) and shape and all(isinstance(v, int) and v > 0 for v in shape)):
        raise ValueError(f"{folder / 'item.json'}: shape {shape!r:.80} is not a list of sizes")
    if not (isinstance(touched, list) and all(isinstance(v, int) for v in touched)):
        raise ValueError(f"{folder / 'item.json'}: touched {touched!r:.80} is not a list of frames")
    state = meta.get("state") if meta.get("state") in STATES else "pending"
    used_in = meta.get("used_in") if isinstance(meta.get("used_in"), list) else []
    reason = meta.get("reason")
    lost = [name for name in ("image.tif", "labels.tif") if not (folder / name).is_file()]
    if lost:  # recorded, so it is seen, but set aside: a worker would only fail on it
        state, reason = "failed", f"{', '.join(lost)} missing from {folder}"

    def text(key: str) -> str | None:
        value = meta.get(key)
        return None if value is None else str(value)

    return {"id": int(folder.name), "kind": kind, "organ": text("organ"), "condition": text("condition"),
            "model": text("model"), "model_version": text("model_version"), "shape": json.dumps(shape),
            "touched": json.dumps(touched), "state": state, "used_in": json.dumps([str(v) for v in used_in]),
            "created": text("created") or "", "source": text("source"), "spacing": json.dumps(meta.get("spacing")),
            "author": text("author"), "content_hash": text("content_hash"),
            "reason": None if reason is None else str(reason)}


def _insert(db: sqlite3.Connection, row: dict) -> None:
    names = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    try:
        db.execute(f"INSERT INTO items ({names}) VALUES ({marks})", tuple(row.values()))
    except sqlite3.IntegrityError:  # the same upload twice (hashes are unique): keep both, one without
        db.execute(f"INSERT INTO items ({names}) VALUES ({marks})", tuple({**row, "content_hash": None}.values()))


def _old_rounds(path: Path) -> list[dict] | None:
    """The rounds of a damaged manifest, when they still read."""
    try:
        with closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM rounds ORDER BY id")]
    except sqlite3.Error:
        return None


def _adopt(db: sqlite3.Connection, folders: list[Path], report: RepairReport) -> list[int]:
    ids = []
    for folder in folders:
        try:
            row = _record(folder)
        except ValueError as exc:
            report.kept.append(str(exc))
            continue
        _insert(db, row)
        report.restored[row["state"]] = report.restored.get(row["state"], 0) + 1
        ids.append(row["id"])
    return ids


def repair_queue(root: str | os.PathLike) -> RepairReport:
    """Rebuild the manifest of the queue folder ``root`` from its item folders (see the module)."""
    from filelock import FileLock, Timeout

    root = Path(root)
    folders = item_folders(root)
    if not root.is_dir() or (not folders and not (root / MANIFEST).is_file()):
        raise QueueError(f"{root}: no queue here (no {MANIFEST} and no item folders)")
    lock = FileLock(root / "worker.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise QueueError(f"{root}: a worker is running on this queue; stop it before `queue repair`") from None
    try:
        report = RepairReport(root, _problem(root))
        try:
            if report.problem is None:
                _adopt_orphans(root, folders, report)
            else:
                _rebuild(root, folders, report)
        except sqlite3.Error as exc:
            raise sqlite_error(root, exc) from exc
    finally:
        lock.release()
    return report


def _adopt_orphans(root: Path, folders: list[Path], report: RepairReport) -> None:
    """A healthy manifest: record the item folders it lacks; name the records whose folder is gone."""
    with closing(sqlite3.connect(root / MANIFEST, timeout=60, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        going = {r[0] for r in db.execute("SELECT item FROM writes WHERE item IS NOT NULL")} \
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'writes'").fetchone() else set()
        db.execute("BEGIN IMMEDIATE")
        held = {int(r[0]) for r in db.execute("SELECT id FROM items")}
        orphans = [f for f in folders if int(f.name) not in held and int(f.name) not in going]
        report.adopted = _adopt(db, orphans, report)
        db.execute("COMMIT")
        counts = dict(db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())
    report.restored = {s: counts.get(s, 0) for s in STATES}
    present = {int(f.name) for f in folders}
    report.missing = sorted(held - present)


def _rebuild(root: Path, folders: list[Path], report: RepairReport) -> None:
    """Move the damaged manifest aside and build a new one from the item folders."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = root / f"{MANIFEST}.damaged-{stamp}"
    n = 1
    while any(aside.with_name(aside.name + s).exists() for s in ("", "-wal", "-shm")):  # never over an earlier one
        n += 1
        aside = root / f"{MANIFEST}.damaged-{stamp}-{n}"
    for suffix in ("", "-wal", "-shm"):  # a -wal left beside a new file would be replayed into it
        source = root / f"{MANIFEST}{suffix}"
        if source.exists():
            target = aside.with_name(aside.name + suffix)
            os.replace(source, target)
            report.moved_aside.append(target)
    rounds = _old_rounds(aside) if aside.exists() else None
    fresh = root / f"{MANIFEST}.rebuilding"
    fresh.unlink(missing_ok=True)  # our own half-built file from a repair cut short
    with closing(sqlite3.connect(fresh, isolation_level=None)) as db:
        db.executescript(SCHEMA)
        migrate_schema(db)
        db.execute("BEGIN IMMEDIATE")
        _adopt(db, folders, report)
        for r in rounds or []:
            if r.get("state") == RoundState.RUNNING.value:
                r = {**r, "state": RoundState.INTERRUPTED.value}
            keys = [k for k in r if k in ("id", "model", "version", "state", "started", "heartbeat", "epoch", "epochs",
                                          "loss", "eta_s", "items", "metrics", "message")]
            try:
                db.execute(f"INSERT INTO rounds ({', '.join(keys)}) VALUES ({', '.join('?' for _ in keys)})",
                           tuple(r[k] for k in keys))
            except sqlite3.Error:  # a row the damage reached: that round's history is lost
                continue
        db.execute("COMMIT")
    os.replace(fresh, root / MANIFEST)
    with closing(sqlite3.connect(root / MANIFEST, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
    if rounds is not None:
        with closing(sqlite3.connect(root / MANIFEST)) as db:
            report.rounds = db.execute("SELECT COUNT(*) FROM rounds").fetchone()[0]
