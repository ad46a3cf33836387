"""Per-input output folders that a crash, a killed worker or a full disk never leaves looking complete.

Files are written into a temporary folder beside the target, moved in one by one (each move is
atomic), and a small manifest (``.complete.json``) is written last; it is removed before an input
is computed again. A folder is complete when its manifest lists everything asked for and every
file it names exists, so a rerun can skip complete inputs and redo the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MANIFEST = ".complete.json"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_complete(folder: Path, parts: list[str] | None = None) -> bool:
    """Whether ``folder`` holds a finished result (for each of ``parts``, e.g. organs, when given)."""
    manifest = read_manifest(folder)
    if manifest is None or not all((folder / name).is_file() for name in manifest.get("files", [])):
        return False
    return set(parts or []) <= set(manifest.get("parts", []))


@contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """A temporary folder to write an input's outputs into; on success they replace ``folder``'s.

    The folder stops counting as complete as soon as this starts; call :func:`mark_complete` after.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        yield tmp
        folder.mkdir(exist_ok=True)
        for path in sorted(tmp.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mark_complete(folder: Path, files: list[str], parts: list[str] | None = None, **info: Any) -> None:
    """Write the manifest, last and atomically: from here on ``folder`` counts as complete."""
    manifest = {"files": sorted(files), "parts": sorted(parts or []), "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **info}
    tmp = folder / (MANIFEST + ".partial")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, folder / MANIFEST)
