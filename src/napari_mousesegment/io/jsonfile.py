"""The project's JSON files (model configs, version indexes, dataset.json), read and written here.

Reading checks what is inside, so a file that is not JSON, or holds a list where a table belongs,
is refused with an error naming the file rather than failing later. Writing goes through a
temporary file and a rename, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .atomic import write_atomic


def read_object(path: str | os.PathLike, what: str = "a JSON object") -> dict[str, Any]:
    """The JSON object (a dict) in ``path``, or a ValueError naming the file and the problem."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:  # bad syntax or bytes, 5000-digit numbers, deep nesting
        raise ValueError(f"{path}: not valid JSON ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{path}: holds a {type(value).__name__}, not {what}")
    return value


def write_object(path: str | os.PathLike, value: dict[str, Any]) -> Path:
    """Write ``value`` as indented JSON, atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n"))
