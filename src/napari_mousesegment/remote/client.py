"""The HTTP client of a lab server (``mousesegment serve``), shared by the CLI and the napari widget.

Every call is one request of the route table in :mod:`.protocol`. Failures are two exceptions, so
a caller can tell "the server said no" from "the server did not answer":

- :class:`ServerError` (a ValueError): the server answered 4xx or 5xx; the message names the
  status and the server's one-line reason, e.g. ``server refused (403): ...``.
- :class:`Unreachable` (an OSError): no connection, a timeout, or a connection dropped mid-way.

Corrections go through the :class:`.outbox.Outbox` first (:meth:`Client.add`), so a correction
made while the server is down is kept on this disk and sent later (:meth:`Client.flush`). The
token is sent only in the ``Authorization`` header and never appears in a message.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import numpy as np

from .outbox import Outbox, wire_meta
from .protocol import API, HASH_HEADER, TOKEN_ENV, VERSION_HEADER, canonical_meta

if TYPE_CHECKING:
    from typing_extensions import Self

_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces: what a header can carry


class ServerError(ValueError):
    """The server answered with an HTTP error; ``status`` is its code, ``reason`` its one-line detail."""

    def __init__(self, status: int, reason: str) -> None:
        self.status, self.reason = status, reason
        super().__init__(f"server {'refused' if status < 500 else 'failed'} ({status}): {reason}")


class Unreachable(OSError):
    """The server could not be reached, did not answer in time, or dropped the connection."""


def token_from(token_file: str | os.PathLike | None) -> str:
    """The token in ``token_file`` (its first line), else in ``$MOUSESEGMENT_TOKEN``; never echoed."""
    if token_file is not None:
        try:
            lines = Path(token_file).expanduser().read_text().strip().splitlines()
        except OSError as exc:
            raise OSError(f"--token-file {token_file}: cannot read it ({exc.strerror or type(exc).__name__})") from None
        token, where = (lines[0].strip() if lines else ""), f"--token-file {token_file}"
    else:
        token, where = os.environ.get(TOKEN_ENV, "").strip(), TOKEN_ENV
    if not token and token_file is None:
        raise ValueError(f"no token: give --token-file F or set {TOKEN_ENV} (without one the server answers 401)")
    if not token:
        raise ValueError(f"{where}: empty; it should hold the token `mousesegment users add` printed")
    if not _TOKEN.match(token):
        raise ValueError(f"{where}: not a token (spaces or characters a token never has)")
    return token


def check_url(url: str) -> str:
    """The server's URL without a trailing slash, or a ValueError saying what a URL looks like."""
    parts = urlsplit(str(url).strip())
    if parts.username or parts.password:  # would end up in logs and shell histories
        raise ValueError("--server: put no user name or password in the URL; the token goes in --token-file")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--server {url}: not a server URL; give e.g. http://gpu-box:8765 or https://seg.lab.org")
    return str(url).strip().rstrip("/")


def tiff_bytes(array: np.ndarray) -> bytes:
    """An array as the TIFF bytes the queue stores (:func:`..io.tiff.write_array`), for uploading."""
    from ..io.tiff import write_array

    with tempfile.TemporaryDirectory(prefix="mousesegment-") as tmp:
        return write_array(Path(tmp) / "array.tif", array).read_bytes()


