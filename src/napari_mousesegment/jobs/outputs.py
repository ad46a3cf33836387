"""Per-input output folders that a crash, a killed worker or a full disk never leaves looking complete.

Files are written into a temporary folder beside the target, moved in one by one (each move is
atomic), and a small manifest (``.complete.json``) is written last; it is removed before an input
is computed again. A folder is complete when its manifest lists every part asked for (the CT labels,
an ultrasound organ) made by the same model and settings (a fingerprint), and every file it names
exists, so a rerun can skip complete inputs and redo the rest, including inputs made with another
model.
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


def is_complete(folder: Path, wanted: dict[str, str]) -> bool:
    """Whether ``folder`` holds every part in ``wanted`` (part -> fingerprint of model and settings)."""
    manifest = read_manifest(folder)
    if manifest is None or not all((folder / name).is_file() for name in manifest.get("files", [])):
        return False
    parts = manifest.get("parts", {})
    return isinstance(parts, dict) and all(parts.get(name) == value for name, value in wanted.items())


@contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """A temporary folder to write an input's outputs into; on success they replace ``folder``'s.

    The folder stops counting as complete as soon as this starts; call :func:`mark_complete` after.
    Staging folders left by a killed writer of the same folder are removed first.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        yield tmp
        folder.mkdir(exist_ok=True)
        for path in sorted(tmp.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mark_complete(folder: Path, files: list[str], parts: dict[str, str], **info: Any) -> None:
    """Write the manifest, last and atomically: from here on ``folder`` counts as complete."""
    manifest = {"files": sorted(files), "parts": parts, "written": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    tmp = folder / (MANIFEST + ".partial")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, folder / MANIFEST)
