"""The ``mousesegment`` command line: one module per command family, shared option rules in
:mod:`.options`, the work itself in :mod:`..jobs`, :mod:`..training` and :mod:`..active`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per job."""
    from .. import __version__
    from . import active, ct, data, models, roi, server, ultrasound

    parser = argparse.ArgumentParser(
        prog="mousesegment",
        description="Mouse organ segmentation: micro-CT (MOSnet) and fetal ultrasound (U-Nets).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    """Entry point of the ``mousesegment`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "count", 1) < 1:
        parser.error("--count must be at least 1")
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # bad input: one clear line, no traceback
        print(f"mousesegment {args.command}: error: {exc}", file=sys.stderr)
        return 2