class Client:
    """A lab server at ``url`` (e.g. ``http://gpu-box:8765``), used with ``token``.

    One client may be shared by threads. ``timeout`` is per network operation (connect, each read
    or write), so a large upload is not cut short while it is moving.
    """

    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        import httpx

        self.url = check_url(url)
        self._token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url + API, headers=headers, timeout=timeout)
        self.outbox = Outbox(self.url)  #: this machine's outbox for this server

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- requests ---------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs) -> Any:
        """One request; its JSON answer, or ServerError / Unreachable."""
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        self._check(response)
        return response.json()

    def _unreachable(self, exc: Exception) -> Unreachable:
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        return Unreachable(f"server {self.url} cannot be reached ({self._scrub(why)})")

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _check(self, response) -> None:
        """Raise ServerError with the server's one-line reason for a 4xx or 5xx answer."""
        if response.status_code < 400:
            return
        response.read()  # a streamed answer (a download) is read only here
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        if isinstance(detail, list):  # a validation error: [{"loc": [...], "msg": ...}, ...]
            detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" if isinstance(d, dict)
                               else str(d) for d in detail)
        if not detail:
            lines = response.text.strip().splitlines()
            detail = lines[0] if lines and len(lines[0]) < 300 else response.reason_phrase
        raise ServerError(response.status_code, self._scrub(" ".join(str(detail).split())[:500]))

    @staticmethod
    def _model(name: str) -> str:
        return f"/models/{quote(str(name), safe='')}"

    # --- the queue --------------------------------------------------------------------------
    def health(self) -> dict:
        """``{"status": "ok", "version", "worker"}``; needs no token."""
        return self._call("GET", "/health")

    def status(self) -> dict:
        """The server queue's ``queue status --json``: items, pending, used, last_round."""
        return self._call("GET", "/queue")

    def items(self, state: str | None = None) -> list[dict]:
        """The server queue's ``queue list --json``, optionally only items in ``state``."""
        return self._call("GET", "/queue/items", params={"state": state} if state else None)

    def upload(self, meta: Mapping[str, Any], files: Mapping[str, bytes | None], digest: str) -> dict:
        """POST one correction as it is; ``{"item", "created"}``. Use :meth:`add` (through the outbox)."""
        parts = {name: (f"{name}.tif", data, "image/tiff") for name, data in files.items() if data is not None}
        return self._call("POST", "/queue/items", data={"meta": json.dumps(canonical_meta(meta))}, files=parts,
                          headers={HASH_HEADER: digest})

    def add(self, image: np.ndarray, labels: np.ndarray, *, kind: str, organ: str | None = None,
            condition: str | None = None, model: str | None = None, model_version: str | None = None,
            prediction: np.ndarray | None = None, source: str | None = None,
            spacing: tuple[float, float, float] | None = None) -> dict:
        """Send one correction; returns ``{"item": {...as queue list --json}, "created": bool}``.

        The correction is written to the outbox first. On :class:`Unreachable` or a 401/403/5xx it
        stays there (see :meth:`flush`); a 400/413 sets it aside under ``refused/``. Sending the same
        correction again returns the item the server already holds (``created`` False).
        """
        meta = wire_meta({"kind": kind, "organ": organ, "condition": condition, "model": model,
                          "model_version": model_version, "source": source,
                          "spacing": None if spacing is None else [float(s) for s in spacing]})
        files = {"image": tiff_bytes(image), "labels": tiff_bytes(labels),
                 "prediction": None if prediction is None else tiff_bytes(prediction)}
        return self.outbox.deliver(self, self.outbox.put(meta, files), meta, files)

    def flush(self, report: Callable[[str, Exception], None] | None = None) -> tuple[int, int]:
        """Send what waits in this machine's outbox for this server; (sent, failed)."""
        return self.outbox.send(self, report)

    def remove(self, item_id: int) -> dict:
        """Delete an item (maintainer); ``{"removed": id}``."""
        return self._call("DELETE", f"/queue/items/{int(item_id)}")

    def rounds(self) -> list[dict]:
        """The server's retraining rounds, oldest first."""
        return self._call("GET", "/rounds")

    def request_round(self) -> dict:
        """Ask the server's worker to run a round now (maintainer); ``{"requested": true}``."""
        return self._call("POST", "/rounds")

    # --- models -----------------------------------------------------------------------------
    def models(self) -> list[dict]:
        """The server's ``models list --json``."""
        return self._call("GET", "/models")

    def versions(self, name: str) -> list[dict]:
        """The server's ``models versions NAME --json``."""
        return self._call("GET", f"{self._model(name)}/versions")

    def promote(self, name: str, version: str) -> dict:
        """Make ``version`` current on the server (maintainer); ``{"name", "version", "by"}``."""
        return self._call("POST", f"{self._model(name)}/promote", json={"version": str(version)})

    def rollback(self, name: str) -> dict:
        """Return to the version current before (maintainer); ``{"name", "version", "by"}``."""
        return self._call("POST", f"{self._model(name)}/rollback")

    def pull(self, name: str) -> tuple[Path, str]:
        """Install the server's current version of ``name`` as the user model ``name`` here.

        The zip is checked against the server's sha256 before anything is installed, and the model
        folder is then loaded (its weights' own sha256 checked) before it replaces an earlier pulled
        copy. Returns the installed folder and the version.
        """
        from .pull import check_pullable, install_pulled

        check_pullable(name)
        with tempfile.TemporaryDirectory(prefix="mousesegment-pull-") as tmp:
            archive = Path(tmp) / f"{name}.zip"
            expected, version = self._download(f"{self._model(name)}/current", archive)
            return install_pulled(archive, name, expected, version, self.url)

    def _download(self, path: str, dest: Path) -> tuple[str, str | None]:
        """Stream a file to ``dest``; returns the server's sha256 header (checked here) and version."""
        import httpx

        digest = hashlib.sha256()
        try:
            with self._http.stream("GET", path) as response:
                self._check(response)
                with open(dest, "wb") as fh:
                    for block in response.iter_bytes(1 << 20):
                        digest.update(block)
                        fh.write(block)
                expected = response.headers.get(HASH_HEADER, "").strip().lower()
                version = response.headers.get(VERSION_HEADER)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if not expected:
            raise ServerError(response.status_code, f"the model came without its {HASH_HEADER} header; "
                                                    "nothing installed")
        if digest.hexdigest() != expected:
            raise ValueError(f"{self.url}{API}{path}: the download does not match the server's sha256 "
                             "(damaged on the way); nothing installed")
        return expected, version
