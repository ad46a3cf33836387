"""The ``mousesegment`` command line: one module per command family, shared option rules in
:mod:`.options`, the work itself in :mod:`..jobs`, :mod:`..training` and :mod:`..active`.

Every failure the program foresees ends as one line on stderr,
``mousesegment COMMAND: error: FILE-OR-OPTION: PROBLEM``, and exit status 2 (see :func:`main`);
anything else as one line that says where its traceback was written, and exit status 1.
``mousesegment --debug COMMAND ...`` prints the traceback too.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

#: Exit status of a foreseen failure (bad input, a damaged file, no memory), as argparse's own.
EXIT_BAD_INPUT = 2
#: Exit status of an unexpected failure (a bug): its traceback is written to :func:`error_log`.
EXIT_UNEXPECTED = 1
#: Exit status after Ctrl-C, as a shell reports a process ended by SIGINT.
EXIT_INTERRUPTED = 130
#: Errors of libraries that mean a damaged or foreign file, by class name (checked along the class's
#: ancestry, so that the libraries need not be imported here): zipfile, nibabel, pydicom,
#: safetensors, tifffile, h5py, httpx.
LIBRARY_ERRORS = ("BadZipFile", "LargeZipFile", "ImageFileError", "HeaderDataError", "InvalidDicomError",
                  "SafetensorError", "TiffFileError", "TransportError", "HTTPStatusError")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per job."""
    from .. import __version__
    from . import active, ct, data, models, roi, server, ultrasound

    parser = argparse.ArgumentParser(
        prog="mousesegment",
        description="Mouse organ segmentation: micro-CT (MOSnet) and fetal ultrasound (U-Nets).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the full traceback as well as the one-line message")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.add_commands(sub)
    families = {name: sub.add_parser(name, help=text).add_subparsers(dest=dest, required=True, metavar=meta)
                for name, text, dest, meta in (
                    ("dataset", "convert annotated scans into a dataset folder", "modality", "MODALITY"),
                    ("train", "train a model", "model_kind", "MODEL"),
                    ("predict", "segment scans with a trained model", "modality", "MODALITY"),
                    ("evaluate", "score a trained model against a dataset's truth", "modality", "MODALITY"))}
    data.add_dataset_commands(families["dataset"])
    ct.add_commands(families["train"], families["predict"], families["evaluate"])
    ultrasound.add_commands(families["train"], families["predict"], families["evaluate"])
    roi.add_commands(sub)
    models.add_commands(sub)
    active.add_commands(sub)
    server.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mousesegment`` console script: run one command, and turn any failure
    into one line on stderr and an exit status (see the module's docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "count", 1) < 1:
        parser.error("--count must be at least 1")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _say(args, "interrupted (Ctrl-C)")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place every failure becomes one line
        return report(args, exc, sys.argv[1:] if argv is None else list(argv))


def report(args: argparse.Namespace, exc: Exception, argv: Sequence[str] = ()) -> int:
    """Print ``exc`` as one line (and its traceback with ``--debug``); the exit status it deserves."""
    if getattr(args, "debug", False):
        traceback.print_exception(exc, file=sys.stderr)
    problem = foreseen(exc)
    if problem is not None:
        _say(args, _with_subject(args, problem))
        return EXIT_BAD_INPUT
    where = write_traceback(exc, argv)
    text = one_line(str(exc)) or "(no message)"
    _say(args, _with_subject(args, f"unexpected {type(exc).__name__}: {text}") +
         (f" (a bug: the traceback is in {where}; please report it)" if where else " (a bug; please report it)"))
    return EXIT_UNEXPECTED


def one_line(text: str) -> str:
    """A message as one line: line breaks (and the spaces around them) become one space, and other
    characters a terminal would not print (a file name or option value may hold any) are escaped."""
    text = re.sub(r"\s*\n\s*", " ", str(text)).strip()
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def foreseen(exc: BaseException) -> str | None:
    """The message of a failure the program foresees (bad input, a damaged or unreadable file, a
    full disk, too little memory), or None for one it does not (a bug)."""
    import sqlite3
    import struct
    import zlib

    if isinstance(exc, MemoryError):
        return f"needs more memory than this machine has: {one_line(str(exc)) or 'an allocation failed'}"
    if isinstance(exc, OSError):
        return _os_error(exc)
    if isinstance(exc, ValueError):  # our errors name their file or option; numpy's, json's, roifile's
        return one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, sqlite3.Error):
        return f"database error ({type(exc).__name__}: {one_line(str(exc))})"
    if isinstance(exc, (zlib.error, struct.error, EOFError)):
        what = {zlib.error: "compressed data", struct.error: "binary header", EOFError: "file"}
        kind = next(v for k, v in what.items() if isinstance(exc, k))
        return f"damaged {kind}: {one_line(str(exc)) or 'it ends too early'} (truncated or corrupt file?)"
    if any(cls.__name__ in LIBRARY_ERRORS for cls in type(exc).__mro__):
        return f"{one_line(str(exc))} ({type(exc).__name__})"
    return None


def _os_error(exc: OSError) -> str:
    """An OSError as ``FILE: problem`` (``[Errno 2] No such file...: 'x'`` becomes ``x: No such file...``)."""
    import errno

    reason = exc.strerror or one_line(str(exc)) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (the disk is full: free space and run the command again)"
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else one_line(str(exc)) or reason


def _inputs(args: argparse.Namespace) -> list[str]:
    """The paths among a command's arguments that exist on disk: the files it was given to read."""
    found = []
    for name, value in vars(args).items():
        if name in ("func", "command", "action", "modality", "model_kind", "debug") or value is None \
                or isinstance(value, bool):
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (str, os.PathLike)) and str(item) and os.path.lexists(item):
                found.append(str(item))
    return found


def _with_subject(args: argparse.Namespace, problem: str) -> str:
    """The message, led by the input file when it names no file or option of the command and the
    command read exactly one (a check deep inside a reader need not know the file's name)."""
    inputs = _inputs(args)
    values = [v for value in vars(args).values() for v in (value if isinstance(value, (list, tuple)) else [value])]
    named = [str(v) for v in values if isinstance(v, os.PathLike) or (isinstance(v, str) and str(v) in inputs)]
    if problem.startswith("--") or any(n in problem for n in named if len(n) > 1) or len(inputs) != 1:
        return problem
    return f"{inputs[0]}: {problem}"


def _say(args: argparse.Namespace, text: str) -> None:
    print(f"mousesegment {args.command}: error: {one_line(text)}", file=sys.stderr)


def error_log() -> Path:
    """Where the traceback of an unexpected failure goes: ``last-error.txt`` in
    ``$MOUSESEGMENT_HOME/logs`` when that is set, else in the user log folder (platformdirs)."""
    root = os.environ.get("MOUSESEGMENT_HOME")
    if root:
        return Path(root).expanduser() / "logs" / "last-error.txt"
    import platformdirs

    return platformdirs.user_log_path("napari-mousesegment", appauthor=False) / "last-error.txt"


def write_traceback(exc: BaseException, argv: Sequence[str] = ()) -> Path | None:
    """Write the traceback of ``exc`` to :func:`error_log` (or the system's temporary folder when that
    cannot be written); the file, or None when neither can."""
    import tempfile

    text = "".join(traceback.format_exception(exc))
    header = f"mousesegment {' '.join(map(str, argv))}\n\n"
    for target in (error_log(), Path(tempfile.gettempdir()) / "mousesegment-last-error.txt"):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(header + text, encoding="utf-8")
            return target
        except OSError:
            continue
    return None
