"""The lab server's users: names, roles and tokens, in ``users.sqlite`` beside the queue.

A token is ``NAME.SECRET`` (a 256-bit random secret). Only a salted scrypt hash of the secret is
stored, so the database gives no token away; the name in the token picks the one row to check.
A checked token is remembered (as its sha256, in memory) for a few minutes, but each request
still reads the user's row, so a revocation made while the server runs refuses the token at once.
Needs no server packages: ``mousesegment users`` works without the ``server`` extra.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from ..remote.protocol import ROLES

DATABASE = "users.sqlite"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, salt BLOB NOT NULL, token_hash BLOB NOT NULL,
    created TEXT NOT NULL, revoked TEXT
);
"""
CACHE_S = 300.0  #: how long a checked token skips the scrypt hash (revocation is still read each time)


@dataclass(frozen=True)
class User:
    """A row of ``users list``: never the token or its hash."""

    name: str
    role: str
    created: str
    revoked: str | None = None

    def may(self, role: str) -> bool:
        """Whether this user has ``role``'s rights (a maintainer has an annotator's too)."""
        return ROLES.index(self.role) >= ROLES.index(role)


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Users:
    """The users of the server whose queue is ``queue_dir``."""

    def __init__(self, queue_dir: str | os.PathLike) -> None:
        self.path = Path(queue_dir) / DATABASE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._checked: dict[bytes, tuple[bytes, float]] = {}  # sha256(token) -> (stored hash, until)
        self._lock = threading.Lock()
        with closing(self._connect()) as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.row_factory = sqlite3.Row
        return db

    def add(self, name: str, role: str) -> str:
        """Create ``name`` with ``role`` (or give a revoked user a new token); returns the token,
        which is stored nowhere."""
        if not _NAME.match(name or ""):
            raise ValueError(f"user name {name!r}: use letters, digits, '_' and '-' (at most 64), "
                             "starting with a letter or digit")
        if role not in ROLES:
            raise ValueError(f"role {role!r}: use one of {', '.join(ROLES)}")
        secret, salt = secrets.token_urlsafe(32), secrets.token_bytes(16)
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT revoked FROM users WHERE name = ?", (name,)).fetchone()
            if row is not None and row["revoked"] is None:
                db.execute("ROLLBACK")
                raise ValueError(f"user {name!r} exists; revoke it first (users revoke {name}) to issue a new token")
            db.execute("INSERT OR REPLACE INTO users (name, role, salt, token_hash, created, revoked) "
                       "VALUES (?, ?, ?, ?, ?, NULL)", (name, role, salt, _hash(secret, salt), _now()))
            db.execute("COMMIT")
        return f"{name}.{secret}"

    def list(self) -> list[User]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT name, role, created, revoked FROM users ORDER BY name").fetchall()
        return [User(r["name"], r["role"], r["created"], r["revoked"]) for r in rows]

    def revoke(self, name: str) -> None:
        """Refuse ``name``'s token from now on (the row is kept: items and promotions name it)."""
        with closing(self._connect()) as db:
            done = db.execute("UPDATE users SET revoked = ? WHERE name = ? AND revoked IS NULL", (_now(), name))
        if done.rowcount == 0:
            known = [u.name for u in self.list() if u.revoked is None]
            raise ValueError(f"no active user {name!r} (active: {', '.join(known) or 'none'})")

    def verify(self, token: str) -> User | None:
        """The user a token belongs to, or None for a malformed, unknown or revoked token."""
        name, dot, secret = (token or "").rpartition(".")
        if not dot or not name or not secret:
            return None
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        if row is None or row["revoked"] is not None:
            return None
        stored, key, now = bytes(row["token_hash"]), hashlib.sha256(token.encode()).digest(), time.monotonic()
        with self._lock:
            cached = self._checked.get(key)
        if not (cached and cached[0] == stored and cached[1] > now):
            if not hmac.compare_digest(_hash(secret, bytes(row["salt"])), stored):
                return None
            with self._lock:
                self._checked = {k: v for k, v in self._checked.items() if v[1] > now}
                self._checked[key] = (stored, now + CACHE_S)
        return User(row["name"], row["role"], row["created"], row["revoked"])
