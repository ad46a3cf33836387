"""The active-learning widget's lab-server side: the connection fields, the outbox line, a poll
timer, and the client calls, each run off the GUI thread.

Every call to the server (:mod:`...remote.client`) runs in a napari worker thread and comes back
on the GUI thread through a :class:`~.base.Job`, so a slow or dead server never freezes the viewer.
The client is imported only once the user chooses "server"; the local queue needs none of it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, Label, LineEdit, PushButton
from napari.utils.notifications import show_error

from ...active.rounds import Round, RoundState
from .base import Job

MODES = ("local folder", "server")
POLL_MS = 3000  #: how often the widget asks the server for its rounds while in server mode


def one_line(exc: BaseException) -> str:
    """An error as one line (a refusal reads ``server refused (403): ...``)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def waiting_text(waiting: int, refused: int = 0) -> str:
    """The outbox line: how many corrections wait to be sent (and how many the server refused)."""
    text = "outbox: nothing waiting" if waiting == 0 else f"outbox: {waiting} waiting to be sent"
    return text + (f"; {refused} refused as bad input (kept in the outbox's refused/ folder)" if refused else "")


def _counts(client: Any) -> dict[str, int]:
    """How many corrections wait in this machine's outbox for the client's server, and were refused."""
    return {"waiting": client.outbox.count(), "refused": len(client.outbox.refused())}


# -- the calls, run in a worker thread with a client of the chosen server ---------------------
def snapshot(client: Any) -> dict[str, Any]:
    """Send what waits in the outbox, then read the server's queue, items, rounds, models and the
    versions of its retrained models. A server that cannot be reached gives ``unreachable``."""
    from ...remote.client import Unreachable

    out: dict[str, Any] = {"sent": 0, "failed": 0}
    try:
        if client.outbox.count():
            out["sent"], out["failed"] = client.flush()
        out["status"], out["items"], out["rounds"] = client.status(), client.items(), client.rounds()
        user = [m["name"] for m in client.models() if m.get("source") == "user"]
        out["versions"] = {name: client.versions(name) for name in user}
    except Unreachable as exc:
        out["unreachable"] = one_line(exc)
    return {**out, **_counts(client)}


def upload(client: Any, correction: Any) -> dict[str, Any]:
    """Send one correction: ``{"answer": {"item", "created"}}`` once the server holds it, or
    ``{"kept": reason}`` when it could not be reached (it then waits in the outbox); with the
    outbox's counts. A refusal (400, 401, 403, 413) is raised as the client's ServerError."""
    from ...remote.client import Unreachable

    try:
        out = {"answer": client.add(np.asarray(correction.image), correction.labels, kind=correction.kind,
                                    **correction.fields())}
    except Unreachable as exc:
        out = {"kept": one_line(exc)}
    return {**out, **_counts(client)}


def flush(client: Any) -> dict[str, Any]:
    """Send what waits in the outbox: ``{"sent", "failed", "waiting"}``."""
    sent, failed = client.flush()
    return {"sent": sent, "failed": failed, **_counts(client)}


def pull(client: Any, name: str) -> dict[str, Any]:
    """Install the server's current version of ``name`` here, hash checked: ``{"name", "version", "path"}``."""
    path, version = client.pull(name)
    return {"name": name, "version": str(version), "path": str(path)}


def switch_and_pull(client: Any, name: str, version: str | None) -> dict[str, Any]:
    """Promote ``version`` of ``name`` on the server (roll back when None), then pull it."""
    answer = client.rollback(name) if version is None else client.promote(name, version)
    return {**pull(client, name), "answer": answer}


def as_round(row: dict[str, Any]) -> Round:
    """A round as the server's ``GET /rounds`` gives it (items and metrics as JSON or as text)."""
    fields = {f.name for f in dataclasses.fields(Round)}
    row = {k: v for k, v in row.items() if k in fields}
    for key, empty in (("items", "[]"), ("metrics", "{}")):
        if not isinstance(row.get(key), (list, dict)):
            row[key] = json.loads(row.get(key) or empty)
    return Round(**{**row, "id": int(row["id"]), "state": RoundState(row["state"])})


def request_round(client: Any) -> Any:
    """Ask the server's worker for a round now."""
    return client.request_round()


