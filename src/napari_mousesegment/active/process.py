"""One pass of the retraining worker in a child process, followed through the queue.

A crash or an out-of-memory error in the child (``mousesegment worker --queue DIR --once``) cannot
take the caller down: the caller reads the round's progress from the queue's records, can kill
the child to cancel (the queue and the store are crash-safe: nothing is lost), and gets the
rounds the pass ran when it ends. The napari widget runs this in a thread.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from .queue import Queue
from .rounds import Round


@dataclass
class WorkerPass:
    """What one child worker pass did."""

    exit_code: int
    rounds: list[Round] = field(default_factory=list)  #: the rounds it started, oldest first
    output: str = ""  #: what it printed

    @property
    def last_line(self) -> str:
        lines = [line for line in self.output.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def run_worker_pass(queue_dir: str | os.PathLike, *, progress: Callable[..., None] | None = None,
                    should_stop: Callable[[], bool] = lambda: False, poll_s: float = 0.3,
                    worker_args: tuple[str, ...] = ()) -> WorkerPass:
    """Run ``mousesegment worker --queue DIR --once`` in a child process until it ends.

    ``progress(epoch, epochs, loss, eta_s)`` is called whenever the running round reports a new
    epoch; ``should_stop`` kills the child and raises InterruptedError (the current version is
    unchanged). The child is also killed if this process exits first.
    """
    queue = Queue(queue_dir)
    known = {r.id for r in queue.rounds()}
    command = [sys.executable, "-m", "napari_mousesegment.cli", "worker", "--queue", str(queue.root), "--once",
               *worker_args]
    reported = set()

    def report() -> None:
        for r in (r for r in queue.rounds() if r.id not in known and r.epoch):
            if progress is not None and (r.id, r.epoch) not in reported:
                reported.add((r.id, r.epoch))
                progress(r.epoch, r.epochs, r.loss, r.eta_s or 0.0)

    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        kill = partial(_kill, child)
        atexit.register(kill)  # napari closing without the widget: no orphaned round
        try:
            while child.poll() is None:
                if should_stop():
                    raise InterruptedError("retraining cancelled; the current version is unchanged")
                report()
                time.sleep(poll_s)
            report()  # the last epochs of a round that ended between two polls
        finally:
            kill()
            atexit.unregister(kill)
        output.seek(0)
        text = output.read()
    return WorkerPass(child.returncode, [r for r in queue.rounds() if r.id not in known], text)


def _kill(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.kill()
        child.wait()
