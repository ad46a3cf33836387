"""The Dask options of ``predict ct`` and ``predict ultrasound``: many inputs on a cluster."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An option's whole number of at least 1 (--workers, --batch-size), or an argparse error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="run on a local Dask cluster of N worker processes; inputs whose outputs are complete "
                            "are skipped, failures are reported at the end")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run on an existing Dask cluster, e.g. tcp://host:8786 (dask-jobqueue on SLURM/PBS)")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --workers/--scheduler: redo inputs whose outputs are already complete")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for --scheduler before giving up (default 10)")


def distributed(args: argparse.Namespace) -> bool:
    return args.workers is not None or args.scheduler is not None


def exit_code(outcomes: list) -> int:
    """0 when every input is done or skipped; 1 when some failed (each was reported)."""
    return 1 if any(o.status == "failed" for o in outcomes) else 0