# -- the panel ---------------------------------------------------------------------------------
class ServerPanel:
    """The "queue" choice and the server fields of the active-learning widget, and its calls."""

    def __init__(self, parent_native: Any, poll: Callable[[], Any], report: Callable[[str], Any]) -> None:
        from qtpy.QtCore import QTimer

        self.report = report  #: where a poll's errors go (the status line), instead of a notification
        self.mode = ComboBox(label="queue", choices=list(MODES), value=MODES[0],
                             tooltip="local folder: a queue on this machine's disk. server: a lab server "
                                     "(mousesegment serve) that holds the queue and retrains on its GPU")
        self.url = LineEdit(label="server URL", value="", tooltip="e.g. https://gpu.lab.example:8765")
        self.token_file = FileEdit(label="token file", mode="r", value="",
                                   tooltip="the file your token is saved in (chmod 600); empty: the "
                                           "MOUSESEGMENT_TOKEN environment variable")
        self.waiting = Label(value="")
        self.resend = PushButton(text="Send waiting corrections")
        self.timer = QTimer(parent_native)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(poll)
        self._running: list[tuple[Any, Job]] = []  # running calls, for when the viewer closes
        parent_native.destroyed.connect(partial(_closed, self._running))
        self.show(False)

    @property
    def widgets(self) -> list:
        return [self.mode, self.url, self.token_file, self.waiting, self.resend]

    @property
    def on(self) -> bool:
        """Whether the widget works against a server."""
        return self.mode.value == MODES[1]

    def show(self, on: bool) -> None:
        for widget in self.widgets[1:]:
            widget.visible = on
        if on:
            self.timer.start()
        else:
            self.timer.stop()

    def _url(self) -> str:
        url = self.url.value.strip().rstrip("/")
        if not url:
            raise ValueError("server mode: give the server's URL (e.g. https://gpu.lab.example:8765)")
        return url

    def connection(self) -> tuple[str, str]:
        """The chosen server's URL and the token; ValueError/OSError naming what is missing or wrong."""
        from ...remote.client import check_url, token_from

        return check_url(self._url()), token_from(self.token_file.line_edit.value.strip() or None)

    def set_waiting(self, counts: dict[str, int]) -> None:
        """Show the outbox's counts (``waiting``, ``refused``) of a call's result."""
        self.waiting.value = waiting_text(counts["waiting"], counts.get("refused", 0))

    def call(self, fn: Callable[..., Any], *args: Any, name: str, show: Callable[[Any], Any],
             quiet: bool = False) -> Job | None:
        """Run ``fn(client, *args)`` in a worker thread; ``show(result)`` on the GUI thread
        gives the job's result. A refusal (401, 403, 400 ...) or an unreachable server is shown as
        one line (only in the status line when ``quiet``: polls) and fails the job. None when the
        URL or the token file is missing (shown)."""
        from napari.qt.threading import create_worker

        try:
            url, token = self.connection()
        except (ValueError, OSError) as exc:
            (self.report if quiet else show_error)(f"{name}: {one_line(exc)}")
            return None
        job = Job(name)
        job.set_running_or_notify_cancel()
        outcome: dict[str, Any] = {}
        worker = create_worker(_with_client, url, token, fn, *args, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda value: outcome.setdefault("value", value))
        worker.errored.connect(lambda exc: outcome.setdefault("error", exc))
        worker.finished.connect(lambda: self._finish(worker, job, outcome, show, quiet))
        self._running.append((worker, job))
        worker.start()
        return job

    def _finish(self, worker: Any, job: Job, outcome: dict, show: Callable[[Any], Any], quiet: bool) -> None:
        if (worker, job) in self._running:
            self._running.remove((worker, job))
        error = outcome.get("error")
        if error is None:
            try:
                job.set_result(show(outcome.get("value")))
                return
            except Exception as exc:  # noqa: BLE001  (showing failed: reported like a failed call)
                error = exc
        (self.report if quiet else show_error)(f"{job.name}: {one_line(error)}")
        job.set_exception(error)


def _with_client(url: str, token: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(client, *args)`` with a client made, and closed, in the worker thread."""
    from ...remote.client import Client

    with Client(url, token) as client:
        return fn(client, *args)


def _closed(running: list, *_: Any) -> None:
    """The viewer closed: detach the running calls from the deleted widget, end their jobs so no
    script waits for them forever, and let their threads end (each has the client's timeout)."""
    from napari.qt.threading import WorkerBase

    for worker, job in list(running):
        for name in ("returned", "errored", "finished"):
            try:
                getattr(worker, name).disconnect()
            except (TypeError, RuntimeError):
                pass
        if not job.done():
            job.set_exception(InterruptedError(f"{job.name}: the viewer was closed"))
    if running:
        WorkerBase.await_workers(msecs=30_000)
    running.clear()
