"""Sizes checked before they are allocated.

A damaged header, a typo in ``--shape`` or a voxel size in the wrong unit can ask for terabytes.
:func:`check_allocation` refuses, before numpy or torch tries, anything that needs more than
:data:`MEMORY_SHARE` of this machine's physical memory, and says how much it would have needed.
"""

from __future__ import annotations

import math
import os
import shutil
import zipfile
from collections.abc import Iterable

#: Share of the physical memory one array (or one step's arrays together) may take.
MEMORY_SHARE = 0.5
#: Assumed physical memory where the system does not say (os.sysconf is POSIX only).
FALLBACK_MEMORY = 16 << 30


class TooLarge(ValueError):
    """An allocation refused before it was tried: it would need too much of the machine's memory."""


def physical_memory() -> int:
    """Bytes of physical memory of this machine (:data:`FALLBACK_MEMORY` where it cannot be asked)."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return FALLBACK_MEMORY
    return pages * size if pages > 0 and size > 0 else FALLBACK_MEMORY


def human(nbytes: float) -> str:
    """A byte count for people: 512 B, 3.2 MB, 7.3 TB (powers of 1000)."""
    if not math.isfinite(nbytes):
        return "an unbounded amount"
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(nbytes) < 1000 or unit == "PB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} PB"  # pragma: no cover - the loop always returns


def limit() -> int:
    """The most bytes :func:`check_allocation` lets one step allocate."""
    return int(physical_memory() * MEMORY_SHARE)


def nbytes(shape: Iterable[int], itemsize: int) -> int:
    """Bytes of an array of ``shape`` and ``itemsize`` bytes per element, as an exact integer
    (never overflows, unlike numpy's product of a huge shape)."""
    return math.prod(int(n) for n in shape) * int(itemsize)


def check_allocation(size: int, what: str) -> int:
    """``size`` bytes when they fit in :func:`limit`, else :class:`TooLarge` naming ``what`` and the need.

    ``what`` says what is allocated and for which file or option (``"--shape 1,2,3: the labels"``),
    so the message stands on its own.
    """
    size = int(size)
    if size > limit():
        raise TooLarge(f"{what} would need {human(size)} of memory, more than {MEMORY_SHARE:.0%} of this "
                       f"machine's {human(physical_memory())}")
    return size


def reserve_disk(path: str | os.PathLike, size: int, what: str) -> None:
    """Give the new file ``path`` its ``size`` bytes on disk now, or raise :class:`TooLarge` naming
    ``what`` and the free space. A file memory-mapped later then never meets a full disk halfway
    (which would kill the process with SIGBUS rather than raise)."""
    size = int(size)
    folder = os.path.dirname(os.path.abspath(path))
    free = shutil.disk_usage(folder).free
    if size > free:
        raise TooLarge(f"{what} would need {human(size)} of disk space; {folder} has {human(free)} free")
    with open(path, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except AttributeError:  # no posix_fallocate (macOS, Windows): a sparse file, checked against free space above
            f.truncate(size)
        except OSError as exc:
            raise TooLarge(f"{what} would need {human(size)} of disk space; {folder}: {exc.strerror}") from exc


#: Deflate shrinks data at most about 1032:1; a member declaring more than that per stored byte lies.
MAX_DEFLATE_RATIO = 1032


def check_zip_member(archive: str | os.PathLike, member: zipfile.ZipInfo, most: int) -> int:
    """The declared size of a zip member, once it is at most ``most`` bytes and could be held by
    the bytes the member stores; else :class:`TooLarge` (or ValueError for a lying header) naming
    the archive and the member. Checked before anything is inflated."""
    size, stored = int(member.file_size), int(member.compress_size)
    where = f"{archive}: member {member.filename!r}"
    if member.compress_type == zipfile.ZIP_STORED and size != stored:
        raise ValueError(f"{where} declares {size} bytes but stores {stored} (a damaged zip)")
    if member.compress_type == zipfile.ZIP_DEFLATED and size > MAX_DEFLATE_RATIO * stored + 1024:
        raise ValueError(f"{where} declares {size} bytes, more than its {stored} compressed bytes can hold "
                         "(a damaged zip)")
    if size > most:
        raise TooLarge(f"{where} declares {human(size)}, more than such a file may hold ({human(most)})")
    return size
