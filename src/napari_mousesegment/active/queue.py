"""The durable queue of corrections: arrays on disk, the manifest in SQLite (WAL).

Layout of a queue folder::

    queue.sqlite            items (id, kind, organ, condition, model, state, used_in, author,
                            content_hash, ...), rounds, and writes (the folders in tmp/ in progress)
    items/<id>/             image.tif, labels.tif, prediction.tif (optional), item.json (the item's
                            record, state included, kept in step with queue.sqlite)
    tmp/                    items being written and items being removed

An item is written in full under ``tmp/``, then renamed to ``items/<id>`` inside the SQLite
transaction that records it, so a crash leaves either the whole item or nothing. The viewer and
a worker can use the queue at the same time (on one machine: SQLite's WAL mode needs the
processes to share memory, so the folder must not be on a network filesystem).

The queue never deletes what it cannot account for. A folder in ``tmp/`` is recorded in the
``writes`` table before it is made, and clean-up deletes only recorded ones a crash left (older
than 10 minutes); an item folder with no record is kept, and ``mousesegment queue repair``
(:mod:`.repair`) adopts it. When ``queue.sqlite`` is missing, empty or damaged while item
folders exist, opening the queue stops with one line pointing to ``queue repair``, which rebuilds
the manifest from each item's ``item.json``. Every SQLite error becomes a :class:`QueueError`
naming ``queue.sqlite`` (a :class:`StorageError` for a full disk or a read-only folder).

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

from ..io.jsonfile import read_object, write_object
from ..io.tiff import read_array, write_array
from .rounds import Round, RoundState

KINDS = ("ct", "ultrasound")
STATES = ("pending", "used", "failed")  #: failed: could not be read or trained on; see Item.reason
MANIFEST = "queue.sqlite"
#: Seconds after which a recorded folder in tmp/ is taken for a crash's leftover (a slow disk may
#: take minutes to write a large item).
STALE_S = 600.0
#: Largest instance id of an ultrasound correction (uint16 labels); CT labels are organ ids 0..255.
MAX_US_LABEL = 65535
MAX_CT_LABEL = 255
SCHEMA = """
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
CREATE TABLE IF NOT EXISTS writes (
    name TEXT PRIMARY KEY, started REAL NOT NULL, item INTEGER
);
"""
_TABLES = {"items", "rounds", "writes"}
#: Columns added after the first release: queue files made before them gain them on first use.
_ADDED_COLUMNS = {"author": "TEXT", "content_hash": "TEXT", "reason": "TEXT"}


def migrate_schema(db: sqlite3.Connection) -> None:
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


class QueueError(ValueError):
    """Bad input to the queue (shapes, empty corrections, unknown items), or a queue that cannot be
    used as it is (no queue, a damaged manifest); nothing was changed."""


class StorageError(QueueError):
    """The queue could not store a good correction (a full disk, a read-only folder); nothing was
    changed, and the same correction may be sent again once there is room."""


def repair_hint(root: Path) -> str:
    """The one command that rebuilds a queue's manifest, for error messages."""
    return f"rebuild the manifest from the item folders with `mousesegment queue repair --queue {root}`"


def sqlite_error(root: Path, exc: sqlite3.Error) -> QueueError:
    """An SQLite error as a one-line :class:`QueueError` naming the queue's manifest: damage points
    to ``queue repair``, a full disk or a read-only folder is a :class:`StorageError`."""
    path = Path(root) / MANIFEST
    code = getattr(exc, "sqlite_errorname", "") or ""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or "not a database" in text:
        return QueueError(f"{path}: damaged ({text}); nothing was changed: {repair_hint(Path(root))}")
    if (code.startswith(("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_PERM"))
            or "readonly" in text or "disk is full" in text or "unable to open" in text):
        return StorageError(f"{path}: {text}; nothing was changed")
    return QueueError(f"{path}: {text}")


def item_folders(root: str | os.PathLike) -> list[Path]:
    """The folders under ``items/`` named by an item id (what the queue writes), by id."""
    items = Path(root) / "items"
    if not items.is_dir():
        return []
    named = (p for p in items.iterdir() if p.name.isascii() and p.name.isdigit() and str(int(p.name)) == p.name
             and 0 < int(p.name) < 2**63)
    return sorted((p for p in named if p.is_dir()), key=lambda p: int(p.name))


