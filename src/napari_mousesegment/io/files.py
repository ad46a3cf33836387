"""Input files checked before anything opens them.

Opening a named pipe blocks until some other program writes to it, and a device may never end, so
a reader handed one hangs. :func:`regular_file` refuses everything but an ordinary file (symbolic
links are followed) by its ``stat`` alone, before any reader opens it, with a message naming it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: What a ``stat`` mode is, for the message that refuses it.
_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def kind(path: str | os.PathLike) -> str:
    """What ``path`` is ("a file", "a folder", "a named pipe", ...), or "missing"; never opens it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:  # a loop of links, no permission to look, a name too long
        return f"unreadable ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return "a file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` once it is known to be an ordinary file, else a ValueError naming it.

    Named pipes, devices and sockets are refused before they are opened (a reader would wait on
    them forever); folders and missing paths are refused with what they are.
    """
    path = Path(path)
    found = kind(path)
    if found == "a file":
        return path
    if found == "missing":
        raise ValueError(f"{path}: no such {what}")
    if found.startswith("unreadable"):
        raise ValueError(f"{path}: cannot be read: {found[len('unreadable ('):-1]}")
    raise ValueError(f"{path}: is {found}, not a regular {what}")
