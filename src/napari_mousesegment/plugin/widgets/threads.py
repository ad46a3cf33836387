"""Run a core function that reports progress by callback inside a napari generator worker.

The core (no napari, no Qt) takes ``progress(done, total, *detail)`` and ``should_stop()``; napari's
``thread_worker`` wants a generator that yields. :func:`run_reporting` bridges the two: the core
call runs in a helper thread and its progress events are yielded to the GUI thread as they come.
Cancelling sets ``stop``, which the core checks between batches. :func:`stop_and_wait` is what a
widget does when the viewer closes under a running job.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import Any

_DONE = object()


def run_reporting(fn: Callable[..., Any], stop: threading.Event, *args: Any,
                  **kwargs: Any) -> Generator[tuple, None, Any]:
    """Yield ``(done, total, *detail)`` while ``fn(*args, progress=..., should_stop=..., **kwargs)`` runs;
    return its result."""
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args, progress=lambda *event: events.put(event), should_stop=stop.is_set,
                                  **kwargs)
        except BaseException as exc:  # travels back to the GUI thread as the worker's error
            outcome["error"] = exc
        finally:
            events.put(_DONE)

    thread = threading.Thread(target=target, name=f"mousesegment-{getattr(fn, '__name__', 'job')}", daemon=True)
    thread.start()
    try:
        while (item := events.get()) is not _DONE:
            yield item
    except GeneratorExit:  # closed early (worker quit, viewer closed): stop the core call too
        stop.set()
        raise
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def stop_and_wait(job: dict, *_) -> None:
    """The viewer is closing: stop the running job, detach it from the widgets about to be
    deleted, and let its thread end before Qt tears the worker's signals down."""
    from napari.qt.threading import WorkerBase

    worker, stop = job.get("worker"), job.get("stop")
    if worker is None or stop is None:
        return
    stop.set()
    for name in ("yielded", "returned", "errored", "finished"):
        try:
            signal = getattr(worker, name, None)  # a function worker has no `yielded`
        except RuntimeError:  # Qt already deleted the worker's signals: its thread has ended
            return
        if signal is None:
            continue
        try:
            signal.disconnect()
        except (TypeError, RuntimeError):
            pass
    WorkerBase.await_workers(msecs=30_000)


class ActivityProgress:
    """napari's ``progress`` (shown in the activity dock), fed with ``(done, total)`` events on the GUI
    thread; a new total (the next organ) starts a new bar."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar = None

    def update(self, done: int, total: int) -> None:
        from napari.utils import progress

        if self.bar is None or self.bar.total != total or done < self.bar.n:
            self.close()
            self.bar = progress(total=total, desc=self.desc)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