def worker_lock_free(root: str | os.PathLike) -> bool:
    """Whether no worker holds the queue's ``worker.lock`` now (a lock file never made: none ever
    did). Nothing is created; a lock that cannot be checked counts as held."""
    from filelock import FileLock, Timeout

    path = Path(root) / "worker.lock"
    if not path.exists():
        return True
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except (Timeout, OSError):
        return False
    lock.release()
    return True


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


def touched_planes(labels: np.ndarray, prediction: np.ndarray | None, instances: bool = True) -> list[int]:
    """Frames or slices (first axis) where the correction differs from the prediction; without a
    prediction, those with any label.

    With ``instances`` (ultrasound) ids only name instances: ``predict`` numbers them per frame,
    ``roi import`` across the series, so the two are compared as segmentations. A plane is touched
    when its foreground differs or its partition into instances does (a merge, a split, a pixel
    moved from one instance to another), whatever the ids. Without (micro-CT, ids are organs),
    when any id differs.
    """
    if prediction is None:
        return [int(k) for k in np.nonzero(labels.reshape(len(labels), -1).any(1))[0]]
    labels, prediction = np.asarray(labels), np.asarray(prediction)
    diff = (labels != prediction).reshape(len(labels), -1).any(1)
    if instances:
        diff = np.array([bool(d) and not same_partition(labels[k], prediction[k]) for k, d in enumerate(diff)],
                        dtype=bool)
    return [int(k) for k in np.nonzero(diff)[0]]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two instance labelings are the same segmentation: the same foreground, and ids that
    map one to one between them (each instance of one is exactly one instance of the other)."""
    fg = a != 0
    if not np.array_equal(fg, b != 0):
        return False
    pairs = np.unique(np.stack([a[fg].astype(np.int64), b[fg].astype(np.int64)]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def check_fields(kind: str, organ: str | None, condition: str | None,
                 spacing: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
    """The names and voxel size of a correction checked before anything is read or written; returns
    the voxel size as floats (micro-CT) or None."""
    from ..io.readers import check_spacing

    if kind not in KINDS:
        raise QueueError(f"kind must be one of {KINDS}, got {kind!r}")
    if (organ is None) == (condition is None):
        raise QueueError("give exactly one of organ (ultrasound) or condition (ct)")
    if kind == "ultrasound" and organ is None or kind == "ct" and condition is None:
        raise QueueError(f"a {kind} correction needs {'--organ' if kind == 'ultrasound' else '--condition'}")
    name, option = (organ, "--organ") if organ is not None else (condition, "--condition")
    if not isinstance(name, str) or not name.strip() or name != name.strip() or len(name) > 64 \
            or not name.isprintable():
        raise QueueError(f"{option}: expected a name (1 to 64 printable characters, no surrounding spaces), "
                         f"got {name!r:.80}")
    if kind == "ct":
        if spacing is None or len(spacing) != 3:
            raise QueueError(f"a micro-CT correction needs the voxel size (z, y, x) in mm, got {spacing!r}")
        try:
            return check_spacing(spacing, "--spacing")
        except (TypeError, ValueError) as exc:
            raise QueueError(str(exc)) from None
    return None


def check_labels(labels: np.ndarray, kind: str, what: str = "labels") -> None:
    """Label values a correction may hold: instance ids 0..65535 (ultrasound), organ ids 0..255
    (micro-CT, as exported); anything else would be trained on silently wrapped or cut."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise QueueError(f"{what}: labels must be integers, got {labels.dtype}")
    if labels.size == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    top = MAX_US_LABEL if kind == "ultrasound" else MAX_CT_LABEL
    if low < 0 or high > top:
        ids = "instance ids" if kind == "ultrasound" else "organ ids"
        raise QueueError(f"{what}: values {low}..{high}; {kind} labels are {ids} from 0 to {top}")


def _id(item_id) -> int:
    """An item id as SQLite holds it; anything else is no item of any queue."""
    try:
        value = int(item_id)
    except (TypeError, ValueError):
        raise QueueError(f"{item_id!r:.40} is not an item id") from None
    if not 1 <= value < 2**63:
        raise QueueError(f"no item {value}" if value < 1 else f"no item {str(value)[:40]}")
    return value


