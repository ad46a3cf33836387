"""Shared fixtures: synthetic data is made once per session, small where the test allows."""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from functools import partial
from pathlib import Path

import pytest

from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.data.phantom_us import ultrasound_series

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file from ../shared/data, read in place; skipped locally, an error in CI, when missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI must have ../shared beside the clone")
        pytest.skip(f"{path} not found (../shared/data is not beside this checkout)")
    return path


@pytest.fixture(scope="session")
def ct_native():
    """Full-size native phantom, seed 0."""
    return ct_phantom(seed=0, condition="native")


@pytest.fixture(scope="session")
def ct_contrast():
    """Full-size contrast phantom, seed 0 (same animal as ``ct_native``)."""
    return ct_phantom(seed=0, condition="contrast")


@pytest.fixture(scope="session")
def us_series():
    """Full-size 35-frame ultrasound series, seed 0."""
    return ultrasound_series(seed=0)


@pytest.fixture(scope="session")
def imagej_jar() -> Path:
    """ImageJ 1.53t from Debian's `imagej` package, plus xvfb-run to give it a display."""
    jar = Path("/usr/share/java/ij.jar")
    if not jar.exists() or shutil.which("java") is None:
        if os.environ.get("CI"):
            pytest.fail("ImageJ is missing in CI: .ci/run must `apt-get install imagej`")
        pytest.skip("ImageJ not installed (apt-get install imagej)")
    return jar


@pytest.fixture
def served(tmp_path):
    """A local HTTP server (loopback only, no network) serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def fifo(tmp_path):
    """A named pipe (``pipe.tif``): a reader that opens it would block until a writer comes."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    path = tmp_path / "pipe.tif"
    os.mkfifo(path)
    return path
