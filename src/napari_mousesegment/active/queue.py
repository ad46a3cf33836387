"""The durable queue of corrections: arrays on disk, the manifest in SQLite (WAL).

Layout of a queue folder::

    queue.sqlite            items (id, kind, organ, condition, model, state, used_in, author,
                            content_hash, ...) and rounds
    items/<id>/             image.tif, labels.tif, prediction.tif (optional), item.json
    tmp/                    items being written; whatever is left here after a crash is deleted

An item is written in full under ``tmp/``, then renamed to ``items/<id>`` inside the SQLite
transaction that records it, so a crash leaves either the whole item or nothing. The viewer and
a worker can use the queue at the same time (on one machine: SQLite's WAL mode needs the
processes to share memory, so the folder must not be on a network filesystem).

An item may carry the content hash of its upload (see :mod:`..remote.protocol`): the hash is
unique in the table, so a retried upload returns the item already held instead of a second one.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..io.tiff import read_array, write_array
from .rounds import Round, RoundState

KINDS = ("ct", "ultrasound")
STATES = ("pending", "used", "failed")  #: failed: could not be read or trained on; see Item.reason
_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, organ TEXT, condition TEXT, model TEXT, model_version TEXT,
    shape TEXT NOT NULL, touched TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
    used_in TEXT NOT NULL DEFAULT '[]', created TEXT NOT NULL, source TEXT, spacing TEXT,
    author TEXT, content_hash TEXT, reason TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT, version TEXT, state TEXT NOT NULL,
    started TEXT NOT NULL, heartbeat REAL, epoch INTEGER, epochs INTEGER, loss REAL, eta_s REAL,
    items TEXT, metrics TEXT, message TEXT
);
"""
#: Columns added after the first release: queue files made before them gain them on first use.
_ADDED_COLUMNS = {"author": "TEXT", "content_hash": "TEXT", "reason": "TEXT"}


def _migrate(db: sqlite3.Connection) -> None:
    """Give an older queue file the columns added since, and the unique index of content hashes
    (NULL for items queued without one: SQLite lets any number of NULLs share a unique index)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(items)")}
    missing = {name: kind for name, kind in _ADDED_COLUMNS.items() if name not in have}
    index = "CREATE UNIQUE INDEX IF NOT EXISTS items_content_hash ON items (content_hash)"
    if not missing and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'items_content_hash'").fetchone():
        return
    db.execute("BEGIN IMMEDIATE")  # two processes opening an old file: one migrates, the other sees it done
    try:
        have = {row[1] for row in db.execute("PRAGMA table_info(items)")}
        for name, kind in missing.items():
            if name not in have:
                db.execute(f"ALTER TABLE items ADD COLUMN {name} {kind}")
        db.execute(index)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _age(path: Path) -> float:
    """Seconds since ``path`` changed; 0 when another process has just removed it."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


class QueueError(ValueError):
    """Bad input to the queue (shapes, empty corrections, unknown items); nothing was changed."""


class StorageError(QueueError):
    """The queue could not store a good correction (a full disk, a read-only folder); nothing was
    changed, and the same correction may be sent again once there is room."""


