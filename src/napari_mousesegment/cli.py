"""The ``mousesegment`` command line."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from .cli_batch import add_batch_options, distributed, exit_code, positive_int


def _grid(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must look like 5x7, got {text!r}") from None
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"grid must be at least 1x1, got {text!r}")
    return rows, cols


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import SHIPPED_CT, run_demo
    from .us_jobs import parse_models

    us_models = parse_models(args.us_model) if args.us_model else ({} if args.no_models else None)
    ct_model = args.ct_model or (None if args.no_models else SHIPPED_CT)
    run_demo(args.out, overwrite=args.overwrite, seed=args.seed, ct_model=ct_model, us_models=us_models)
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from .io.composites import read_composite, write_stack

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        composite = read_composite(args.composite, grid=args.grid)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "frames.tif"
    write_stack(target, composite.frames)
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

            drop = tuple(o for o in (args.unannotated or "").split(",") if o)
            write_ct_case(args.out, f"phantom_{seed:04d}", ct_phantom(seed=seed, condition=args.condition),
                          unannotated=drop)
        else:
            from .data.phantom_us import ultrasound_series

            write_us_series(args.out / f"series_{seed:04d}", ultrasound_series(seed=seed))
        print(f"  {k + 1}/{args.count} seed {seed}", flush=True)
    print(f"wrote {args.count} synthetic {args.kind} case(s) to {args.out}")
    return 0


def numbers(text: str, cast: type, what: str, example: str) -> tuple:
    """Comma-separated numbers of an option, or an argparse error that shows the expected form."""
    try:
        return tuple(cast(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must look like {example}, got {text!r}") from None


def _spacing(text: str) -> tuple[float, float, float]:
    values = numbers(text, float, "spacing", "0.28,0.28,0.28")
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"spacing needs 1 or 3 positive numbers in mm, got {text!r}")
    return values  # type: ignore[return-value]


def _cmd_train(args: argparse.Namespace) -> int:
    from .models.mosnet import MOSnetConfig
    from .organs import CT_ORGANS
    from .training.ct_data import read_ct_dataset
    from .training.trainer import TrainSettings, train_mosnet

    datasets = [read_ct_dataset(d) for d in args.data]
    organs = [o for o in CT_ORGANS if any(o in d.organs for d in datasets)]
    organs += sorted({o for d in datasets for o in d.organs} - set(organs))
    conditions = list(dict.fromkeys(["native", "contrast", *(d.condition for d in datasets)]))
    config = MOSnetConfig(organs=organs, conditions=conditions, variant=args.variant, width=args.width,
                          image_size=args.image_size, spacing_mm=args.voxel_mm)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             max_minutes=args.max_minutes, val_fraction=args.val_fraction, device=args.device, seed=args.seed,
                             slice_stride=args.slice_stride, resume=args.resume)
    from .training import distributed

    try:
        result = train_mosnet(args.data, args.out, config, settings)
    finally:
        distributed.finish()
    if distributed.main_process():
        print(f"best validation Dice {result['best_val_dice']:.3f} after {result['epochs_run']} epoch(s); "
              f"model in {result['out']}")
    return 0


def _cmd_dataset_ct(args: argparse.Namespace) -> int:
    from .data.datasets import convert_ct_dataset

    root = convert_ct_dataset(args.sources, args.out, args.condition, args.spacing)
    print(f"dataset written to {root}")
    return 0


def _cmd_predict_ct(args: argparse.Namespace) -> int:
    from .ct_jobs import predict_ct, predict_ct_batch

    if distributed(args):
        return exit_code(predict_ct_batch(args.scans, args.model, args.condition, args.out, workers=args.workers,
                                          scheduler=args.scheduler, overwrite=args.overwrite, spacing=args.spacing,
                                          device=args.device, cleanup=args.cleanup, batch_size=args.batch_size,
                                          connect_timeout=args.connect_timeout))
    predict_ct(args.scans, args.model, args.condition, args.out, args.spacing, args.device, args.cleanup,
               batch_size=args.batch_size)
    return 0


def _cmd_evaluate_ct(args: argparse.Namespace) -> int:
    from .ct_jobs import evaluate_ct

    summary = evaluate_ct(args.model, args.data, args.out, args.device, borrow=not args.no_borrow)
    for organ, metrics in summary.items():
        print(f"{organ:10s} DSC {metrics['dsc'][0]:.3f} ({metrics['dsc'][1]:.3f})  "
              f"HD95 {metrics['hd95_mm'][0]:.2f} mm")
    print(f"report in {args.out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .ct_jobs import compare_reports

    reports = {}
    for item in args.reports:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"report must be NAME=DIR, got {item!r}")
        reports[name] = path
    table = compare_reports(reports, args.reference or next(iter(reports)), args.metric)
    if args.out:
        args.out.write_text(table)
    print(table, end="")
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
    split.add_argument("--grid", type=_grid, default=None, help="montage grid as RxC, e.g. 5x7 (default: detect)")
    split.set_defaults(func=_cmd_split)

    synth = sub.add_parser("synth", help="write synthetic data: CT dataset folders or ultrasound series")
    synth.add_argument("kind", choices=["ct", "ultrasound"])
    synth.add_argument("--out", type=Path, required=True, help="dataset folder (ct) or folder of series")
    synth.add_argument("--count", type=int, default=1, help="number of scans or series (default 1)")
    synth.add_argument("--seed", type=int, default=0, help="seed of the first case; the others follow")
    synth.add_argument("--condition", choices=["native", "contrast"], default="native", help="ct only")
    synth.add_argument("--unannotated", default="", metavar="ORGAN,...",
                       help="ct only: organs to leave out of the labels and dataset.json (partial annotation)")
    synth.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    synth.set_defaults(func=_cmd_synth)

    dataset = sub.add_parser("dataset", help="convert annotated scans into a dataset folder")
    dataset_sub = dataset.add_subparsers(dest="modality", required=True, metavar="MODALITY")
    dct = dataset_sub.add_parser("ct", help="micro-CT scans with organ labels")
    dct.add_argument("sources", nargs="+", type=Path,
                     help="TIFF, NIfTI, Analyze, GFF files or Rosenhain scan folders (with labels)")
    dct.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    dct.add_argument("--condition", required=True, help="native, contrast or a new condition name")
    dct.add_argument("--spacing", type=_spacing, default=None, help="voxel size Z,Y,X in mm for files without one")
    dct.set_defaults(func=_cmd_dataset_ct)

    train = sub.add_parser("train", help="train a model")
    train_sub = train.add_subparsers(dest="model_kind", required=True, metavar="MODEL")
    mosnet = train_sub.add_parser("mosnet", help="MOSnet, jointly on micro-CT dataset folders")
    mosnet.add_argument("--data", type=Path, action="append", required=True,
                        help="dataset folder (repeat for joint training over several datasets)")
    mosnet.add_argument("--out", type=Path, required=True, help="model folder to write")
    mosnet.add_argument("--variant", choices=["full", "bm", "bm_cm", "bm_rb"], default="full")
    mosnet.add_argument("--width", type=int, default=32, help="channels of the first level (default 32: ~12.7M parameters)")
    mosnet.add_argument("--image-size", type=int, default=128, help="in-plane slice size (default 128)")
    mosnet.add_argument("--voxel-mm", type=float, default=0.28,
                        help="isotropic voxel size scans are resampled to (default 0.28 mm, the Rosenhain scans')")
    mosnet.add_argument("--epochs", type=int, default=100)
    mosnet.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this long, keeping the best weights")
    mosnet.add_argument("--batch-size", type=int, default=16)
    mosnet.add_argument("--lr", type=float, default=1e-3)
    mosnet.add_argument("--val-fraction", type=float, default=0.1, help="scans per dataset held out for validation (default 0.1)")
    mosnet.add_argument("--slice-stride", type=int, default=1, help="use every n-th slice (default 1: all)")
    mosnet.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    mosnet.add_argument("--seed", type=int, default=0)
    mosnet.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    mosnet.set_defaults(func=_cmd_train)

    predict = sub.add_parser("predict", help="segment scans with a trained model")
    predict_sub = predict.add_subparsers(dest="modality", required=True, metavar="MODALITY")
    pct = predict_sub.add_parser("ct", help="micro-CT scans with MOSnet")
    pct.add_argument("scans", type=Path, nargs="+",
                     help="scans in HU: TIFF, NIfTI, Analyze, GFF or Rosenhain scan folders")
    pct.add_argument("--model", required=True, help="model name (see `mousesegment models list`) or folder")
    pct.add_argument("--condition", required=True, help="native or contrast (or a condition the model knows)")
    pct.add_argument("--out", type=Path, required=True)
    pct.add_argument("--spacing", type=_spacing, default=None, help="voxel size Z,Y,X in mm when the file lacks it")
    pct.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    pct.add_argument("--cleanup", action="store_true",
                     help="keep the largest piece of single-piece organs, drop fragments under 5 mm3")
    pct.add_argument("--batch-size", type=positive_int, default=None,
                     help="slices per network pass (default 4 on a CPU, 32 on a GPU; ~5 MB per slice on a CPU)")
    add_batch_options(pct)
    pct.set_defaults(func=_cmd_predict_ct)

    evaluate = sub.add_parser("evaluate", help="score a trained model against a dataset's truth")
    evaluate_sub = evaluate.add_subparsers(dest="modality", required=True, metavar="MODALITY")
    ect = evaluate_sub.add_parser("ct", help="MOSnet on a micro-CT dataset folder")
    ect.add_argument("--model", required=True, help="model name or folder")
    ect.add_argument("--data", type=Path, required=True, help="dataset folder")
    ect.add_argument("--out", type=Path, required=True, help="report folder")
    ect.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ect.add_argument("--no-borrow", action="store_true",
                     help="read every organ under the dataset's condition, also organs that no training dataset "
                          "of that condition annotated (by default those are read under a condition that did)")
    ect.set_defaults(func=_cmd_evaluate_ct)
    cmp = evaluate_sub.add_parser("compare", help="table of several evaluation reports with paired Wilcoxon tests")
    cmp.add_argument("reports", nargs="+", metavar="NAME=REPORT_DIR", help="reports made by `evaluate ct`")
    cmp.add_argument("--reference", default=None, help="model the others are tested against (default: the first)")
    cmp.add_argument("--metric", choices=["dsc", "jsc", "hd95_mm"], default="dsc")
    cmp.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    cmp.set_defaults(func=_cmd_compare)

    from .cli_us import add_commands

    add_commands(sub, dataset_sub, train_sub, predict_sub, evaluate_sub, _grid)
    from .cli_models import add_commands as add_model_commands

    models_sub = add_model_commands(sub)
    from .cli_active import add_commands as add_active_commands

    add_active_commands(sub, models_sub)
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
