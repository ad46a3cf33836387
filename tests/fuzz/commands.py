"""Judging whole CLI commands on bad arguments and files: the oracles of the command fuzz suite.

:func:`judge` runs ``mousesegment ARGV`` in-process under the harness's time and memory limits
and sorts the outcome: ``"ok"`` (exit 0), ``"error"`` (a non-zero exit with exactly one stderr
line ``mousesegment CMD: error: ...`` that names the file or option) or ``"usage"`` (argparse's
own usage error). Anything else (an uncaught exception, the one-line notice of an unexpected
exception that points to a traceback file, a many-line or anonymous error, a hang) is counted
and raised as :class:`~.harness.FuzzFailure`. :func:`refused` adds the third oracle of issue 21:
an input that must be refused but exits 0 is counted as ``"wrong"`` (wrong but accepted).

:func:`bad_file` makes the files a user or a failing disk produces (missing, a folder, a named
pipe, empty, truncated), and :func:`snapshot` lists a queue's item folders, so a test can check
that no command makes one disappear.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from hypothesis import Phase, settings

from .harness import COUNTS, TIME_LIMIT, FuzzFailure, Hang, count, memory_limit, time_limit

#: Files as a user or a failing disk gives them; "truncated" keeps the first half of a valid file.
FILE_CLASSES = ("missing", "folder", "fifo", "empty", "truncated")
#: Words of the one line that an *unexpected* exception prints (it points to a traceback): not a clean error.
_UNEXPECTED = ("traceback", "--debug", "unexpected")
#: Lines on stderr that are no error: warnings, the access log of the tests' own HTTP server, and
#: pooch's note of a download.
_NOISE = re.compile(r"^(warning: |\d+\.\d+\.\d+\.\d+ - - \[|Downloading data from )")


def examples(ci: int) -> settings:
    """Hypothesis settings of a test with ``ci`` examples under the ``ci`` profile; under the
    ``long`` profile the profile's own count (or ``ci``, when larger). No shrinking: the inputs are
    drawn from short lists already, and shrinking a hang would cost the time limit per step."""
    base = settings.default.max_examples
    return settings(max_examples=ci if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else max(ci, base),
                    phases=(Phase.explicit, Phase.reuse, Phase.generate))


def judge(argv: list[str], capsys, what: str, names: tuple[str, ...], timeout: float = TIME_LIMIT) -> str:
    """Run ``mousesegment ARGV`` and sort the outcome: "ok", "error" or "usage"; a traceback, an
    unclear error or more than ``timeout`` seconds (a hang) raises :class:`FuzzFailure` (and is
    counted under ``what``)."""
    from napari_mousesegment.cli import main

    argv = [str(a) for a in argv]
    capsys.readouterr()
    try:
        with time_limit(timeout), memory_limit():
            code = main(argv)
    except SystemExit as exc:  # argparse's own usage error: exit 2, usage and one error line
        err = capsys.readouterr().err
        if exc.code == 2 and "error:" in err:
            count(what, "error")
            return "usage"
        count(what, "traceback")
        raise FuzzFailure(f"{what}: SystemExit({exc.code!r}) for {argv}: {err!r}") from exc
    except Hang:
        count(what, "hang")
        raise FuzzFailure(f"{what}: hung (> {timeout} s) for {argv}") from None
    except BaseException as exc:
        count(what, "traceback")
        raise FuzzFailure(f"{what}: uncaught {type(exc).__name__} for {argv}: {exc}") from exc
    err = capsys.readouterr().err
    if code == 0:
        count(what, "ok")
        return "ok"
    lines = [line for line in err.splitlines() if line.strip() and not _NOISE.match(line)]
    if (len(lines) == 1 and lines[0].startswith("mousesegment ") and "error:" in lines[0]
            and any(n and n in lines[0] for n in names)):
        if any(word in lines[0].lower() for word in _UNEXPECTED):
            count(what, "traceback")
            raise FuzzFailure(f"{what}: unexpected exception for {argv}: {lines[0]!r}")
        count(what, "error")
        return "error"
    count(what, "unclear")
    raise FuzzFailure(f"{what}: exit {code} for {argv} with stderr {err!r} (want one line naming one of {names})")


def wrong(what: str, argv: list, why: str, was: str | None = None) -> None:
    """Count and raise a wrong result of ``argv`` (exit 0 where it must not, or data changed); ``was``
    is the outcome :func:`judge` counted for it, which this one replaces."""
    if was is not None:
        COUNTS[what]["error" if was == "usage" else was] -= 1
    count(what, "wrong")
    raise FuzzFailure(f"{what}: wrong result for {[str(a) for a in argv]}: {why}")


def refused(argv: list, capsys, what: str, names: tuple[str, ...], why: str, timeout: float = TIME_LIMIT) -> str:
    """:func:`judge`, where exit 0 is itself a failure (the input is nonsense and must be refused)."""
    outcome = judge(argv, capsys, what, names, timeout)
    if outcome == "ok":
        wrong(what, argv, f"accepted (exit 0): {why}", was="ok")
    return outcome


def bad_file(kind: str, path: Path, valid: bytes = b"") -> Path:
    """``path`` made into a bad input of class ``kind`` (:data:`FILE_CLASSES`); ``valid`` is the
    file it stands for (truncated keeps its first half)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    if kind == "folder":
        path.mkdir(parents=True)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(valid[:len(valid) // 2])
    elif kind != "missing":
        raise ValueError(f"no file class {kind!r}")
    return path


def snapshot(queue: Path) -> set[str]:
    """The item folders of a queue with each file in them: what must never disappear."""
    items = queue / "items"
    if not items.is_dir():
        return set()
    return {str(p.relative_to(items)) for p in items.rglob("*")}


#: A model folder broken as a hand edit, a bad download or another lab's export leaves it.
BROKEN_MODELS = ("config a list", "config not JSON", "width 100000", "width 0", "threshold NaN", "threshold 2",
                 "organs empty", "organ ''", "image_size 100000", "weights missing", "weights truncated")


def broken_model(builtin: str, how: str, folder: Path) -> Path:
    """A copy of the built-in model ``builtin`` in ``folder``, broken as ``how`` (:data:`BROKEN_MODELS`)
    says; a change that does not apply to the model's kind (a MOSnet has no threshold) breaks
    the nearest thing it has."""
    import json
    import math

    from napari_mousesegment.store.registry import BUILTIN

    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(BUILTIN / builtin, folder)
    config_path, weights = folder / "config.json", folder / "weights.safetensors"
    config = json.loads(config_path.read_text())
    mosnet = config.get("kind") == "mosnet"
    if how == "config a list":
        config = [config]
    elif how == "config not JSON":
        config_path.write_text('{"kind": "' + config["kind"] + '", "width": ')
        return folder
    elif how.startswith("width "):
        config["width"] = int(how.split()[1])
    elif how.startswith("threshold "):
        value = float(how.split()[1])
        if mosnet:  # no threshold: its intensity window, NaN or negative
            config["window_width"] = value if math.isnan(value) else -value
        else:
            config["threshold"] = value
    elif how == "organs empty":
        config["organs" if mosnet else "organ"] = [] if mosnet else ""
    elif how == "organ ''":
        if mosnet:
            config["organs"] = ["", *config["organs"][1:]]
        else:
            config["organ"] = " "
    elif how == "image_size 100000":
        config["image_size"] = 100000
    elif how == "weights missing":
        weights.unlink()
    elif how == "weights truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        raise ValueError(f"no broken model {how!r}")
    config_path.write_text(json.dumps(config, indent=2))  # NaN is written as the JSON extension NaN
    return folder
