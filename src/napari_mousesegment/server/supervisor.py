"""The retraining worker as a child process of the server, restarted whenever it dies.

A crash, a ``kill -9`` or a CUDA out-of-memory error ends the child, never the server. When the
child dies, the supervisor takes the queue's worker lock (free once the child is gone) and
records any round still marked running as interrupted, then starts a new child after a pause
that doubles with each quick death (1 s up to a minute), so a worker that cannot start does not
spin.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..active.queue import Queue, QueueError
from ..active.rounds import RoundState

log = logging.getLogger("mousesegment.server")

POLL_S = 5.0  #: how often the worker looks for pending corrections
BACKOFF_S = (1.0, 60.0)  #: first and longest pause before a restart
STEADY_S = 60.0  #: a child that lived this long was healthy: the next restart is quick again
SHUTDOWN_GRACE_S = 3.0  #: after a SIGTERMed child, how long to wait for the server's own shutdown
IDLE = "no pending corrections"  #: what the worker says on every idle pass: not logged


def worker_command(queue_dir: Path, device: str, epochs: int | None = None) -> list[str]:
    """``mousesegment worker`` for this queue, polling every :data:`POLL_S` seconds; ``epochs``
    per round when given (``serve --epochs``), else the worker's default."""
    return [sys.executable, "-m", "napari_mousesegment.cli", "worker", "--queue", str(queue_dir),
            "--device", device, "--poll", str(POLL_S), *(["--epochs", str(epochs)] if epochs else [])]


def mark_interrupted(queue: Queue) -> list[int]:
    """Record the rounds a dead worker left running as interrupted; returns their ids.

    Only when no worker holds the queue's lock: a worker started by hand on the same queue keeps
    its running round.
    """
    from ..active.worker import worker_lock  # imports torch: only once a worker has died

    try:
        with worker_lock(queue.root):
            stale = [r.id for r in queue.rounds() if r.state is RoundState.RUNNING]
            for round_id in stale:
                queue.update_round(round_id, state=RoundState.INTERRUPTED,
                                   message="the worker process died mid-round; its items stay pending")
    except QueueError:  # another worker holds the lock: its rounds are alive
        return []
    return stale


def _relay(child: subprocess.Popen) -> None:
    """Log the worker's output line by line until its pipe closes (its idle passes are left out)."""
    for line in child.stdout:
        if line.strip() and line.strip() != IDLE:
            log.info("worker: %s", line.rstrip())
    child.stdout.close()


class Supervisor:
    """Runs :func:`worker_command` in a child process and restarts it when it exits."""

    def __init__(self, queue: Queue, device: str, epochs: int | None = None) -> None:
        self.queue, self.device, self.epochs = queue, device, epochs
        self.child: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a child is started, or the supervisor stopped: never both at once
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    @property
    def state(self) -> str:
        """"running" while the child lives, else "stopped" (between a death and the restart)."""
        return "running" if self.child is not None and self.child.poll() is None else "stopped"

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        pause = BACKOFF_S[0]
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                code = self._run_child()
            except OSError as exc:  # could not even start it (no memory, no processes left)
                code, why = None, f"could not start ({exc})"
            # A SIGTERM to the whole service (systemctl stop) ends the worker a moment before the
            # server stops this loop: wait for that rather than log a restart that will not happen.
            if self._stop.wait(SHUTDOWN_GRACE_S if code == -signal.SIGTERM else 0):
                return
            interrupted = mark_interrupted(self.queue)
            pause = BACKOFF_S[0] if time.monotonic() - started > STEADY_S else min(pause * 2, BACKOFF_S[1])
            if code is not None:
                why = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            log.warning("worker %s%s; restarting in %.0f s", why,
                        f", round(s) {interrupted} recorded as interrupted" if interrupted else "", pause)
            self.restarts += 1
            self._stop.wait(pause)

    def _run_child(self) -> int | None:
        """Start the worker, relay its output, and wait for it to exit; its exit code (None: stopped first)."""
        with self._lock:
            if self._stop.is_set():
                return None
            self.child = subprocess.Popen(worker_command(self.queue.root, self.device, self.epochs),
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, errors="replace")
        log.info("worker started (pid %d)", self.child.pid)
        threading.Thread(target=_relay, args=(self.child,), name="worker-output", daemon=True).start()
        return self.child.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop restarting, and end the child (terminate, then kill)."""
        with self._lock:
            self._stop.set()
            child = self.child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._thread.join(timeout)