@dataclass
class Item:
    """One queued correction and what it came from."""

    id: int
    kind: str
    organ: str | None
    condition: str | None
    model: str | None
    model_version: str | None
    shape: tuple[int, ...]
    touched: list[int]  #: frames (ultrasound) or slices (ct) where the labels differ from the prediction
    state: str
    used_in: list[str] = field(default_factory=list)
    created: str = ""
    source: str | None = None
    folder: Path | None = None
    spacing: tuple[float, float, float] | None = None  #: mm, micro-CT items
    author: str | None = None  #: the lab server's user who sent it (None: queued locally)
    content_hash: str | None = None  #: sha256 of the upload (remote.protocol.content_hash), if sent
    reason: str | None = None  #: why the item is ``failed`` (it could not be read or trained on)

    def as_json(self) -> dict:
        """The item as ``queue list --json`` prints it (and the lab server answers it)."""
        return {k: (str(v) if k == "folder" else v) for k, v in asdict(self).items()}

    def image(self) -> np.ndarray:
        return self._array("image")

    def labels(self) -> np.ndarray:
        labels = self._array("labels")
        if not np.issubdtype(labels.dtype, np.integer):
            raise QueueError(f"{self.folder / 'labels.tif'}: labels read back as {labels.dtype}, not integers")
        return labels

    def _array(self, name: str) -> np.ndarray:
        """An array of the item as it was queued: a damaged file that still reads, but with another
        shape than the one recorded, is refused rather than trained on."""
        import tifffile

        path = self.folder / f"{name}.tif"
        plane = tuple(self.shape[-2:])
        try:  # only the pages the item has (write_array writes one per frame): a damaged page chain can
            # otherwise send tifffile walking for minutes
            with tifffile.TiffFile(path) as tif:
                first = tuple(tif.pages.first.shape)
                if first[-2:] != plane:  # a damaged header may declare a page of gigabytes: check first
                    raise QueueError(f"{path}: pages of shape {first}, but the item was queued as {tuple(self.shape)}")
            array = tifffile.imread(path, key=range(self.shape[0])) if len(self.shape) == 3 else read_array(path)
        except QueueError:
            raise
        except Exception as exc:  # tifffile raises many types for damaged files
            raise QueueError(f"{path}: not a readable TIFF ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})") from exc
        if array.ndim == 2 and len(self.shape) == 3 and self.shape[0] == 1:
            array = array[None]
        if tuple(array.shape) != tuple(self.shape):
            raise QueueError(f"{path}: shape {tuple(array.shape)}, but the item was queued as {tuple(self.shape)}")
        return array


def touched_planes(labels: np.ndarray, prediction: np.ndarray | None) -> list[int]:
    """Frames or slices (first axis) where the correction differs from the prediction; without a
    prediction, those with any label."""
    if prediction is None:
        return [int(k) for k in np.nonzero(labels.reshape(len(labels), -1).any(1))[0]]
    diff = (labels != prediction).reshape(len(labels), -1).any(1)
    return [int(k) for k in np.nonzero(diff)[0]]


