"""The lab server's HTTP API (FastAPI): the routes of :mod:`..remote.protocol`, with users and roles.

The queue, the model store and its versions are this machine's own (``MOUSESEGMENT_HOME``); the
retraining worker runs beside the server as a child process (:mod:`.supervisor`). Every answer
that is not a success is ``{"detail": "one line"}``, and no token ever appears in one.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from .. import __version__
from ..active.queue import STATES, Queue, QueueError
from ..models.folder import CONFIG, EXTRAS, PACKAGE, WEIGHTS
from ..remote.protocol import API, FILES, HASH_HEADER, VERSION_HEADER
from ..store.registry import list_models
from ..store.versions import promote, rollback, versions
from .supervisor import POLL_S, Supervisor
from .uploads import Refused, current_model, queue_upload
from .users import User, Users

_ASGI = Callable[..., Awaitable[None]]


class UploadLimit:
    """Refuse a request body over ``limit`` bytes with 413: by its declared length before reading
    any of it, and by the bytes actually read for a body that states none or lies."""

    def __init__(self, app: _ASGI, limit: int) -> None:
        self.app, self.limit = app, limit

    def _refusal(self, size: str) -> str:
        return f"upload of {size} is over this server's limit of {self.limit / 2**20:g} MB (serve --max-upload-mb)"

    async def __call__(self, scope: dict, receive: _ASGI, send: _ASGI) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            refusal = JSONResponse({"detail": self._refusal(f"{declared.decode(errors='replace'):.20} bytes")}, 413)
            return await refusal(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, self._refusal(f"more than {self.limit} bytes"))
            return message

        await self.app(scope, counted, send)


def _round_json(r: Any) -> dict:
    return {**asdict(r), "state": r.state.value}


def zip_model(folder: Path) -> tuple[bytes, str]:
    """A zip of a model folder's files and its version; read again when a promotion replaced the
    folder mid-read (the weights must match the hash its config records)."""
    for _ in range(5):
        try:
            config = (folder / CONFIG).read_bytes()
            files = {f: (folder / f).read_bytes() for f in (WEIGHTS, PACKAGE, *EXTRAS) if (folder / f).is_file()}
        except FileNotFoundError:
            continue
        meta = json.loads(config)
        blob = files.get(WEIGHTS, files.get(PACKAGE, b""))
        if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
            continue
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
            for name, data in {CONFIG: config, **files}.items():
                zf.writestr(name, data)
        return buffer.getvalue(), str(meta.get("version", ""))
    raise Refused(f"model {folder.name}: its files do not match its config's sha256", 500)


def create_app(queue_dir: str | Path, *, max_upload_mb: float = 512, device: str = "auto",
               worker: bool = True, epochs: int | None = None) -> FastAPI:
    """The server of the queue folder ``queue_dir`` (its users in ``users.sqlite`` there).

    ``epochs``: fine-tuning epochs per round of its worker (None: the worker's default).
    """
    queue, users = Queue(queue_dir), Users(queue_dir)
    supervisor = Supervisor(queue, device, epochs) if worker else None
    max_bytes = int(max_upload_mb * 2**20)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if supervisor is not None:
            supervisor.start()
        yield
        if supervisor is not None:
            await run_in_threadpool(supervisor.stop)

    app = FastAPI(title="mousesegment lab server", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(UploadLimit, limit=max_bytes)
    _errors(app)

    def authenticated(request: Request) -> User:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "no token: send the header Authorization: Bearer TOKEN",
                                headers={"WWW-Authenticate": "Bearer"})
        user = users.verify(token.strip())
        if user is None:
            raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
        return user

    signed_in = Depends(authenticated)

    def role(needed: str) -> Any:
        def check(user: User = signed_in) -> User:
            if not user.may(needed):
                raise HTTPException(403, f"user {user.name} is an {user.role}; this needs a {needed}")
            return user
        return Depends(check)

    annotator, maintainer = role("annotator"), role("maintainer")
    api = APIRouter(prefix=API)

    @api.get("/health")
    def health() -> dict:
        return {"status": "ok", "version": __version__,
                "worker": "disabled" if supervisor is None else supervisor.state}

    @api.get("/queue")
    def queue_status(_: User = annotator) -> dict:
        return queue.status()

    @api.get("/queue/items")
    def queue_items(state: str | None = None, _: User = annotator) -> list:
        if state is not None and state not in STATES:
            raise HTTPException(400, f"state: expected one of {', '.join(STATES)}, got {state!r:.40}")
        return [item.as_json() for item in queue.items(state)]

    @api.post("/queue/items")
    async def queue_add(request: Request, user: User = annotator) -> JSONResponse:
        async with request.form(max_part_size=max_bytes) as form:  # its spooled files are closed after
            meta, files = await _parts(form)
            claimed = request.headers.get(HASH_HEADER) or form.get("content_hash")
        item, created = await run_in_threadpool(queue_upload, queue, meta, files, author=user.name,
                                                claimed_hash=claimed if isinstance(claimed, str) else None,
                                                max_bytes=max_bytes)
        return JSONResponse({"item": item.as_json(), "created": created}, 201 if created else 200)

    @api.delete("/queue/items/{item_id}")
    def queue_remove(item_id: int, _: User = maintainer) -> dict:
        try:
            queue.remove(item_id)
        except QueueError:
            raise HTTPException(404, f"no item {item_id} in the queue") from None
        return {"removed": item_id}

    @api.get("/rounds")
    def rounds(_: User = annotator) -> list:
        return [_round_json(r) for r in queue.rounds()]

    @api.post("/rounds", status_code=202)
    def request_round(_: User = maintainer) -> dict:
        if supervisor is None:
            raise HTTPException(409, "this server runs no worker (serve --no-worker): start one with "
                                     "`mousesegment worker --queue DIR` on the server")
        return {"requested": True, "within_s": POLL_S, "worker": supervisor.state}

    @api.get("/models")
    def models(_: User = annotator) -> list:
        return [asdict(row) for row in list_models()]

    @api.get("/models/{name}/versions")
    def model_versions(name: str, _: User = annotator) -> list:
        return versions(name)

    @api.post("/models/{name}/promote")
    async def model_promote(name: str, request: Request, user: User = maintainer) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise Refused("body: expected JSON {\"version\": V}") from None
        version = body.get("version") if isinstance(body, dict) else None
        if not isinstance(version, (str, int)) or isinstance(version, bool):
            raise Refused("version: missing (send {\"version\": V})")
        if str(version) not in {v["version"] for v in await run_in_threadpool(versions, name)}:
            raise Refused(f"model {name!r} has no version {version!r} (GET /models/{name}/versions)", 404)
        await run_in_threadpool(lambda: promote(name, str(version), by=user.name))
        return {"name": name, "version": str(version), "by": user.name}

    @api.post("/models/{name}/rollback")
    def model_rollback(name: str, user: User = maintainer) -> dict:
        return {"name": name, "version": rollback(name, by=user.name), "by": user.name}

    @api.get("/models/{name}/current")
    def model_current(name: str, _: User = annotator) -> Response:
        data, version = zip_model(current_model(name))
        return Response(data, media_type="application/zip",
                        headers={VERSION_HEADER: version, HASH_HEADER: hashlib.sha256(data).hexdigest(),
                                 "Content-Disposition": f'attachment; filename="{name}.zip"'})

    app.include_router(api)
    return app


async def _parts(form: Any) -> tuple[str, dict[str, bytes | None]]:
    """The meta text and the file bytes of an upload's multipart form."""
    meta = form.get("meta")
    if meta is None:
        raise Refused("meta: missing (send the correction's meta as a JSON form field)")
    meta = (await meta.read()).decode(errors="replace") if isinstance(meta, UploadFile) else meta
    files = {}
    for field in FILES:
        part = form.get(field)
        if part is not None and not isinstance(part, UploadFile):
            raise Refused(f"{field}: expected a file part (a TIFF), got a text field")
        files[field] = None if part is None else await part.read()
    return meta, files


def _errors(app: FastAPI) -> None:
    """Every refusal as ``{"detail": "one line"}``: bad input 400, a missing thing 404."""

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, exc.status)

    @app.exception_handler(ValueError)  # QueueError, ModelError: bad input the core named
    async def bad_input(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": " ".join(str(exc).split())}, 400)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}"}, 400)