class Queue:
    """A queue folder.

    ``create`` (the default, for ``queue add``, the worker, the widget and the lab server) makes a
    new queue where there is none. Without it (``queue list``, ``status``, ``remove``, ``export``,
    ``retry``) a folder that holds no queue is refused and nothing is created. Either way a
    manifest that is missing, empty or damaged while item folders exist stops here with a pointer
    to ``queue repair``.
    """

    def __init__(self, root: str | os.PathLike, *, create: bool = True) -> None:
        self.root = Path(root)
        self.create = create
        manifest = self.root / MANIFEST
        if not create and not self.root.is_dir():
            raise QueueError(f"{self.root}: no queue here ({'not a folder' if self.root.exists() else 'no such folder'})")
        folders = item_folders(self.root)
        size = manifest.stat().st_size if manifest.is_file() else None
        if not size:
            if folders:
                raise QueueError(self._lost(len(folders), "is missing" if size is None else "is empty (0 bytes)"))
            if not create:
                raise QueueError(f"{self.root}: no queue here (no {MANIFEST})")
        if create:
            try:
                (self.root / "items").mkdir(parents=True, exist_ok=True)
                (self.root / "tmp").mkdir(exist_ok=True)
            except OSError as exc:
                raise StorageError(f"{self.root}: cannot make a queue here ({exc.strerror or exc})") from None
        self._open(bool(folders))
        if create:
            self._clean()
            self.settle_rounds()

    def _lost(self, n: int, problem: str) -> str:
        return (f"{self.root / MANIFEST} {problem}, but {self.root / 'items'} holds {n} item folder(s); "
                f"nothing was changed: {repair_hint(self.root)}")

    def _open(self, has_folders: bool) -> None:
        """Check the manifest (its tables, SQLite's quick_check) and bring its schema up to date."""
        for attempt in range(100):  # two processes creating the same new queue: one waits for the other
            try:
                with closing(self._connect()) as db:
                    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                    if "items" not in tables and has_folders:
                        raise QueueError(self._lost(len(item_folders(self.root)), "holds no items table"))
                    if "items" not in tables and not self.create:
                        raise QueueError(f"{self.root}: no queue here ({MANIFEST} holds no queue)")
                    if not _TABLES <= tables or self.create:
                        db.executescript(SCHEMA)
                        migrate_schema(db)
                    problems = [r[0] for r in db.execute("PRAGMA quick_check")]
                    if problems != ["ok"]:
                        raise QueueError(f"{self.root / MANIFEST}: fails SQLite's integrity check "
                                         f"({problems[0][:200]}); nothing was changed: {repair_hint(self.root)}")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise sqlite_error(self.root, exc) from exc
                time.sleep(0.05 + 0.01 * attempt)
            except sqlite3.Error as exc:
                raise sqlite_error(self.root, exc) from exc
        if has_folders:
            self._check_not_emptied()

    def _check_not_emptied(self) -> None:
        """A manifest with no items while item folders exist was emptied: stop before anything
        trusts it. Counted under the write lock, so an item being added (renamed before its
        commit) is not taken for a lost one; a read-only manifest has no writer to wait for."""
        def count(db: sqlite3.Connection) -> tuple[int, list[Path]]:
            held = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            going = {str(r[0]) for r in db.execute("SELECT item FROM writes WHERE item IS NOT NULL")}
            return held, [f for f in item_folders(self.root) if f.name not in going]

        with self._reading() as db:
            held, folders = count(db)
        if held or not folders:
            return
        try:
            with self._transaction() as db:
                held, folders = count(db)
        except StorageError:
            pass
        if not held and folders:
            raise QueueError(self._lost(len(folders), "records no items"))

    def _connect(self) -> sqlite3.Connection:
        if self.create:
            db = sqlite3.connect(self.root / MANIFEST, timeout=60, isolation_level=None)
        else:  # never creates the file
            db = sqlite3.connect(f"{(self.root / MANIFEST).absolute().as_uri()}?mode=rw", timeout=60,
                                 isolation_level=None, uri=True)
        db.execute("PRAGMA busy_timeout=60000")
        db.execute("PRAGMA journal_mode=WAL")  # switching a new file to WAL can still report "locked": see _open
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads; SQLite's errors become one-line :class:`QueueError`s."""
        try:
            with closing(self._connect()) as db:
                yield db
        except sqlite3.Error as exc:
            raise sqlite_error(self.root, exc) from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so writers queue up, never interleave."""
        try:
            with closing(self._connect()) as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise sqlite_error(self.root, exc) from exc

    def _clean(self) -> None:
        """Finish what a crash left in ``tmp/``: only folders recorded in ``writes`` more than
        :data:`STALE_S` ago (an item half written, an item half removed). Nothing else is deleted."""
        with self._reading() as db:
            stale = db.execute("SELECT name, item FROM writes WHERE started < ?", (time.time() - STALE_S,)).fetchall()
            held = {str(r[0]) for r in db.execute("SELECT id FROM items")} if stale else set()
        for row in stale:
            name, item = str(row["name"]), row["item"]
            if Path(name).name != name or name in ("", ".", ".."):
                continue  # not a name this queue wrote
            leftover = self.root / "tmp" / name
            if item is not None and str(item) not in held and (self.root / "items" / str(item)).is_dir():
                os.replace(self.root / "items" / str(item), leftover)  # a removal cut short: finish it
            shutil.rmtree(leftover, ignore_errors=True)
            if not leftover.exists():
                with self._transaction() as db:
                    db.execute("DELETE FROM writes WHERE name = ?", (name,))

    def scratch_folder(self, prefix: str = "scratch-") -> Path:
        """A new folder under ``tmp/`` for a caller's temporary files (the lab server's uploads),
        recorded first so that clean-up removes it if a crash leaves it; give it back with
        :meth:`drop_scratch`. A full disk is an OSError (making the folder) or a StorageError."""
        name = f"{prefix}{uuid.uuid4().hex}"
        with self._transaction() as db:
            db.execute("INSERT INTO writes (name, started) VALUES (?, ?)", (name, time.time()))
        folder = self.root / "tmp" / name
        try:
            folder.mkdir(parents=True)
        except OSError:
            self._forget_write(name)
            raise
        return folder

    def drop_scratch(self, folder: Path) -> None:
        """Delete a folder of :meth:`scratch_folder` and its record."""
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            self._forget_write(folder.name)

    def add(self, image: np.ndarray, labels: np.ndarray, kind: str, **fields) -> Item:
        """Store one correction durably and return it; bad input raises :class:`QueueError`.

        The keyword fields are those of :meth:`add_once`; an item of the same ``content_hash``
        already held is returned instead of a second one.
        """
        return self.add_once(image, labels, kind, **fields)[0]

    def find(self, content_hash: str) -> Item | None:
        """The item queued with this content hash, if any."""
        with self._reading() as db:
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
        spacing = check_fields(kind, organ, condition, spacing)
        if image.ndim != 3:
            raise QueueError(f"the image must be a (frames or slices, y, x) stack, got shape {image.shape}")
        if labels.shape != image.shape:
            raise QueueError(f"labels of shape {labels.shape} do not match the image's {image.shape}")
        check_labels(labels, kind)
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            raise QueueError("the image contains NaN or infinite values")
        if prediction is not None and np.asarray(prediction).shape != labels.shape:
            raise QueueError(f"the prediction's shape {np.asarray(prediction).shape} differs from the labels' {labels.shape}")
        touched = touched_planes(labels, None if prediction is None else np.asarray(prediction),
                                 instances=kind == "ultrasound")
        if not labels.any() or not touched:
            raise QueueError("the correction is empty (no labels, or identical to the prediction): nothing to learn")
        name = uuid.uuid4().hex
        staging = self.root / "tmp" / name
        with self._transaction() as db:  # recorded before it exists: clean-up deletes only what it knows
            db.execute("INSERT INTO writes (name, started) VALUES (?, ?)", (name, time.time()))
        target, committed, twin = None, False, None
        try:
            staging.mkdir(parents=True)
            arrays = {"image": image, "labels": labels, "prediction": prediction}
            for part, array in arrays.items():
                if array is not None:
                    write_array(staging / f"{part}.tif", array)
            created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            meta = {"kind": kind, "organ": organ, "condition": condition, "model": model,
                    "model_version": model_version, "shape": list(image.shape), "touched": touched,
                    "created": created, "source": source, "spacing": spacing and list(map(float, spacing)),
                    "author": author, "content_hash": content_hash, "state": "pending", "used_in": [],
                    "reason": None}
            write_object(staging / "item.json", meta)
            for f in staging.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            with self._transaction() as db:
                twin = content_hash and db.execute("SELECT id FROM items WHERE content_hash = ?",
                                                   (content_hash,)).fetchone()
                if twin:  # the same upload, committed by a concurrent request since the check above
                    item_id = int(twin["id"])
                else:
                    item_id = self._next_id(db)
                    db.execute(
                        "INSERT INTO items (id, kind, organ, condition, model, model_version, shape, touched,"
                        " created, source, spacing, author, content_hash)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (item_id, kind, organ, condition, model, model_version, json.dumps(list(image.shape)),
                         json.dumps(touched), created, source, json.dumps(meta["spacing"]), author, content_hash))
                    target = self.root / "items" / str(item_id)
                    os.replace(staging, target)
                db.execute("DELETE FROM writes WHERE name = ?", (name,))
            committed = True
        except (OSError, StorageError) as exc:  # a full disk, a read-only folder: the queue is left as it was
            self._undo_add(name, staging, target, committed)
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"{self.root}: could not store the correction ({exc}); the queue is unchanged") from exc
        except BaseException:
            self._undo_add(name, staging, target, committed)
            raise
        if twin:
            shutil.rmtree(staging, ignore_errors=True)
            self._forget_write(name)
        return self.get(item_id), not twin

    def _next_id(self, db: sqlite3.Connection) -> int:
        """The id of a new item: past every id used so far and every item folder (one a crash left
        without a record keeps its id, for ``queue repair`` to adopt)."""
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        top = db.execute("SELECT MAX(id) FROM items").fetchone()[0]
        item_id = max(int(row[0]) if row else 0, int(top or 0)) + 1
        while (self.root / "items" / str(item_id)).exists():
            item_id += 1
        return item_id

    def _undo_add(self, name: str, staging: Path, target: Path | None, committed: bool) -> None:
        """Take back an add that failed before its commit: the renamed folder back to tmp/, then gone."""
        if committed:
            return
        try:
            if target is not None and target.is_dir() and not staging.exists():
                os.replace(target, staging)
        except OSError:
            pass
        shutil.rmtree(staging, ignore_errors=True)
        if not staging.exists():
            self._forget_write(name)

    def _forget_write(self, name: str) -> None:
        try:
            with self._transaction() as db:
                db.execute("DELETE FROM writes WHERE name = ?", (name,))
        except QueueError:  # e.g. still a full disk: the record stays, clean-up finds nothing to delete
            pass

    def _item(self, row: sqlite3.Row) -> Item:
        keys = row.keys()

        def get(name: str):
            return row[name] if name in keys else None

        spacing = json.loads(row["spacing"]) if row["spacing"] else None
        return Item(row["id"], row["kind"], row["organ"], row["condition"], row["model"], row["model_version"],
                    tuple(json.loads(row["shape"])), json.loads(row["touched"]), row["state"],
                    json.loads(row["used_in"] or "[]"), row["created"], row["source"],
                    self.root / "items" / str(row["id"]), tuple(spacing) if spacing else None,
                    get("author"), get("content_hash"), get("reason"))

    def get(self, item_id: int) -> Item:
        with self._reading() as db:
            row = db.execute("SELECT * FROM items WHERE id = ?", (_id(item_id),)).fetchone()
        if row is None:
            raise QueueError(f"{self.root}: no item {item_id}")
        return self._item(row)

    def items(self, state: str | None = None) -> list[Item]:
        with self._reading() as db:
            rows = db.execute("SELECT * FROM items" + (" WHERE state = ?" if state else "") + " ORDER BY id",
                              (state,) if state else ()).fetchall()
        try:
            return [self._item(r) for r in rows]
        except (ValueError, TypeError) as exc:  # a row edited by hand into something that is not JSON
            raise QueueError(f"{self.root / MANIFEST}: an item record is damaged ({exc}); "
                             f"{repair_hint(self.root)}") from None

    def status(self) -> dict:
        """Counts by state, the last training round, and the failed items with their reasons."""
        self.settle_rounds()
        with self._reading() as db:
            counts = dict(db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())
            last = db.execute("SELECT * FROM rounds ORDER BY id DESC LIMIT 1").fetchone()
            failed = db.execute("SELECT id, reason FROM items WHERE state = 'failed' ORDER BY id").fetchall()
        out = {"items": sum(counts.values()), **{s: counts.get(s, 0) for s in STATES}}
        out["last_round"] = self._alive(dict(last)) if last else None
        out["failed_items"] = [{"id": r["id"], "reason": r["reason"]} for r in failed]
        return out

    def remove(self, item_id: int) -> None:
        """Delete an item: its record first (with a note of the folder to delete), then its files;
        a crash in between leaves the note, and clean-up finishes the removal."""
        item_id = _id(item_id)
        name = f"removed-{item_id}-{uuid.uuid4().hex[:8]}"
        with self._transaction() as db:
            if db.execute("DELETE FROM items WHERE id = ?", (int(item_id),)).rowcount == 0:
                raise QueueError(f"{self.root}: no item {item_id}")
            db.execute("INSERT INTO writes (name, started, item) VALUES (?, ?, ?)", (name, time.time(), int(item_id)))
        folder, trash = self.root / "items" / str(int(item_id)), self.root / "tmp" / name
        if folder.is_dir():
            trash.parent.mkdir(exist_ok=True)
            os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
        if not trash.exists():
            self._forget_write(name)

    def _sidecar(self, item_id: int, **changes) -> None:
        """Keep ``items/<id>/item.json`` in step with the record (what ``queue repair`` restores from)."""
        path = self.root / "items" / str(int(item_id)) / "item.json"
        if not path.parent.is_dir():
            return
        try:
            meta = read_object(path)
        except (OSError, ValueError):
            meta = {}
        write_object(path, {**meta, **changes})

    def mark_used(self, item_ids: list[int], version: str) -> None:
        with self._transaction() as db:
            for item_id in item_ids:
                row = db.execute("SELECT used_in FROM items WHERE id = ?", (item_id,)).fetchone()
                if row is not None:
                    used = json.loads(row["used_in"]) + [version]
                    db.execute("UPDATE items SET state = 'used', used_in = ? WHERE id = ?", (json.dumps(used), item_id))
                    self._sidecar(item_id, state="used", used_in=used)

    def mark_failed(self, item_ids: list[int], reason: str) -> None:
        """Set items aside as ``failed`` with the reason (one line): a worker skips them from then
        on, and ``queue list`` shows why. Their files are kept, to try again with :meth:`retry`."""
        reason = " ".join(str(reason).split())[:500]
        with self._transaction() as db:
            for item_id in item_ids:
                if db.execute("UPDATE items SET state = 'failed', reason = ? WHERE id = ?",
                              (reason, int(item_id))).rowcount:
                    self._sidecar(item_id, state="failed", reason=reason)

    def retry(self, item_ids: list[int]) -> list[int]:
        """Put failed items back to ``pending`` (after the cause was fixed); returns those that were
        failed (an id that is not is left as it is)."""
        done = []
        with self._transaction() as db:
            for item_id in item_ids:
                if db.execute("UPDATE items SET state = 'pending', reason = NULL WHERE id = ? AND state = 'failed'",
                              (_id(item_id),)).rowcount:
                    self._sidecar(item_id, state="pending", reason=None)
                    done.append(int(item_id))
        return done

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

    def settle_rounds(self) -> list[int]:
        """Record the rounds a dead worker left ``running`` as interrupted, when no worker holds the
        lock (a live worker holds it for its whole pass); returns their ids. A manifest that cannot
        be written (read-only) is left as it is: :meth:`status` and :meth:`rounds` still show them
        interrupted."""
        with self._reading() as db:
            running = [r[0] for r in db.execute("SELECT id FROM rounds WHERE state = ?", (RoundState.RUNNING.value,))]
        if not running or not worker_lock_free(self.root):
            return []
        try:
            with self._transaction() as db:
                for round_id in running:
                    db.execute("UPDATE rounds SET state = ?, message = ? WHERE id = ? AND state = ?",
                               (RoundState.INTERRUPTED.value, "the worker stopped mid-round; its items stay pending",
                                round_id, RoundState.RUNNING.value))
        except StorageError:
            return []
        return running

    def _alive(self, row: dict) -> dict:
        """A round row, shown ``interrupted`` when it says running but no worker holds the lock."""
        if row.get("state") == RoundState.RUNNING.value and worker_lock_free(self.root):
            row = {**row, "state": RoundState.INTERRUPTED.value,
                   "message": row.get("message") or "the worker stopped mid-round; its items stay pending"}
        return row

    def rounds(self) -> list[Round]:
        """Every retraining round on this queue, oldest first."""
        with self._reading() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM rounds ORDER BY id")]
        if any(r["state"] == RoundState.RUNNING.value for r in rows):
            rows = [self._alive(r) for r in rows]
        return [Round.from_row(r) for r in rows]
