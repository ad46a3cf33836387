"""Batch prediction of many inputs on Dask distributed: a LocalCluster, or an existing scheduler.

Each input is one task. A task catches its own errors and reports them, so one bad input never
stops the others. A worker that dies has its tasks rescheduled on the others by Dask; a task
whose workers keep dying is reported as failed. Outputs are written through :mod:`.outputs`, so
what finished is kept and a rerun skips it. Models are loaded once per worker process and kept.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class SchedulerError(ConnectionError):
    """The Dask scheduler could not be reached."""


@dataclass
class Outcome:
    """What became of one input."""

    source: str
    status: str  #: "done", "skipped" (complete outputs already there) or "failed"
    output: str | None = None
    message: str = ""


_MODELS: dict[tuple[str, str, str, str | None], Any] = {}  #: (kind, model, device, weights' sha256) -> model
#: One batch at a time per process: two Dask clients driven from threads of one process were seen
#: to lose a run's results (the waiting never ended). Separate processes share a cluster freely.
_ONE_RUN = threading.Lock()


def _usual_allocator() -> None:
    """Undo Dask's MALLOC_TRIM_THRESHOLD_=65536 for this worker process.

    Dask sets it so that workers hand memory back quickly, but then every network pass maps and
    zeroes its activations afresh: prediction ran 2.6x slower in a worker (1.53 s against 0.58 s
    per native scan). Freed memory is kept for reuse up to 256 MB, as an ordinary process does.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: activations come from the reusable heap
        libc.mallopt(-1, 256 * 2**20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to undo
        pass


def cached_model(kind: str, spec: str, device: str, threads: int | None, sha256: str | None = None) -> Any:
    """The model ``spec`` of ``kind`` ("mosnet" or "unet") on ``device``, loaded once per process.

    ``sha256`` is the weights' hash the run was started with: a model retrained in place is loaded
    afresh, and a worker that finds other weights under that name refuses them. ``threads`` sets
    torch's CPU threads for this worker (Dask starts workers with one).
    """
    from functools import partial

    import torch

    from ..models.preprocess import pick_device
    from ..store.load import load_model, load_organ_model

    if threads:
        torch.set_num_threads(threads)
    key = (kind, spec, device, sha256)
    if key not in _MODELS:
        if not _MODELS:
            _usual_allocator()
        load = load_organ_model if kind == "unet" else partial(load_model, kind=kind)
        model, _, meta = load(spec, pick_device(device))
        if sha256 and meta.get("sha256") != sha256:
            raise ValueError(f"model {spec} on this worker has weights {str(meta.get('sha256'))[:12]}..., not the "
                             f"{sha256[:12]}... this run was started with; give a model folder on a shared filesystem")
        _MODELS[key] = model
    return _MODELS[key]


def failure(source: str | os.PathLike, exc: BaseException) -> Outcome:
    return Outcome(str(source), "failed", None, f"{type(exc).__name__}: {exc}")


def _client(workers: int | None, scheduler: str | None, connect_timeout: float):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=f"{connect_timeout}s"), None
        except (OSError, TimeoutError) as exc:
            raise SchedulerError(f"cannot reach the Dask scheduler at {scheduler} within {connect_timeout:g} s "
                                 f"({exc}); is it running, and is the address right?") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    return Client(cluster), cluster


def threads_per_worker(workers: int | None) -> int | None:
    """torch threads for each local worker: the cores shared out (None for a remote cluster)."""
    return max(1, (os.cpu_count() or 1) // workers) if workers else None


def run_batch(sources: list[str], task: Callable[[str], Outcome], complete: Callable[[str], bool], *,
              workers: int | None = None, scheduler: str | None = None, overwrite: bool = False,
              connect_timeout: float = 10.0, log: Callable[[str], None] = print) -> list[Outcome]:
    """Run ``task`` on every source not already ``complete`` (unless ``overwrite``), on Dask.

    Give ``workers`` for a LocalCluster of that many worker processes, or ``scheduler`` for an
    existing cluster (``tcp://host:8786``, or a dask-jobqueue cluster's address). Returns one
    outcome per source, in the order given.
    """
    if (workers is None) == (scheduler is None):
        raise ValueError("give either workers (a local cluster) or a scheduler address")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    outcomes: dict[str, Outcome] = {}
    todo = []
    for source in sources:
        if not overwrite and complete(source):
            outcomes[source] = Outcome(source, "skipped", message="outputs already complete")
        else:
            todo.append(source)
    if len(todo) < len(sources):
        log(f"skipping {len(sources) - len(todo)} input(s) whose outputs are complete (--overwrite redoes them)")
    if todo:
        with _ONE_RUN:
            _run_on_dask(todo, task, outcomes, workers, scheduler, connect_timeout, log)
    ordered = [outcomes[s] for s in sources]
    report(ordered, log)
    return ordered


def _run_on_dask(todo: list[str], task: Callable[[str], Outcome], outcomes: dict[str, Outcome],
                 workers: int | None, scheduler: str | None, connect_timeout: float,
                 log: Callable[[str], None]) -> None:
    """Submit one task per input and collect each outcome into ``outcomes`` as it finishes."""
    from dask.distributed import as_completed

    client, cluster = _client(workers, scheduler, connect_timeout)
    try:
        log(f"{len(todo)} input(s) on {len(client.scheduler_info()['workers'])} Dask worker(s)"
            + (f" at {scheduler}" if scheduler else ""))
        run = uuid.uuid4().hex[:12]  # keys unique to this run: a shared scheduler never mixes two runs
        futures = {client.submit(task, source, key=f"mousesegment-{Path(source).name}-{run}-{i}"): source
                   for i, source in enumerate(todo)}
        for future in tqdm(as_completed(futures), total=len(futures), desc="inputs", unit="input",
                           disable=not terminal(), file=sys.stderr):
            source = futures[future]
            try:
                outcomes[source] = future.result()
            except Exception as exc:  # noqa: BLE001  (a task whose workers kept dying: KilledWorker; a lost scheduler)
                outcomes[source] = failure(source, exc)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def terminal() -> bool:
    """Progress bars only on a terminal: never in pipes, logs or tests."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


def report(outcomes: list[Outcome], log: Callable[[str], None] = print) -> None:
    """One summary line, then every failure with its reason."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    log(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    for outcome in outcomes:
        if outcome.status == "failed":
            log(f"FAILED {outcome.source}: {outcome.message}")
