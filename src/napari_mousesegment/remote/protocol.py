"""What the lab server and its clients agree on: routes, roles, and the content hash of a correction.

Both sides import this module, so a route or the hash cannot drift between them. Every route is
under :data:`API`; all but ``/health`` need ``Authorization: Bearer TOKEN``.

=======  ==============================  ==========  =====================================================
method   route                           role        body and answer
=======  ==============================  ==========  =====================================================
GET      /health                         none        {"status": "ok", "version", "worker"}
GET      /queue                          annotator   the JSON of ``queue status --json``
GET      /queue/items[?state=S]          annotator   the JSON of ``queue list --json``
POST     /queue/items                    annotator   multipart: ``meta`` (JSON text), files ``image``,
                                                     ``labels``, optional ``prediction`` (TIFFs);
                                                     201 {"item", "created": true}, or 200 with
                                                     "created": false when that content is already held
DELETE   /queue/items/{id}               maintainer  {"removed": id}
GET      /rounds                         annotator   the queue's rounds, oldest first
POST     /rounds                         maintainer  202 {"requested": true, "within_s"}: the worker's next
                                                     pass (409 when the server runs no worker)
GET      /models                         annotator   the JSON of ``models list --json``
GET      /models/{name}/versions         annotator   the JSON of ``models versions NAME --json``
POST     /models/{name}/promote          maintainer  {"version": V} -> {"name", "version", "by"}
POST     /models/{name}/rollback         maintainer  -> {"name", "version", "by"}
GET      /models/{name}/current          annotator   a zip of the current model folder; headers
                                                     X-Model-Version and X-Sha256 (of the zip)
=======  ==============================  ==========  =====================================================

Errors answer ``{"detail": "one line"}`` with 400 (bad input, named), 401 (no or bad token),
403 (role), 404, 409 (no worker), 413 (upload too large), 507 (no room to store a good upload:
clients keep it and send it again); never a token in the text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

API = "/api/v1"
ROLES = ("annotator", "maintainer")
#: The multipart file fields of an upload, in hashing order.
FILES = ("image", "labels", "prediction")
#: The meta fields of an upload (all JSON values; absent ones are null).
META = ("kind", "organ", "condition", "model", "model_version", "source", "spacing")
HASH_HEADER = "X-Sha256"
VERSION_HEADER = "X-Model-Version"
TOKEN_ENV = "MOUSESEGMENT_TOKEN"
DEFAULT_PORT = 8765


def canonical_meta(meta: Mapping) -> dict:
    """The meta fields of an upload, every one present, in a fixed form."""
    return {key: meta.get(key) for key in META}


def content_hash(meta: Mapping, files: Mapping[str, bytes | None]) -> str:
    """sha256 of a correction: its canonical meta JSON, then each file's length and bytes.

    Client and server compute it from the same bytes, so a retried upload of the same correction
    is recognised and never becomes a second item.
    """
    digest = hashlib.sha256(json.dumps(canonical_meta(meta), sort_keys=True, separators=(",", ":")).encode())
    for name in FILES:
        data = files.get(name)
        digest.update(name.encode() + b"\0" + (b"-" if data is None else str(len(data)).encode()) + b"\0")
        if data is not None:
            digest.update(data)
    return digest.hexdigest()
