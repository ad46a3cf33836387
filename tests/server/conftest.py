"""A real lab server for the tests: ``mousesegment serve`` in its own process on 127.0.0.1 and a free port.

``lab_server`` gives a :class:`LabServer`: its URL, its queue folder, token files of two annotators
(``ann1``, ``ann2``) and a maintainer (``boss``), and ``kill()`` (SIGKILL) / ``start()`` to test
crashes. The server's model store is its own ``MOUSESEGMENT_HOME``; the test process gets another
one (the client's), so a pulled model really travels.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``mousesegment ARGS`` in a child process."""
    return subprocess.run([sys.executable, "-m", "napari_mousesegment.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


@dataclass
class LabServer:
    root: Path
    worker: bool = False
    extra: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    tokens: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def home(self) -> Path:
        """The server's MOUSESEGMENT_HOME (its model store)."""
        return self.root / "server-home"

    @property
    def env(self) -> dict:
        return {**os.environ, "MOUSESEGMENT_HOME": str(self.home)}

    def add_user(self, name: str, role: str) -> Path:
        done = cli("users", "add", name, "--role", role, "--queue", str(self.queue_dir), env=self.env)
        assert done.returncode == 0, done.stderr
        token = done.stdout.strip().splitlines()[-1]
        path = self.root / f"{name}.token"
        path.write_text(token + "\n")
        self.tokens[name] = path
        return path

    def start(self, timeout: float = 60) -> LabServer:
        import httpx

        args = ["serve", "--queue", str(self.queue_dir), "--host", "127.0.0.1", "--port", str(self.port),
                "--device", "cpu", "--worker" if self.worker else "--no-worker", *self.extra]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115  (kept open for the child's life)
        self.process = subprocess.Popen([sys.executable, "-m", "napari_mousesegment.cli", *args], env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"server did not answer within {timeout} s: {self.log()[-2000:]}")

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the server and everything it started (its worker too), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def make_server(root: Path, *, worker: bool = False, extra: tuple[str, ...] = ()) -> LabServer:
    root.mkdir(parents=True, exist_ok=True)
    server = LabServer(root, worker=worker, extra=extra)
    server.queue_dir.mkdir(parents=True, exist_ok=True)
    for name, role in (("ann1", "annotator"), ("ann2", "annotator"), ("boss", "maintainer")):
        server.add_user(name, role)
    return server.start()


@pytest.fixture
def lab_server(tmp_path, monkeypatch):
    """A running server without a worker; the test process is a client with its own model home
    and outbox."""
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "client-home"))
    monkeypatch.setenv("MOUSESEGMENT_OUTBOX", str(tmp_path / "client-outbox"))
    server = make_server(tmp_path / "lab")
    yield server
    server.stop()
