"""``mousesegment demo``, ``split``, ``synth`` and ``dataset ct|ultrasound``: data in and out."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..organs import US_ORGANS
from . import options


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..jobs.demo import run_demo
    from ..store.registry import SHIPPED_CT

    us_models = options.parse_models(args.us_model) if args.us_model else ({} if args.no_models else None)
    ct_model = args.ct_model or (None if args.no_models else SHIPPED_CT)
    run_demo(args.out, overwrite=args.overwrite, seed=args.seed, ct_model=ct_model, us_models=us_models)
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from ..io.composites import read_composite
    from ..io.tiff import write_stack

    with options.warnings_to_stderr():
        composite = read_composite(args.composite, grid=args.grid)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "frames.tif"
    write_stack(target, composite.frames)
    grid = f" (grid {composite.grid[0]}x{composite.grid[1]})" if composite.grid else ""
    print(f"{len(composite.frames)} frames{grid} -> {target}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{args.out} is not empty; choose another --out or pass --overwrite")
    if args.kind != "ct" and (args.atlas or args.hold_out or args.shape or args.variation is not None
                              or args.mix_organs is not None or args.voids is not None):
        raise ValueError("--atlas, --hold-out, --shape, --variation, --mix-organs and --voids are for `synth ct` "
                         "only")
    if args.hold_out and not args.atlas:
        raise ValueError("--hold-out names a map among --atlas; give --atlas too")
    if args.variation is not None and not args.atlas:
        raise ValueError("--variation warps the organs of the --atlas maps; give --atlas too")
    if args.voids is not None and not args.atlas:
        raise ValueError("--voids fills the room the --atlas maps' organs leave; give --atlas too")
    pool = [None]
    if args.kind == "ct" and args.atlas:
        from ..data.atlas import load_atlases

        pool = load_atlases(args.atlas, args.hold_out)
    maps = [a for a in pool if a is not None]
    if args.mix_organs is not None and len(maps) < 2:
        raise ValueError("--mix-organs swaps organs between the --atlas label maps; give at least two maps "
                         f"(after --hold-out), got {len(maps)}")
    for k in range(args.count):
        seed = args.seed + k
        if args.kind == "ct":
            from ..data.ct_dataset import write_ct_case
            from ..data.phantom_ct import DEFAULT_SHAPE, ct_phantom

            drop = tuple(o for o in (args.unannotated or "").split(",") if o)
            scan = ct_phantom(seed=seed, condition=args.condition, shape=args.shape or DEFAULT_SHAPE,
                              atlas=pool[k % len(pool)],  # round robin: each anatomy as often
                              variation=1.0 if args.variation is None else args.variation,
                              donors=maps, mix=args.mix_organs or 0.0, voids=args.voids or "viscera")
            write_ct_case(args.out, f"phantom_{seed:04d}", scan, unannotated=drop)
            borrowed = "".join(f", {o} of {m}" for o, m in scan.borrowed.items())
            print(f"  {k + 1}/{args.count} seed {seed} ({scan.anatomy}{borrowed})", flush=True)
        else:
            from ..data.phantom_us import ultrasound_series, write_us_series

            write_us_series(args.out / f"series_{seed:04d}", ultrasound_series(seed=seed))
            print(f"  {k + 1}/{args.count} seed {seed}", flush=True)
    print(f"wrote {args.count} synthetic {args.kind} case(s) to {args.out}")
    return 0


def _cmd_dataset_ct(args: argparse.Namespace) -> int:
    from ..data.ct_dataset import convert_ct_dataset

    if args.labels and len(args.labels) != len(args.sources):
        raise ValueError(f"give one --labels per scan: {len(args.sources)} scan(s), {len(args.labels)} --labels")
    root = convert_ct_dataset(args.sources, args.out, args.condition, args.spacing, labels=args.labels or None,
                              hu=args.hu, series=args.series)
    print(f"dataset written to {root}")
    return 0


def _cmd_dataset_us(args: argparse.Namespace) -> int:
    from ..data.us_dataset import build_us_dataset

    with options.warnings_to_stderr():
        root = build_us_dataset(args.series, args.out, args.organs, args.test, args.val_fraction, args.seed, args.grid)
    print(f"dataset -> {root}")
    return 0


def add_commands(sub) -> None:
    """``demo``, ``split`` and ``synth``."""
    demo = sub.add_parser("demo", help="run the main job headless on the embedded synthetic samples")
    demo.add_argument("--out", type=Path, default=Path("mousesegment-demo"),
                      help="output folder (default: ./mousesegment-demo); must be empty or absent")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace an earlier demo output in --out (never a folder the demo did not write)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic samples (default 0)")
    demo.add_argument("--ct-model", default=None,
                      help="MOSnet name or folder that segments the micro-CT samples (default: mosnet-synthetic)")
    demo.add_argument("--us-model", action="append", default=[], metavar="[ORGAN=]MODEL",
                      help="U-Net name or folder (repeat per organ); replaces the built-in "
                           "unet-{heart,liver,placenta}-synthetic")
    demo.add_argument("--no-models", action="store_true",
                      help="do not use the built-in models: segment only with the models given, if any")
    demo.set_defaults(func=_cmd_demo)

    split = sub.add_parser("split", help="split an ultrasound composite into a (frames, H, W) stack")
    split.add_argument("composite", type=Path, help="multi-page TIFF, montage image (TIFF/PNG/JPEG) or folder")
    split.add_argument("--out", type=Path, required=True, help="output folder; writes OUT/frames.tif")
    split.add_argument("--grid", type=options.grid, default=None,
                       help="montage grid as RxC, e.g. 5x7 (default: detect)")
    split.set_defaults(func=_cmd_split)

    synth = sub.add_parser("synth", help="write synthetic data: CT dataset folders or ultrasound series")
    synth.add_argument("kind", choices=["ct", "ultrasound"])
    synth.add_argument("--out", type=Path, required=True, help="dataset folder (ct) or folder of series")
    synth.add_argument("--count", type=int, default=1, help="number of scans or series (default 1)")
    synth.add_argument("--seed", type=int, default=0, help="seed of the first case; the others follow")
    synth.add_argument("--condition", choices=["native", "contrast"], default="native", help="ct only")
    synth.add_argument("--unannotated", default="", metavar="ORGAN,...",
                       help="ct only: organs to leave out of the labels and dataset.json (partial annotation)")
    synth.add_argument("--atlas", action="append", default=[], metavar="PATH",
                       help="ct only: draw organs from real label maps (SEGFF, NIfTI/TIFF with organ names beside, "
                            "a folder of them, or `ellipsoids` for the built-in model); repeat to pool several, "
                            "used in turn")
    synth.add_argument("--hold-out", action="append", default=[], metavar="NAME",
                       help="ct only: leave the map NAME (file name without extensions) out of --atlas")
    synth.add_argument("--shape", type=options.shape, default=None, metavar="Z,Y,X",
                       help="ct only: phantom grid in voxels (default 200,110,150)")
    synth.add_argument("--variation", type=options.number(0.0, 3.0), default=None, metavar="X",
                       help="ct only: how far the --atlas maps' organs are warped, 0 to 3 (default 1; 2 doubles "
                            "the elastic field, organ turns and shifts, and squares the volume and stretch "
                            "ranges: training data with shapes wider than any one map's)")
    synth.add_argument("--mix-organs", type=options.number(0.0, 1.0), default=None, metavar="P",
                       help="ct only: the chance (0 to 1) that each organ of a --atlas map's phantom takes its shape "
                            "from another map of the pool that has it, keeping the map's layout and volumes "
                            "(default 0: each phantom's organs come from one map)")
    synth.add_argument("--voids", choices=["viscera", "muscle"], default=None,
                       help="ct only: what fills the room a --atlas map's organs leave where the ellipsoid organs "
                            "were: viscera, a sponge of fat and soft tissue (the default), or muscle, as phantoms "
                            "drawn before 2026-12-05")
    synth.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    synth.set_defaults(func=_cmd_synth)


def add_dataset_commands(dataset_sub) -> None:
    """``dataset ct`` and ``dataset ultrasound``."""
    dct = dataset_sub.add_parser("ct", help="micro-CT scans with organ labels")
    dct.add_argument("sources", nargs="+", type=Path,
                     help="scans with labels (GFF/SEGFF files, Rosenhain folders), or any scan `predict ct` reads "
                          "with its --labels")
    dct.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    dct.add_argument("--condition", required=True, help="native, contrast or a new condition name")
    dct.add_argument("--labels", type=Path, action="append", default=[],
                     help="the organ labels of each scan, in order (TIFF or NIfTI on the scan's grid, organ names "
                          "from a labels.json or .ctbl beside it, as `predict ct` writes them)")
    options.add_scan_options(dct)
    dct.set_defaults(func=_cmd_dataset_ct)

    dus = dataset_sub.add_parser("ultrasound", help="annotated series folders (lab layout) into a dataset folder")
    dus.add_argument("series", nargs="+", type=Path, help="series folders, or folders of series folders")
    dus.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    dus.add_argument("--organs", type=options.organs, default=list(US_ORGANS),
                     help="organs or keywords (default: all three)")
    dus.add_argument("--test", type=options.count(0), default=5, help="whole series held out for testing (default 5)")
    dus.add_argument("--val-fraction", type=options.number(0.0, 0.9), default=0.2, help="of the other series, for validation (0.2)")
    dus.add_argument("--seed", type=int, default=0, help="seed of the series split")
    dus.add_argument("--grid", type=options.grid, default=None, help="montage grid RxC when it cannot be detected")
    dus.set_defaults(func=_cmd_dataset_us)
