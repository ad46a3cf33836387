"""What the three widgets share: one background job at a time with Cancel, progress (a bar and
napari's activity dock), a status line and error messages, the job stopped when the viewer closes;
and :class:`Job`, the handle a script gets to wait for a result or chain on it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info

from .threads import ActivityProgress, stop_and_wait


def installed(kind: str) -> list[str]:
    """Names of the installed models of a kind ("mosnet" or "unet"), for the model boxes."""
    from ...store.registry import list_models

    return [m.name for m in list_models() if m.kind == kind and m.source != "registry"]


class Job(Future):
    """A widget's background job, for scripts: :meth:`wait` for its result, or :meth:`then` chain on it.

    The result arrives on the GUI thread, after the widget has shown it (a layer added, a table
    filled), so a chained callback may use the viewer and start the widget's next job. A cancelled
    or failed job raises its error from :meth:`wait` (InterruptedError when cancelled) and calls no
    :meth:`then` callback.
    """

    def __init__(self, name: str, stop: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.name = name
        self._stop = stop

    def cancel(self) -> bool:
        """Ask the running job to stop at its next batch; it then ends with InterruptedError.
        False when it has already ended."""
        if self.done():
            return False
        self._stop()
        return True

    def then(self, fn: Callable[[Any], Any]) -> Job:
        """Call ``fn(result)`` on the GUI thread once the job succeeds (at once if it already has)."""
        def call(job: Future) -> None:
            if job.cancelled() or job.exception() is not None:
                return
            try:
                fn(job.result())
            except Exception as exc:  # noqa: BLE001  (a script's callback: shown, not lost in a log)
                show_error(f"{self.name}: a callback failed: {exc}")

        self.add_done_callback(call)
        return self

    def wait(self, timeout: float | None = None) -> Any:
        """Let the viewer run (Qt events processed) until the job ends; its result, or its error raised.

        Use this from a script before ``napari.run()``; inside a running event loop prefer :meth:`then`.
        """
        from qtpy.QtCore import QCoreApplication, QEventLoop

        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {timeout} s")
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.005)
        return self.result()


class JobWidget(Container):
    """A container that runs one background job at a time.

    Subclasses add their own buttons (passed to :meth:`_start` to be disabled while a job runs) and
    start jobs with :meth:`_start`; the job's result goes through a ``show`` function on the GUI
    thread, and its return value is the :class:`Job`'s result.
    """

    job_name = "job"
    #: the status line after a cancel
    cancelled_status = "cancelled; no layer was changed"

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self._status = Label(value="")
        self._cancel.clicked.connect(self.cancel)
        self._activity = ActivityProgress(self.job_name)
        self._running: dict = {}  # the running worker, its stop flag and its job, for when the viewer closes
        self.native.destroyed.connect(partial(_closed, self._running))
        self._stop: threading.Event | None = None
        self._buttons: list[PushButton] = []
        self.worker = None
        self.job: Job | None = None

    @property
    def busy(self) -> bool:
        """Whether a job is running."""
        return self.job is not None and not self.job.done()

    @property
    def status(self) -> str:
        """The widget's status line, as shown."""
        return self._status.value

    def wait(self, timeout: float | None = None) -> Any:
        """Wait for the current (or last) job: see :meth:`Job.wait`."""
        if self.job is None:
            raise RuntimeError(f"{self.job_name}: no job has been started")
        return self.job.wait(timeout)

    def cancel(self) -> None:
        """Ask the running job to stop at its next batch; nothing it would have changed is changed."""
        if self.busy and self._stop is not None:
            self._stop.set()
            self._status.value = "cancelling…"

    def _layers(self, kind: str) -> list:
        """The viewer's layers of a napari layer class ("Image", "Labels"), for the choice boxes."""
        import napari.layers

        cls = getattr(napari.layers, kind)
        return [layer for layer in self.viewer.layers if isinstance(layer, cls)]

    def _start(self, make_worker: Callable, *args: Any, show: Callable[[Any], Any], name: str | None = None,
               buttons: tuple[PushButton, ...] = ()) -> Job | None:
        """Start ``make_worker(*args, stop)`` (a napari thread_worker) and return its :class:`Job`.

        ``show(result)`` runs on the GUI thread when the worker returns; its value is the job's result.
        Refused with a message (None returned) while another job runs.
        """
        name = name or self.job_name
        if self.busy:
            show_error(f"{name}: wait for {self.job.name} to finish, or cancel it")
            return None
        self._stop = stop = threading.Event()
        job = Job(name, self.cancel)
        self.worker = worker = make_worker(*args, stop)
        outcome: dict[str, Any] = {}
        worker.returned.connect(lambda value: outcome.setdefault("value", value))
        worker.errored.connect(lambda exc: outcome.setdefault("error", exc))
        if hasattr(worker, "yielded"):
            worker.yielded.connect(self._on_progress)
        worker.finished.connect(lambda: self._finish(job, outcome, show))
        self._running.update(worker=worker, stop=stop, job=job)
        self._buttons = [*buttons]
        for button in self._buttons:
            button.enabled = False
        self._cancel.enabled = True
        self._progress.max, self._progress.value = 1, 0
        self._status.value = f"{name}…"
        self.job = job
        job.set_running_or_notify_cancel()
        worker.start()
        return job

    def _on_progress(self, event: tuple) -> None:
        done, total = event[:2]
        self._progress.max, self._progress.value = max(int(total or 1), 1), int(done)
        self._activity.update(done, total)

    def _finish(self, job: Job, outcome: dict[str, Any], show: Callable[[Any], Any]) -> None:
        """The worker ended: the controls come back, then the result is shown and handed to the job."""
        self._running.clear()  # nothing left to stop when the viewer closes (Qt may delete the worker)
        self._activity.close()
        self._cancel.enabled = False
        for button in self._buttons:
            button.enabled = True
        error = outcome.get("error")
        if error is None:
            try:
                job.set_result(show(outcome.get("value")))
                return
            except Exception as exc:  # noqa: BLE001  (showing failed: reported like a failed job)
                error = exc
        if isinstance(error, InterruptedError):
            self._status.value = self.cancelled_status
            show_info(f"{job.name} cancelled")
        else:
            self._status.value = f"failed: {error}"
            show_error(f"{job.name} failed: {error}")
        job.set_exception(error)


def _closed(running: dict, *_: Any) -> None:
    """The viewer closed under a job: stop it, and end its Job so no script waits for it forever."""
    stop_and_wait(running)
    job = running.get("job")
    if job is not None and not job.done():
        job.set_exception(InterruptedError(f"{job.name}: the viewer was closed"))
