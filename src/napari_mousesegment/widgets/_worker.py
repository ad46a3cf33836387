"""Run a core function that reports progress by callback inside a napari generator worker.

The core (no napari, no Qt) takes ``progress(done, total)`` and ``should_stop()``; napari's
``thread_worker`` wants a generator that yields. :func:`run_reporting` bridges the two: the core
call runs in a helper thread and its progress events are yielded to the GUI thread as they come.
Cancelling sets ``stop``, which the core checks between batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import Any

_DONE = object()


def run_reporting(fn: Callable[..., Any], stop: threading.Event, *args: Any,
                  **kwargs: Any) -> Generator[tuple[int, int], None, Any]:
    """Yield ``(done, total)`` while ``fn(*args, progress=..., should_stop=..., **kwargs)`` runs; return its result."""
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args, progress=lambda done, total: events.put((done, total)),
                                  should_stop=stop.is_set, **kwargs)
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
