"""The client's outbox: every correction is on the client's disk before it is sent to a lab server.

Layout (``$MOUSESEGMENT_OUTBOX``, else the platform's user data folder ``.../outbox``)::

    <server>/<hash>/          one waiting correction: meta.json, image.tif, labels.tif[, prediction.tif]
    <server>/refused/<hash>/  one the server refused as bad input (400, 413), with reason.txt
    <server>/.tmp-*/          an entry being written (or a crash's leftover, deleted later)

``<server>`` is a safe name made from the server's URL; ``<hash>`` is the correction's
:func:`.protocol.content_hash`, the one the server recognises, so sending an entry twice (a lost
answer, a crash between upload and removal) never makes a second item. An entry is written whole
(files fsynced, then one rename) before any upload, and removed only after the server has said it
holds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from .protocol import FILES, canonical_meta, content_hash

OUTBOX_ENV = "MOUSESEGMENT_OUTBOX"
REFUSED = "refused"
#: Statuses that mean "this correction itself is bad": it is set aside, not retried.
REFUSE_STATUSES = (400, 413)
_STALE_S = 600  # a .tmp-/.trash- folder older than this is a crash's leftover


class Damaged(ValueError):
    """An outbox entry whose files no longer match its content hash (set aside, never sent)."""


class Uploader(Protocol):
    """What sends an entry: :class:`.client.Client`. Its HTTP errors carry ``status``."""

    def upload(self, meta: Mapping[str, Any], files: Mapping[str, bytes | None], digest: str) -> dict: ...


def _refused(exc: Exception) -> bool:
    """Whether an upload error says the correction itself is bad (so retrying cannot help)."""
    return isinstance(exc, Damaged) or getattr(exc, "status", None) in REFUSE_STATUSES


def outbox_root() -> Path:
    """The outbox folder of this machine (not created here)."""
    root = os.environ.get(OUTBOX_ENV)
    if root:
        return Path(root).expanduser()
    import platformdirs

    return platformdirs.user_data_path("napari-mousesegment", appauthor=False) / "outbox"


def server_key(url: str) -> str:
    """A folder name for a server URL: readable, safe on every platform, distinct per URL."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    normal = f"{parts.scheme.lower()}://{host}:{port}{parts.path.rstrip('/')}"
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{host}_{port}{parts.path.rstrip('/')}").strip("_.")
    return f"{readable[:60]}-{hashlib.sha256(normal.encode()).hexdigest()[:10]}"


def wire_meta(meta: Mapping[str, Any]) -> dict:
    """The meta of an upload exactly as the server will parse it (every field, JSON values only),
    so that both sides hash the same thing."""
    return canonical_meta(json.loads(json.dumps(dict(meta))))


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows cannot open folders, and needs none)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Entry:
    """One correction waiting in the outbox."""

    hash: str
    folder: Path
    meta: dict  #: the upload's meta fields (see protocol.META)
    queued: float  #: time.time() when it was put

    def files(self) -> dict[str, bytes | None]:
        """The TIFF bytes of the entry, exactly as they will be uploaded."""
        return {name: (self.folder / f"{name}.tif").read_bytes() if (self.folder / f"{name}.tif").is_file()
                else None for name in FILES}


