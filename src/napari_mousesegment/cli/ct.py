"""``mousesegment train mosnet``, ``predict ct``, ``evaluate ct`` and ``evaluate compare``: micro-CT."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.schema import PLANE_CHOICES
from . import options

#: ``train mosnet``'s input window and soft-tissue window when no --window is given (level, width in HU)
DEFAULT_WINDOW, DEFAULT_EXTRA_WINDOW = (0.0, 2000.0), (40.0, 400.0)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..data.ct_dataset import read_ct_dataset
    from ..models.mosnet import MOSnetConfig
    from ..models.preprocess import pick_device
    from ..organs import CT_ORGANS
    from ..training.augment import AugmentSettings
    from ..training.mosnet import TrainSettings, train_mosnet

    datasets = [read_ct_dataset(d) for d in args.data]
    organs = [o for o in CT_ORGANS if any(o in d.organs for d in datasets)]
    organs += sorted({o for d in datasets for o in d.organs} - set(organs))
    conditions = list(dict.fromkeys(["native", "contrast", *(d.condition for d in datasets)]))
    # The measured defaults (docs/results-mosnet.md): two HU windows unless --window is given, and
    # small batches on a CPU, where a budget in minutes buys four times the steps.
    window, extra = args.window or DEFAULT_WINDOW, args.extra_window
    if args.window is None and extra is None:
        extra = [DEFAULT_EXTRA_WINDOW]
    extra = extra or []
    # A CPU also trains without the reconstruction decoder: a third of each step's arithmetic, which
    # in a budget of minutes buys more steps, measured better on anatomy held out of training.
    gpu = pick_device(args.device).type == "cuda"
    batch_size = args.batch_size or (16 if gpu else 4)
    variant = args.variant or ("full" if gpu else "bm_cm")
    config = MOSnetConfig(organs=organs, conditions=conditions, variant=variant, width=args.width,
                          image_size=args.image_size, spacing_mm=args.voxel_mm,
                          context=args.context_slices, context_step=args.context_step, plane=args.plane,
                          window_level=window[0], window_width=window[1], extra_windows=[list(w) for w in extra],
                          position=args.slice_position)
    settings = TrainSettings(epochs=args.epochs, batch_size=batch_size, lr=args.lr,
                             max_minutes=args.max_minutes, val_fraction=args.val_fraction, device=args.device,
                             seed=args.seed, slice_stride=args.slice_stride, resume=args.resume,
                             sampling=args.sampling, dice_weight=args.dice_weight,
                             exclusion_weight=args.exclusion_weight, appearance_swap=args.appearance_swap,
                             threshold_tolerance=args.threshold_tolerance,
                             augment=options.augment_settings(args, AugmentSettings.for_ct(),
                                                              unused=() if args.slice_position else ("position",)))
    result = options.run_training(train_mosnet, args.data, args.out, config, settings)
    if result is not None:
        print(f"best validation Dice {result['best_val_dice']:.3f} after {result['epochs_run']} epoch(s); "
              f"model in {result['out']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    """Serial or on Dask, one rule: a bad scan among several is reported and the others go on (exit 1);
    then the organ volumes of every scan, flagged where implausible, on stdout and in OUT/report.md."""
    from ..jobs.batch import report
    from ..jobs.ct import (
        format_volume_table,
        predict_ct_batch,
        predict_ct_serial,
        volume_table,
        write_volume_report,
    )
    from ..store.registry import SHIPPED_CT

    model = args.model
    if model is None:
        model = SHIPPED_CT
        print(f"model: the built-in {SHIPPED_CT} (no --model given; trained on synthetic phantoms: for a first "
              "look, train on real scans before measuring real mice)")
    if options.distributed(args):
        outcomes = predict_ct_batch(
            args.scans, model, args.condition, args.out, workers=args.workers, scheduler=args.scheduler,
            overwrite=args.overwrite, spacing=args.spacing, device=args.device, cleanup=args.cleanup,
            batch_size=args.batch_size, connect_timeout=args.connect_timeout, hu=args.hu, series=args.series,
            force=args.force)
    else:
        with options.warnings_to_stderr():
            outcomes = predict_ct_serial(args.scans, model, args.condition, args.out, args.spacing, args.device,
                                         args.cleanup, batch_size=args.batch_size, hu=args.hu, series=args.series,
                                         force=args.force, keep_going=len(args.scans) > 1)
        if len(args.scans) > 1:
            report(outcomes)
    rows = volume_table(outcomes, args.out)
    if rows:
        flagged = sum(r["flag"] not in ("ok", "") for r in rows)
        print(f"organ volumes ({flagged} flagged: outside the plausible range for an adult mouse, or absent):")
        print(format_volume_table(rows), end="")
    written = write_volume_report(args.out, rows, outcomes)
    print(f"volumes and flags in {written}")
    return options.exit_code(outcomes)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..jobs.ct import evaluate_ct

    summary = evaluate_ct(args.model, args.data, args.out, args.device, borrow=not args.no_borrow)
    for organ, metrics in summary.items():
        print(f"{organ:10s} DSC {metrics['dsc'][0]:.3f} ({metrics['dsc'][1]:.3f})  "
              f"HD95 {metrics['hd95_mm'][0]:.2f} mm")
    print(f"report in {args.out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..jobs.reports import compare_reports

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


def add_commands(train_sub, predict_sub, evaluate_sub) -> None:
    """``train mosnet``, ``predict ct``, ``evaluate ct`` and ``evaluate compare``."""
    mosnet = train_sub.add_parser("mosnet", help="MOSnet, jointly on micro-CT dataset folders")
    mosnet.add_argument("--data", type=Path, action="append", required=True,
                        help="dataset folder (repeat for joint training over several datasets)")
    mosnet.add_argument("--out", type=Path, required=True, help="model folder to write")
    mosnet.add_argument("--variant", choices=["full", "bm", "bm_cm", "bm_rb"], default=None,
                        help="the paper's ablation variants: full (control module and reconstruction decoder), "
                             "bm_cm (control module alone), bm_rb (reconstruction decoder alone), bm (neither); "
                             "default full on a GPU, bm_cm on a CPU (measured: more steps in a budget of minutes)")
    mosnet.add_argument("--width", type=options.count(2, 512), default=32,
                        help="channels of the first level (default 32: ~12.7M parameters)")
    mosnet.add_argument("--image-size", type=options.count(8, 4096), default=128, help="in-plane slice size (default 128)")
    mosnet.add_argument("--voxel-mm", type=options.number(0.001, 10.0), default=0.28,
                        help="isotropic voxel size scans are resampled to (default 0.28 mm, the Rosenhain scans')")
    mosnet.add_argument("--plane", choices=PLANE_CHOICES, default="axial", metavar="PLANE",
                        help="slicing plane: axial (the paper's, the default), coronal or sagittal, or several "
                             "joined by '+' (axial+coronal): one network learns each plane's slices and "
                             "prediction averages over them. Active-learning rounds need axial among them")
    mosnet.add_argument("--window", type=options.window, default=None, metavar="LEVEL,WIDTH",
                        help="HU window the network reads: level ± width/2 maps to 0..1 (default 0,2000 with "
                             "--extra-window 40,400: lungs, fat and bone on one channel, soft organs a few HU apart "
                             "on the other; given alone, the network reads this one window; 400,1000 is the "
                             "paper's: -100 to 900 HU, where lungs, fat and air all read 0)")
    mosnet.add_argument("--extra-window", type=options.extra_window, action="append", default=None,
                        metavar="LEVEL,WIDTH[,SIGMA]",
                        help="a further HU window the network cuts from --window, as more input channels "
                             "(repeat for several, up to 4); SIGMA cuts it from the slice smoothed by a "
                             "Gaussian of that many model pixels, which lifts soft organs a few HU apart "
                             "out of the scanner noise")
    mosnet.add_argument("--context-slices", type=options.count(0, 8), default=0,
                        help="2.5D input: neighbouring slices on each side, every --context-step voxels, "
                             "given to the network as channels (default 0: 2D slices)")
    mosnet.add_argument("--context-step", type=options.count(1, 16), default=2,
                        help="model voxels between those neighbours (default 2: 0.56 mm at 0.28 mm voxels)")
    mosnet.add_argument("--slice-position", action="store_true",
                        help="give the network each axial slice's place along the scan (0 at its first slice, 1 "
                             "at its last) as one more input channel, so it knows where along the body a slice "
                             "lies; for whole-body scans, head first, as the training scans (default off)")
    mosnet.add_argument("--epochs", type=options.count(0), default=100)
    mosnet.add_argument("--max-minutes", type=options.MINUTES, default=None,
                        help="stop cleanly after this long, keeping the best weights")
    mosnet.add_argument("--batch-size", type=options.positive_int, default=None,
                        help="slices per step (default 16 on a GPU, the paper's; 4 on a CPU, where a budget in "
                             "minutes buys four times the steps)")
    mosnet.add_argument("--lr", type=options.LEARNING_RATE, default=1e-3)
    mosnet.add_argument("--val-fraction", type=options.number(0.0, 0.9), default=0.1,
                        help="scans per dataset held out for validation (default 0.1)")
    mosnet.add_argument("--slice-stride", type=options.positive_int, default=1, help="use every n-th slice (default 1: all)")
    mosnet.add_argument("--sampling", choices=["uniform", "organs"], default="organs",
                        help="organs (the default): half of each epoch's slices drawn organ by organ, so small "
                             "organs are seen as often as big ones; uniform: every slice once per epoch (the "
                             "paper's)")
    mosnet.add_argument("--dice-weight", type=options.number(0.0, 100.0), default=1.0,
                        help="add this weight times a soft Dice loss to the paper's loss (default 1: measured on "
                             "anatomy held out of training; 0: the paper's loss alone)")
    mosnet.add_argument("--exclusion-weight", type=options.number(0.0, 100.0), default=1.0,
                        help="add this weight times the exclusion loss: an organ a dataset does not label is "
                             "taught absent on the organs it does label (default 1; 0: the paper's loss)")
    mosnet.add_argument("--appearance-swap", type=options.number(0.0, 1.0), default=0.0, metavar="P",
                        help="give this share of the slices of a condition that lends organs to another (contrast "
                             "lends native scans the stomach) the other's per-organ intensities, measured on the "
                             "training labels, so the lent organs are learned on the look they are read on "
                             "(default 0: never)")
    mosnet.add_argument("--threshold-tolerance", type=options.number(0.0, 0.1), default=0.002, metavar="D",
                        help="after training, each organ's label threshold is the lowest whose validation vote Dice "
                             "is within D of its best (default 0.002: robust to anatomy the validation scans "
                             "lack; 0: the best, as before 2026-12-03)")
    options.add_augment(mosnet, "rotation (degrees, 10), scale (0.15), translation (0.05), hflip (false), "
                                "vflip (false), noise (0), brightness (0.01), contrast (0.05), elastic (0.02), "
                                "crop (0), position (0.05: the --slice-position channel's shift)")
    options.add_device(mosnet)
    mosnet.add_argument("--seed", type=int, default=0)
    mosnet.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    mosnet.set_defaults(func=_cmd_train)

    pct = predict_sub.add_parser("ct", help="micro-CT scans with MOSnet")
    pct.add_argument("scans", type=Path, nargs="+",
                     help="scans: TIFF, OME-TIFF, NIfTI, Analyze, GFF or DICOM files; DICOM, SkyScan, OME-Zarr "
                          "or Rosenhain folders (see docs/scanner-files.md)")
    pct.add_argument("--model", default=None,
                     help="model name (see `mousesegment models list`) or folder (default: the built-in "
                          "mosnet-synthetic, trained on synthetic phantoms)")
    pct.add_argument("--condition", default="auto",
                     help="native, contrast (or a condition the model knows), or auto (the default): each scan's "
                          "own HU decide, and the choice is printed")
    pct.add_argument("--out", type=Path, required=True)
    options.add_scan_options(pct)
    pct.add_argument("--force", action="store_true",
                     help="predict scans whose values are not plausible HU (no air below -500 HU, one value "
                          "everywhere, an 8-bit, unsigned or boolean type, an RGB image): a warning, not an error")
    options.add_device(pct)
    pct.add_argument("--cleanup", action="store_true",
                     help="keep the largest piece of single-piece organs, drop fragments under 5 mm3")
    pct.add_argument("--batch-size", type=options.positive_int, default=None,
                     help="slices per network pass (default 4 on a CPU, 32 on a GPU; ~5 MB per slice on a CPU)")
    options.add_batch_options(pct)
    pct.set_defaults(func=_cmd_predict)

    ect = evaluate_sub.add_parser("ct", help="MOSnet on a micro-CT dataset folder")
    ect.add_argument("--model", required=True, help="model name or folder")
    ect.add_argument("--data", type=Path, required=True, help="dataset folder")
    ect.add_argument("--out", type=Path, required=True, help="report folder")
    options.add_device(ect)
    ect.add_argument("--no-borrow", action="store_true",
                     help="read every organ under the dataset's condition, also organs that no training dataset "
                          "of that condition annotated (by default those are read under a condition that did)")
    ect.set_defaults(func=_cmd_evaluate)
    cmp = evaluate_sub.add_parser("compare", help="table of several evaluation reports with paired Wilcoxon tests")
    cmp.add_argument("reports", nargs="+", metavar="NAME=REPORT_DIR", help="reports made by `evaluate ct`")
    cmp.add_argument("--reference", default=None, help="model the others are tested against (default: the first)")
    cmp.add_argument("--metric", choices=["dsc", "jsc", "hd95_mm"], default="dsc")
    cmp.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    cmp.set_defaults(func=_cmd_compare)