class Queue:
    """A queue folder; created on first use."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        (self.root / "items").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        for attempt in range(100):  # two processes creating the same new queue: one waits for the other
            try:
                with closing(self._connect()) as db:
                    db.executescript(_SCHEMA)
                    _migrate(db)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.05 + 0.01 * attempt)
        self._clean()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.root / "queue.sqlite", timeout=60, isolation_level=None)
        db.execute("PRAGMA busy_timeout=60000")
        db.execute("PRAGMA journal_mode=WAL")  # switching a new file to WAL can still report "locked": see __init__
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so writers queue up, never interleave."""
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _clean(self) -> None:
        """Delete what a crash left: half-written items in tmp/, and item folders with no record."""
        for leftover in (self.root / "tmp").iterdir():
            if _age(leftover) > 600:  # another process may be writing a fresh one
                shutil.rmtree(leftover, ignore_errors=True)
        with closing(self._connect()) as db:
            known = {str(r["id"]) for r in db.execute("SELECT id FROM items")}
        for folder in (self.root / "items").iterdir():
            if folder.name not in known and _age(folder) > 600:
                shutil.rmtree(folder, ignore_errors=True)

    def add(self, image: np.ndarray, labels: np.ndarray, kind: str, **fields) -> Item:
        """Store one correction durably and return it; bad input raises :class:`QueueError`.

        The keyword fields are those of :meth:`add_once`; an item of the same ``content_hash``
        already held is returned instead of a second one.
        """
        return self.add_once(image, labels, kind, **fields)[0]

    def find(self, content_hash: str) -> Item | None:
        """The item queued with this content hash, if any."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM items WHERE content_hash = ?", (content_hash,)).fetchone()
        return None if row is None else self._item(row)

    def add_once(self, image: np.ndarray, labels: np.ndarray, kind: str, *, organ: str | None = None,
                 condition: str | None = None, model: str | None = None, model_version: str | None = None,
                 prediction: np.ndarray | None = None, source: str | None = None,
                 spacing: tuple[float, float, float] | None = None, author: str | None = None,
                 content_hash: str | None = None) -> tuple[Item, bool]:
        """Store one correction durably; returns it and whether it is new.

        With ``content_hash``, an item already held with that hash is returned (``created`` False)
        and nothing is written, also when two uploads of it race: the check and the insert happen
        in one write transaction, and the hash is unique in the table.
        """
        if content_hash is not None and (held := self.find(content_hash)) is not None:
            return held, False
        image, labels = np.asarray(image), np.asarray(labels)
        if kind not in KINDS:
            raise QueueError(f"kind must be one of {KINDS}, got {kind!r}")
        if (organ is None) == (condition is None):
            raise QueueError("give exactly one of organ (ultrasound) or condition (ct)")
        if kind == "ultrasound" and organ is None or kind == "ct" and condition is None:
            raise QueueError(f"a {kind} correction needs {'--organ' if kind == 'ultrasound' else '--condition'}")
        if kind == "ct" and (spacing is None or len(spacing) != 3 or min(spacing) <= 0):
            raise QueueError(f"a micro-CT correction needs the voxel size (z, y, x) in mm, got {spacing!r}")
        if image.ndim != 3:
            raise QueueError(f"the image must be a (frames or slices, y, x) stack, got shape {image.shape}")
        if labels.shape != image.shape:
            raise QueueError(f"labels of shape {labels.shape} do not match the image's {image.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise QueueError(f"labels must be integers, got {labels.dtype}")
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            raise QueueError("the image contains NaN or infinite values")
        if prediction is not None and np.asarray(prediction).shape != labels.shape:
            raise QueueError(f"the prediction's shape {np.asarray(prediction).shape} differs from the labels' {labels.shape}")
        touched = touched_planes(labels, None if prediction is None else np.asarray(prediction))
        if not labels.any() or not touched:
            raise QueueError("the correction is empty (no labels, or identical to the prediction): nothing to learn")
        staging = self.root / "tmp" / uuid.uuid4().hex
        staging.mkdir()
        try:
            arrays = {"image": image, "labels": labels, "prediction": prediction}
            for name, array in arrays.items():
                if array is not None:
                    write_array(staging / f"{name}.tif", array)
            created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            meta = {"kind": kind, "organ": organ, "condition": condition, "model": model,
                    "model_version": model_version, "shape": list(image.shape), "touched": touched,
                    "created": created, "source": source, "spacing": spacing and list(map(float, spacing)),
                    "author": author, "content_hash": content_hash}
            (staging / "item.json").write_text(json.dumps(meta, indent=2))
            for f in staging.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            with self._transaction() as db:
                twin = content_hash and db.execute("SELECT id FROM items WHERE content_hash = ?",
                                                   (content_hash,)).fetchone()
                if twin:  # the same upload, committed by a concurrent request since the check above
                    item_id = int(twin["id"])
                else:
                    cur = db.execute(
                        "INSERT INTO items (kind, organ, condition, model, model_version, shape, touched, created,"
                        " source, spacing, author, content_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (kind, organ, condition, model, model_version, json.dumps(list(image.shape)),
                         json.dumps(touched), created, source, json.dumps(meta["spacing"]), author, content_hash))
                    item_id = int(cur.lastrowid)
                    target = self.root / "items" / str(item_id)
                    if target.exists():  # left by a crash between this rename and its commit: no record names it
                        shutil.rmtree(target)
                    os.replace(staging, target)
            if twin:
                shutil.rmtree(staging, ignore_errors=True)
        except OSError as exc:  # a full disk, a read-only folder: the queue is left as it was
            shutil.rmtree(staging, ignore_errors=True)
            raise StorageError(f"{self.root}: could not store the correction ({exc}); the queue is unchanged") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.get(item_id), not twin

    def _item(self, row: sqlite3.Row) -> Item:
        return Item(row["id"], row["kind"], row["organ"], row["condition"], row["model"], row["model_version"],
                    tuple(json.loads(row["shape"])), json.loads(row["touched"]), row["state"],
                    json.loads(row["used_in"]), row["created"], row["source"], self.root / "items" / str(row["id"]),
                    tuple(json.loads(row["spacing"])) if row["spacing"] and row["spacing"] != "null" else None,
                    row["author"], row["content_hash"], row["reason"] if "reason" in row.keys() else None)

    def get(self, item_id: int) -> Item:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM items WHERE id = ?", (int(item_id),)).fetchone()
        if row is None:
            raise QueueError(f"{self.root}: no item {item_id}")
        return self._item(row)

    def items(self, state: str | None = None) -> list[Item]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM items" + (" WHERE state = ?" if state else "") + " ORDER BY id",
                              (state,) if state else ()).fetchall()
        return [self._item(r) for r in rows]

    def status(self) -> dict:
        """Counts by state, and the last training round."""
        with closing(self._connect()) as db:
            counts = dict(db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())
            last = db.execute("SELECT * FROM rounds ORDER BY id DESC LIMIT 1").fetchone()
        out = {"items": sum(counts.values()), **{s: counts.get(s, 0) for s in STATES}}
        out["last_round"] = dict(last) if last else None
        return out

    def remove(self, item_id: int) -> None:
        """Delete an item: its record first, then its files."""
        with self._transaction() as db:
            if db.execute("DELETE FROM items WHERE id = ?", (int(item_id),)).rowcount == 0:
                raise QueueError(f"{self.root}: no item {item_id}")
        shutil.rmtree(self.root / "items" / str(int(item_id)), ignore_errors=True)

    def mark_used(self, item_ids: list[int], version: str) -> None:
        with self._transaction() as db:
            for item_id in item_ids:
                row = db.execute("SELECT used_in FROM items WHERE id = ?", (item_id,)).fetchone()
                if row is not None:
                    used = json.loads(row["used_in"]) + [version]
                    db.execute("UPDATE items SET state = 'used', used_in = ? WHERE id = ?", (json.dumps(used), item_id))

    def mark_failed(self, item_ids: list[int], reason: str) -> None:
        """Set items aside as ``failed`` with the reason (one line): a worker skips them from then
        on, and ``queue list`` shows why. Their files are kept, to try again with :meth:`retry`."""
        with self._transaction() as db:
            for item_id in item_ids:
                db.execute("UPDATE items SET state = 'failed', reason = ? WHERE id = ?", (reason[:500], int(item_id)))

    def retry(self, item_ids: list[int]) -> None:
        """Put failed items back to ``pending`` (after the cause was fixed)."""
        with self._transaction() as db:
            for item_id in item_ids:
                db.execute("UPDATE items SET state = 'pending', reason = NULL WHERE id = ? AND state = 'failed'",
                           (int(item_id),))

    # Training rounds: the worker records its progress here; the widget and `queue status` read it.
    def start_round(self, model: str, items: list[int]) -> int:
        with self._transaction() as db:
            cur = db.execute("INSERT INTO rounds (model, state, started, heartbeat, items) VALUES (?, ?, ?, ?, ?)",
                             (model, RoundState.RUNNING.value, time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.time(),
                              json.dumps(items)))
            return int(cur.lastrowid)

    def update_round(self, round_id: int, *, state: RoundState | None = None, metrics: dict | None = None,
                     **fields) -> None:
        """Record a round's progress (epoch, epochs, loss, eta_s), its end (state, version, metrics,
        message); every update is also a heartbeat."""
        fields["heartbeat"] = time.time()
        if state is not None:
            fields["state"] = RoundState(state).value
        if metrics is not None:
            fields["metrics"] = json.dumps(metrics)
        names = ", ".join(f"{k} = ?" for k in fields)
        with self._transaction() as db:
            db.execute(f"UPDATE rounds SET {names} WHERE id = ?", (*fields.values(), round_id))

    def rounds(self) -> list[Round]:
        """Every retraining round on this queue, oldest first."""
        with closing(self._connect()) as db:
            return [Round.from_row(dict(r)) for r in db.execute("SELECT * FROM rounds ORDER BY id")]
