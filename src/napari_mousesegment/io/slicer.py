"""3D Slicer colour tables (``.ctbl``): label value, name and colour, so a label map opens named.

The format (Slicer's Colors module): ``#`` header lines, then ``value name R G B A`` per label,
colours 0-255, spaces in names replaced by underscores. Load it in Slicer with the labels
(File > Add Data), or pick it as the labelmap's colour table.
"""

from __future__ import annotations

import os
from pathlib import Path

from .atomic import write_atomic


def write_color_table(path: str | os.PathLike, labels: dict[int, tuple[str, str]]) -> Path:
    """Write ``{value: (name, "#rrggbb")}`` as a Slicer colour table, with 0 as transparent background."""
    path = Path(path)
    rows = ["0 background 0 0 0 0"]
    for value, (name, color) in sorted(labels.items()):
        red, green, blue = (int(color.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4))
        rows.append(f"{int(value)} {name.replace(' ', '_')} {red} {green} {blue} 255")
    text = "\n".join([f"# Color table file {path.name}", f"# {len(rows)} values", *rows]) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def read_color_table(path: str | os.PathLike) -> dict[int, str]:
    """Label value -> name of a Slicer colour table (background included)."""
    names = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if parts and not line.startswith("#"):
            names[int(parts[0])] = parts[1]
    return names
