"""Mutate the bytes of valid files and judge what a reader makes of them.

:func:`mutations` is a hypothesis strategy: byte flips, runs overwritten (random bytes, 0x00,
0xFF or extreme integers, which is what breaks declared sizes), truncation anywhere (to nothing
too), chunks swapped, duplicated or inserted. :func:`classify` runs a reader on the mutated file
under a time limit and an address-space limit and sorts the result: ``"ok"``, or ``"error"`` for
the one clean failure we accept, a ``ValueError`` whose one-line message names the file. Anything
else (another exception, an unclear message, a hang) raises :class:`FuzzFailure` with a copy of
the input kept for reproducing it.

When the environment variable ``FUZZ_COUNTS`` names a JSON file, the outcome counts per reader
are added to it at the end of the session (see ``benchmarks/fuzz.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import tempfile
import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from hypothesis import strategies as st

#: Every outcome counted, in table order: :func:`classify` counts the first five; "wrong" (wrong but
#: accepted: exit 0 on an input that must be refused) is counted by the command suite (``commands.py``).
OUTCOMES = ("ok", "error", "unclear", "traceback", "hang", "wrong")
#: Seconds a reader may take on one input before it counts as hung.
TIME_LIMIT = 10.0
#: Address space a reader may add (bytes) before an allocation fails: absurd declared sizes must be
#: refused by a check, not by the machine running out of memory.
MEMORY_HEADROOM = 3 << 30
#: Integers that break declared sizes, counts and offsets, little- and big-endian.
EXTREMES = (b"\x00\x00\x00\x80", b"\xff\xff\xff\x7f", b"\xff\xff\xff\xff", b"\x7f\xff", b"\x80\x00",
            b"\xff\xff", b"\x00\x00\x80\x7f", b"\x00\x00\xc0\x7f", b"\x00\x00\x80\xff", b"\x01\x00\x00\x00")

COUNTS: dict[str, Counter] = defaultdict(Counter)


class FuzzFailure(AssertionError):
    """A reader failed badly on a mutated file: a traceback, an unclear error or a hang."""


class Hang(BaseException):
    """Raised by the time limit; a BaseException so that readers' ``except Exception`` pass it on."""


# --- mutations -------------------------------------------------------------------------------


def _position(draw, n: int, focus: tuple[int, int] | None) -> int:
    """A position in [0, n], inside ``focus`` half of the time when one is given."""
    if focus is not None and focus[0] < n and draw(st.booleans()):
        return draw(st.integers(focus[0], min(focus[1], n)))
    return draw(st.integers(0, n))


