"""``mousesegment roi import|export``: ImageJ/Fiji ROIs to instance labels and back."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options


def _cmd_import(args: argparse.Namespace) -> int:
    from ..jobs.rois import frames_shape, import_rois

    import_rois(args.rois, args.shape or frames_shape(args.like), args.out)
    return 0


def _frames(text: str) -> Path:
    """``--like``: a path that is not empty (an empty one would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give the frames file (or folder) the ROIs were drawn on, got ''")
    return Path(text)


def _cmd_export(args: argparse.Namespace) -> int:
    from ..jobs.rois import export_rois

    export_rois(args.labels, args.out, args.organ)
    return 0


def add_commands(sub) -> None:
    roi = sub.add_parser("roi", help="ImageJ/Fiji ROIs to instance labels and back")
    roi_sub = roi.add_subparsers(dest="action", required=True, metavar="ACTION")
    rin = roi_sub.add_parser("import", help="a RoiSet zip or .roi file to an instance-label TIFF")
    rin.add_argument("rois", type=Path)
    size = rin.add_mutually_exclusive_group(required=True)
    size.add_argument("--shape", type=options.shape, help="N,H,W of the stack (or H,W)")
    size.add_argument("--like", type=_frames, metavar="FRAMES",
                      help="take N,H,W from the frames the ROIs were drawn on: a TIFF stack, a montage, "
                           "a folder of frames or one 2D frame")
    rin.add_argument("--out", type=Path, required=True, help="labels TIFF to write")
    rin.set_defaults(func=_cmd_import)
    rout = roi_sub.add_parser("export", help="an instance-label TIFF (2D or N,H,W) to a RoiSet zip")
    rout.add_argument("labels", type=Path)
    rout.add_argument("--out", type=Path, required=True, help="RoiSet zip to write (replaced, never appended)")
    rout.add_argument("--organ", default="organ", help="name prefix of the ROIs (default: organ)")
    rout.set_defaults(func=_cmd_export)