class Outbox:
    """The outbox of one server on this machine."""

    def __init__(self, url: str, root: str | os.PathLike | None = None) -> None:
        self.url = url
        self.folder = Path(root) if root is not None else outbox_root()
        self.folder = self.folder / server_key(url)

    def put(self, meta: Mapping[str, Any], files: Mapping[str, bytes | None]) -> str:
        """Keep a correction durably and return its content hash; putting the same one twice keeps one."""
        meta = wire_meta(meta)
        digest = content_hash(meta, files)
        target = self.folder / digest
        if (target / "meta.json").is_file():
            return digest
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.folder / f".tmp-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            record = {"hash": digest, "queued": time.time(), "meta": meta}
            contents = {f"{n}.tif": data for n, data in files.items() if n in FILES and data is not None}
            contents["meta.json"] = json.dumps(record, indent=2).encode()
            for name, data in contents.items():
                with open(staging / name, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            _fsync_dir(staging)
            try:
                os.replace(staging, target)
            except OSError:  # the same correction was put meanwhile (the target exists and is not empty)
                if not (target / "meta.json").is_file():
                    raise
                shutil.rmtree(staging, ignore_errors=True)
            _fsync_dir(self.folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return digest

    def _read(self, folder: Path) -> Entry | None:
        try:
            record = json.loads((folder / "meta.json").read_text())
            return Entry(folder.name, folder, record["meta"], float(record["queued"]))
        except (OSError, ValueError, KeyError, TypeError):  # removed meanwhile, or not an entry
            return None

    def pending(self) -> list[Entry]:
        """The corrections waiting to be sent, oldest first."""
        if not self.folder.is_dir():
            return []
        self._clean()
        entries = [self._read(p) for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and p.name != REFUSED]
        return sorted((e for e in entries if e is not None), key=lambda e: (e.queued, e.hash))

    def count(self) -> int:
        """How many corrections wait to be sent."""
        return len(self.pending())

    def refused(self) -> list[Entry]:
        """Corrections the server refused as bad input, kept with their reason (``reason.txt``)."""
        folder = self.folder / REFUSED
        entries = [self._read(p) for p in folder.iterdir()] if folder.is_dir() else []
        return sorted((e for e in entries if e is not None), key=lambda e: (e.queued, e.hash))

    def deliver(self, client: Uploader, digest: str, meta: Mapping[str, Any] | None = None,
                files: Mapping[str, bytes | None] | None = None) -> dict:
        """Upload one waiting entry and remove it once the server holds it; returns the server's
        answer ``{"item", "created"}``. A 400 or 413 sets the entry aside under ``refused/``; every
        other failure keeps it. The error is raised either way.

        ``meta`` and ``files``, when given, are the entry's content as just put: the upload then
        needs nothing from disk, so another sender on this machine delivering the same entry at
        the same moment does no harm.
        """
        folder = self.folder / digest
        if meta is None or files is None:
            entry = self._read(folder)
            if entry is None:
                raise FileNotFoundError(f"{folder}: no such correction in the outbox")
            meta, files = entry.meta, entry.files()
            if content_hash(meta, files) != digest:  # damaged on this disk: never send it as it is
                self._set_aside(folder, "its files no longer match their content hash (damaged on this disk)")
                raise Damaged(f"{folder}: damaged in the outbox; moved to {self.folder / REFUSED}")
        try:
            answer = client.upload(meta, files, digest)
        except (ValueError, OSError) as exc:
            if _refused(exc):
                self._set_aside(folder, str(exc))
            raise
        self._remove(folder)
        return answer

    def send(self, client: Uploader, report: Callable[[str, Exception], None] | None = None) -> tuple[int, int]:
        """Deliver the waiting corrections in order; returns (sent, failed).

        A refused correction (400, 413) is set aside and the next one is tried; any other failure
        (401, 403, 5xx, the server unreachable) stops here and keeps the rest for the next try.
        ``report(hash, error)`` is told of each failure.
        """
        sent = failed = 0
        for entry in self.pending():
            try:
                self.deliver(client, entry.hash)
            except FileNotFoundError:  # sent meanwhile by another process on this machine
                continue
            except (ValueError, OSError) as exc:  # ServerError, Damaged, Unreachable
                failed += 1
                if report is not None:
                    report(entry.hash, exc)
                if _refused(exc):
                    continue
                break
            sent += 1
        return sent, failed

    def _set_aside(self, folder: Path, reason: str) -> None:
        """Move a refused entry under refused/ with its reason: not retried, not lost."""
        target = self.folder / REFUSED / folder.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            (folder / "reason.txt").write_text(reason + "\n")
            if target.exists():
                self._remove(target)
            os.replace(folder, target)
        except FileNotFoundError:  # delivered or set aside meanwhile by another sender
            pass

    def _remove(self, folder: Path) -> None:
        """Remove an entry by one rename first, so that no half-deleted entry is ever read as one."""
        trash = self.folder / f".trash-{uuid.uuid4().hex}"
        try:
            os.replace(folder, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _clean(self) -> None:
        """Delete what a crash left: half-written (.tmp-) and half-deleted (.trash-) folders."""
        for path in self.folder.iterdir():
            if path.name.startswith((".tmp-", ".trash-")):
                try:
                    old = time.time() - path.stat().st_mtime > _STALE_S or path.name.startswith(".trash-")
                except FileNotFoundError:
                    continue
                if old:
                    shutil.rmtree(path, ignore_errors=True)
