"""The ``mousesegment`` command line."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path


def _grid(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must look like 5x7, got {text!r}") from None
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"grid must be at least 1x1, got {text!r}")
    return rows, cols


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, overwrite=args.overwrite, seed=args.seed)
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    import tifffile

    from .io.composites import read_composite

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        composite = read_composite(args.composite, grid=args.grid)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "frames.tif"
    tifffile.imwrite(target, composite.frames, imagej=True, metadata={"axes": "ZYX"})
    grid = f" (grid {composite.grid[0]}x{composite.grid[1]})" if composite.grid else ""
    print(f"{len(composite.frames)} frames{grid} -> {target}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .data.datasets import write_ct_case, write_us_series

    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{args.out} is not empty; choose another --out or pass --overwrite")
    for k in range(args.count):
        seed = args.seed + k
        if args.kind == "ct":
            from .data.phantom_ct import ct_phantom

            write_ct_case(args.out, f"phantom_{seed:04d}", ct_phantom(seed=seed, condition=args.condition))
        else:
            from .data.phantom_us import ultrasound_series

            write_us_series(args.out / f"series_{seed:04d}", ultrasound_series(seed=seed))
        print(f"  {k + 1}/{args.count} seed {seed}", flush=True)
    print(f"wrote {args.count} synthetic {args.kind} case(s) to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="mousesegment",
        description="Mouse organ segmentation: micro-CT (MOSnet) and fetal ultrasound (U-Nets).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the main job headless on the embedded synthetic samples")
    demo.add_argument("--out", type=Path, default=Path("mousesegment-demo"),
                      help="output folder (default: ./mousesegment-demo); must be empty or absent")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace an earlier demo output in --out (never a folder the demo did not write)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic samples (default 0)")
    demo.set_defaults(func=_cmd_demo)

    split = sub.add_parser("split", help="split an ultrasound composite into a (frames, H, W) stack")
    split.add_argument("composite", type=Path, help="multi-page TIFF, montage image (TIFF/PNG/JPEG) or folder")
    split.add_argument("--out", type=Path, required=True, help="output folder; writes OUT/frames.tif")
    split.add_argument("--grid", type=_grid, default=None, help="montage grid as RxC, e.g. 5x7 (default: detect)")
    split.set_defaults(func=_cmd_split)

    synth = sub.add_parser("synth", help="write synthetic data: CT dataset folders or ultrasound series")
    synth.add_argument("kind", choices=["ct", "ultrasound"])
    synth.add_argument("--out", type=Path, required=True, help="dataset folder (ct) or folder of series")
    synth.add_argument("--count", type=int, default=1, help="number of scans or series (default 1)")
    synth.add_argument("--seed", type=int, default=0, help="seed of the first case; the others follow")
    synth.add_argument("--condition", choices=["native", "contrast"], default="native", help="ct only")
    synth.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    synth.set_defaults(func=_cmd_synth)
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


if __name__ == "__main__":
    sys.exit(main())