def _length(draw, n: int) -> int:
    """A chunk length: mostly short, sometimes up to half the file."""
    return draw(st.one_of(st.integers(1, 16), st.integers(1, max(1, n // 2))))


def _filler(draw, k: int) -> bytes:
    kind = draw(st.sampled_from(("random", "zeros", "ones", "extreme")))
    if kind == "zeros":
        return bytes(k)
    if kind == "ones":
        return b"\xff" * k
    if kind == "extreme":
        return draw(st.sampled_from(EXTREMES))
    return draw(st.binary(min_size=k, max_size=k))


def _flip(draw, data: bytearray, focus) -> bytearray:
    if data:
        at = min(_position(draw, len(data) - 1, focus), len(data) - 1)
        data[at] ^= 1 << draw(st.integers(0, 7))
    return data


def _overwrite(draw, data: bytearray, focus) -> bytearray:
    at = _position(draw, len(data), focus)
    fill = _filler(draw, _length(draw, len(data)))
    data[at:at + len(fill)] = fill
    return data


def _truncate(draw, data: bytearray, focus) -> bytearray:
    return data[:_position(draw, len(data), focus)]


def _swap(draw, data: bytearray, focus) -> bytearray:
    k = _length(draw, len(data))
    a, b = sorted((_position(draw, len(data), focus), _position(draw, len(data), focus)))
    if b - a < k or b + k > len(data):
        return data
    data[a:a + k], data[b:b + k] = data[b:b + k], data[a:a + k]
    return data


def _duplicate(draw, data: bytearray, focus) -> bytearray:
    at, to = _position(draw, len(data), focus), _position(draw, len(data), focus)
    chunk = data[at:at + _length(draw, len(data))]
    data[to:to] = chunk
    return data


def _insert(draw, data: bytearray, focus) -> bytearray:
    at = _position(draw, len(data), focus)
    data[at:at] = _filler(draw, _length(draw, len(data)))
    return data


OPERATIONS = {"flip": _flip, "overwrite": _overwrite, "truncate": _truncate, "swap": _swap,
              "duplicate": _duplicate, "insert": _insert}


@st.composite
def mutations(draw, seed: bytes, focus: tuple[int, int] | None = None, max_ops: int = 4) -> bytes:
    """``seed`` changed by 1..``max_ops`` operations (:data:`OPERATIONS`); ``focus`` is a byte range
    (a header) that half the positions are drawn from."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        data = OPERATIONS[draw(st.sampled_from(tuple(OPERATIONS)))](draw, data, focus)
    return bytes(data)


# --- judging a reader ------------------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread after ``seconds`` (SIGALRM; POSIX main thread only)."""
    def alarm(signum, frame):
        raise Hang(f"more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _address_space() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize")


@contextlib.contextmanager
def memory_limit(headroom: int = MEMORY_HEADROOM) -> Iterator[None]:
    """Let allocations fail (MemoryError) beyond ``headroom`` more address space (Linux only)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = _address_space() + headroom
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def keep(path: Path, reader: str) -> Path:
    """Copy a failing input where it survives the test's temporary folder."""
    folder = Path(os.environ.get("FUZZ_FAILURES", Path(tempfile.gettempdir()) / "mousesegment-fuzz-failures"))
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(path.read_bytes() if path.is_file() else str(path).encode()).hexdigest()[:10]
    target = folder / f"{reader.replace(' ', '_')}-{digest}-{path.name}"
    if path.is_file():
        shutil.copyfile(path, target)
    return target


def classify(call: Callable[[Path], object], path: Path, reader: str = "reader", *,
             timeout: float = TIME_LIMIT) -> str:
    """Run ``call(path)``: "ok", or "error" for a one-line ValueError naming ``path.name``;
    anything else is counted and raised as :class:`FuzzFailure` with the input's reproducer."""
    path = Path(path)
    try:
        with warnings.catch_warnings(), time_limit(timeout), memory_limit():
            warnings.simplefilter("ignore")
            call(path)
    except Hang:
        COUNTS[reader]["hang"] += 1
        raise FuzzFailure(f"{reader} hung (> {timeout} s) on {keep(path, reader)}") from None
    except ValueError as exc:
        message = str(exc)
        if path.name in message and "\n" not in message:
            COUNTS[reader]["error"] += 1
            return "error"
        COUNTS[reader]["unclear"] += 1
        raise FuzzFailure(f"{reader}: unclear error for {keep(path, reader)}: {message!r}") from exc
    except Exception as exc:
        COUNTS[reader]["traceback"] += 1
        raise FuzzFailure(f"{reader}: {type(exc).__name__} on {keep(path, reader)}\n"
                          f"{traceback.format_exc()}") from exc
    COUNTS[reader]["ok"] += 1
    return "ok"


def count(reader: str, outcome: str) -> None:
    """Count an outcome judged elsewhere (the CLI tests judge exit codes and stderr themselves)."""
    COUNTS[reader][outcome] += 1


def write_counts(target: str | os.PathLike | None = None) -> None:
    """Add this session's counts to the JSON file ``target`` (default: $FUZZ_COUNTS; none: do nothing)."""
    target = target or os.environ.get("FUZZ_COUNTS")
    if not target or not COUNTS:
        return
    path = Path(target)
    totals = json.loads(path.read_text()) if path.is_file() else {}
    for reader, counts in COUNTS.items():
        merged = Counter(totals.get(reader, {}))
        merged.update(counts)
        totals[reader] = {k: merged.get(k, 0) for k in OUTCOMES}
    path.write_text(json.dumps(totals, indent=2, sort_keys=True) + "\n")
