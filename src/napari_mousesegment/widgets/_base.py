"""What the segmentation widgets share: Run/Cancel, progress (bar and napari's activity dock),
error and cancel messages, and stopping the job when the viewer closes."""

from __future__ import annotations

import threading
from functools import partial

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info

from ._worker import ActivityProgress, stop_and_wait


class JobWidget(Container):
    """A container that runs one background job at a time; subclasses define ``run`` and ``_on_done``."""

    job_name = "job"

    def __init__(self) -> None:
        super().__init__()
        self._run = PushButton(text="Run")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self._status = Label(value="")
        self._run.clicked.connect(self.run)
        self._cancel.clicked.connect(self.cancel)
        self._activity = ActivityProgress(self.job_name)
        self._job: dict = {}  # the running worker and its stop flag, for when the viewer closes
        self.native.destroyed.connect(partial(stop_and_wait, self._job))
        self._stop: threading.Event | None = None
        self.worker = None

    def run(self) -> None:  # pragma: no cover - defined by each widget
        raise NotImplementedError

    def _on_done(self, result) -> None:  # pragma: no cover - defined by each widget
        raise NotImplementedError

    def _start(self, make_worker, *args) -> None:
        """Start ``make_worker(*args)`` (a thread_worker) with a fresh stop flag and wire its signals."""
        self._stop = threading.Event()
        self.worker = make_worker(*args)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_done)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self._job.update(worker=self.worker, stop=self._stop)
        self._run.enabled, self._cancel.enabled = False, True
        self._status.value = f"{self.job_name}…"
        self.worker.start()

    def cancel(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._status.value = "cancelling…"

    def _on_progress(self, event: tuple[int, int]) -> None:
        done, total = event
        self._progress.max, self._progress.value = total, done
        self._activity.update(done, total)

    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, InterruptedError):
            self._status.value = "cancelled; no layer was changed"
            show_info(f"{self.job_name} cancelled")
        else:
            self._status.value = f"failed: {exc}"
            show_error(f"{self.job_name} failed: {exc}")

    def _on_finished(self) -> None:
        self._activity.close()
        self._run.enabled, self._cancel.enabled = True, False
