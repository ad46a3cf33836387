"""The fuzz suite at length: every reader and command on many bad inputs, with outcome counts.

    python benchmarks/fuzz.py [--examples N] [--seed S] [--counts FILE] [-- PYTEST ARGS...]
    python benchmarks/fuzz.py --table FILE

Runs ``tests/fuzz`` under the hypothesis profile ``long`` (N examples per property test, 2000 by
default; ``--seed`` makes the run repeatable), has the harness add its outcome counts to a JSON
file (``FUZZ_COUNTS``) and prints them as a Markdown table: ok, clean error (one line naming the
file or option), unclear error, traceback, hang, wrong but accepted (exit 0, or data changed, where
the input must be refused). The exit status is pytest's. ``--table FILE`` only prints the table of
a counts file written before (e.g. by ``FUZZ_COUNTS=FILE python -m pytest tests/fuzz``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (("ok", "ok"), ("error", "clean error"), ("unclear", "unclear error"), ("traceback", "traceback"),
           ("hang", "hang"), ("wrong", "wrong but accepted"))


def markdown(counts: dict[str, dict[str, int]]) -> str:
    """The counts per reader or command (and their total) as a Markdown table."""
    head = "| reader or command | cases | " + " | ".join(title for _, title in COLUMNS) + " |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    totals = dict.fromkeys((key for key, _ in COLUMNS), 0)
    for reader in sorted(counts):
        row = counts[reader]
        for key, _ in COLUMNS:
            totals[key] += row.get(key, 0)
        cells = [str(row.get(key, 0)) for key, _ in COLUMNS]
        rows.append(f"| {reader} | {sum(row.get(k, 0) for k, _ in COLUMNS)} | " + " | ".join(cells) + " |")
    rows.append(f"| **all** | **{sum(totals.values())}** | " + " | ".join(f"**{totals[k]}**" for k, _ in COLUMNS) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per property test (2000)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed, for a repeatable run (0)")
    parser.add_argument("--counts", type=Path, default=None, help="JSON file for the counts (default: a temp file)")
    parser.add_argument("--table", type=Path, default=None, metavar="FILE",
                        help="only print the Markdown table of this counts file (no run)")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args(argv)
    if args.table is not None:
        if not args.table.is_file():
            parser.error(f"--table {args.table}: no such counts file")
        print(markdown(json.loads(args.table.read_text())))
        return 0
    counts = args.counts or Path(tempfile.mkdtemp(prefix="fuzz-")) / "counts.json"
    counts.unlink(missing_ok=True)
    env = {**os.environ, "HYPOTHESIS_PROFILE": "long", "FUZZ_EXAMPLES": str(args.examples),
           "FUZZ_COUNTS": str(counts)}
    command = [sys.executable, "-m", "pytest", "tests/fuzz", "-q", "-p", "no:xvfb", "-p", "no:cacheprovider",
               f"--hypothesis-seed={args.seed}", *args.pytest_args]
    start = time.monotonic()
    code = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
    elapsed = time.monotonic() - start
    table = json.loads(counts.read_text()) if counts.is_file() else {}
    print()
    print(markdown(table))
    print(f"\n{args.examples} examples per property test, seed {args.seed}: "
          f"{sum(sum(r.values()) for r in table.values())} cases in {elapsed:.0f} s; pytest exit {code}; "
          f"counts in {counts}")
    return code


if __name__ == "__main__":
    sys.exit(main())
