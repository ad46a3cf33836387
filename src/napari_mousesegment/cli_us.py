"""The ultrasound and ROI commands of ``mousesegment``: dataset, train unet, predict, evaluate, roi."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .cli import numbers
from .cli_batch import add_batch_options, distributed, exit_code
from .organs import US_ORGANS


def _shape(text: str) -> tuple[int, int, int]:
    values = numbers(text, int, "shape", "35,240,320")
    if len(values) == 2:
        values = (1, *values)
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"shape must be N,H,W (or H,W) positive integers, got {text!r}")
    return values  # type: ignore[return-value]


def _organs(text: str) -> list[str]:
    organs = [o.strip() for o in text.split(",") if o.strip()]
    if not organs:
        raise argparse.ArgumentTypeError("name at least one organ, e.g. heart,liver,placenta")
    return organs


def _warnings_to_stderr(caught: list) -> None:
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)


def _cmd_dataset(args: argparse.Namespace) -> int:
    from .data.us_dataset import build_us_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root = build_us_dataset(args.series, args.out, args.organs, args.test, args.val_fraction, args.seed, args.grid)
    _warnings_to_stderr(caught)
    print(f"dataset -> {root}")
    return 0


def _augment(text: str | None):
    """AugmentSettings from NAME=VALUE,...; 0 or false switches one off."""
    from dataclasses import fields

    from .training.augment import AugmentSettings

    settings = AugmentSettings()
    names = {f.name: f.type for f in fields(AugmentSettings)}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise ValueError(f"--augment takes NAME=VALUE with NAME in {', '.join(names)}; got {item!r}")
        if name in ("hflip", "vflip"):
            setattr(settings, name, value.strip().lower() in ("1", "true", "yes", "on"))
        else:
            try:
                setattr(settings, name, float(value))
            except ValueError:
                raise ValueError(f"--augment {name} needs a number, got {value!r}") from None
    return settings


def _cmd_train(args: argparse.Namespace) -> int:
    from .models.unet import DEFAULT_ARCH, UNetConfig
    from .training.augment import AugmentSettings
    from .training.us_trainer import UNetSettings, train_unet

    arch = args.arch or DEFAULT_ARCH.get(args.organ, "standard")
    config = UNetConfig(organ=args.organ, arch=arch, width=args.width, image_size=args.image_size)
    settings = UNetSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                            plateau_patience=args.plateau_patience, plateau_factor=args.plateau_factor,
                            alpha=args.alpha, early_stop=args.early_stop,
                            test_series=args.test, max_minutes=args.max_minutes, device=args.device,
                            seed=args.seed, resume=args.resume, precision_target=args.precision_target,
                            augment=_augment(args.augment) if not args.no_augment else AugmentSettings.off())
    from .training import distributed

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            summary = train_unet(args.data, args.out, config, settings)
        finally:
            distributed.finish()
    if distributed.main_process():
        _warnings_to_stderr(caught)
        print(f"model -> {summary['out']} (best validation Dice {summary['best_val_dice']:.3f}, "
              f"threshold {summary['threshold']})")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .us_jobs import parse_models, predict_ultrasound, predict_ultrasound_batch

    if distributed(args):
        return exit_code(predict_ultrasound_batch(
            args.composites, args.organs, parse_models(args.model), args.out, workers=args.workers,
            scheduler=args.scheduler, overwrite=args.overwrite, grid=args.grid, device=args.device,
            connect_timeout=args.connect_timeout))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict_ultrasound(args.composites, args.organs, parse_models(args.model), args.out, args.grid, args.device)
    _warnings_to_stderr(caught)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .us_jobs import evaluate_ultrasound, parse_models

    evaluate_ultrasound(parse_models(args.model), args.data, args.out, args.device)
    print(f"report -> {args.out}")
    return 0


def _cmd_roi_import(args: argparse.Namespace) -> int:
    from .us_jobs import import_rois

    import_rois(args.rois, args.shape, args.out)
    return 0


def _cmd_roi_export(args: argparse.Namespace) -> int:
    from .us_jobs import export_rois

    export_rois(args.labels, args.out, args.organ)
    return 0


def add_commands(sub, dataset_sub, train_sub, predict_sub, evaluate_sub, grid_type) -> None:
    """Register the ultrasound sub-commands on the main parser's sub-parsers."""
    dus = dataset_sub.add_parser("ultrasound", help="annotated series folders (lab layout) into a dataset folder")
    dus.add_argument("series", nargs="+", type=Path, help="series folders, or folders of series folders")
    dus.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    dus.add_argument("--organs", type=_organs, default=list(US_ORGANS), help="organs or keywords (default: all three)")
    dus.add_argument("--test", type=int, default=5, help="whole series held out for testing (default 5)")
    dus.add_argument("--val-fraction", type=float, default=0.2, help="of the other series, for validation (0.2)")
    dus.add_argument("--seed", type=int, default=0, help="seed of the series split")
    dus.add_argument("--grid", type=grid_type, default=None, help="montage grid RxC when it cannot be detected")
    dus.set_defaults(func=_cmd_dataset)

    unet = train_sub.add_parser("unet", help="an ultrasound organ U-Net")
    unet.add_argument("--organ", required=True, help="heart, liver, placenta or any ROI keyword (e.g. head)")
    unet.add_argument("--data", type=Path, action="append", required=True,
                      help="series folders in the lab layout, or a dataset folder (repeatable)")
    unet.add_argument("--out", type=Path, required=True, help="model folder to write")
    unet.add_argument("--arch", choices=["standard", "deep", "residual"], default=None,
                      help="default: standard for hearts, deep for livers, residual for placentas")
    unet.add_argument("--width", type=int, default=16, help="channels of the first level (default 16)")
    unet.add_argument("--image-size", type=int, default=128, help="training crop size in pixels (default 128)")
    unet.add_argument("--epochs", type=int, default=100, help="before fine-tuning (early stopping may end sooner)")
    unet.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs (default 10)")
    unet.add_argument("--finetune-lr", type=float, default=1e-5, help="learning rate of fine-tuning (1e-5)")
    unet.add_argument("--early-stop", type=int, default=10, help="epochs without a better validation Dice (10)")
    unet.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this long")
    unet.add_argument("--batch-size", type=int, default=8)
    unet.add_argument("--lr", type=float, default=1e-4)
    unet.add_argument("--plateau-patience", type=int, default=5,
                      help="epochs without a lower validation loss before the lr drops (5)")
    unet.add_argument("--plateau-factor", type=float, default=0.1, help="the lr drop on a plateau (0.1)")
    unet.add_argument("--alpha", type=float, default=0.5, help="weight of Dice in alpha*Dice + (1-alpha)*BCE (0.5)")
    unet.add_argument("--test", type=int, default=5, help="lab-layout data: whole series held out for testing (5)")
    unet.add_argument("--augment", default=None, metavar="NAME=VALUE,...",
                      help="augmentation ranges, 0 switches one off: rotation (degrees, 20), scale (0.15), "
                           "translation (0.1), hflip (true), vflip (false), noise (0.03), brightness (0.1), "
                           "contrast (0.2), elastic (0.02), crop (0.15)")
    unet.add_argument("--no-augment", action="store_true", help="switch every augmentation off")
    unet.add_argument("--precision-target", type=float, default=None,
                      help="choose the threshold as the lowest reaching this validation precision "
                           "(default: the largest F0.5)")
    unet.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    unet.add_argument("--seed", type=int, default=0)
    unet.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    unet.set_defaults(func=_cmd_train)

    pus = predict_sub.add_parser("ultrasound", help="composites to instance labels and RoiSets with the U-Nets")
    pus.add_argument("composites", type=Path, nargs="+", help="multi-page TIFF, montage image or folder of frames")
    pus.add_argument("--organs", type=_organs, default=list(US_ORGANS), help="comma-separated (default: all three)")
    pus.add_argument("--model", action="append", default=[], metavar="[ORGAN=]MODEL",
                     help="one per organ: a model name or folder, optionally prefixed by its organ")
    pus.add_argument("--out", type=Path, required=True)
    pus.add_argument("--grid", type=grid_type, default=None, help="montage grid RxC (default: detect)")
    pus.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    add_batch_options(pus)
    pus.set_defaults(func=_cmd_predict)

    eus = evaluate_sub.add_parser("ultrasound", help="U-Nets on held-out series: pixel and instance scores")
    eus.add_argument("--model", action="append", required=True, metavar="[ORGAN=]MODEL",
                     help="one per organ: a model name or folder, optionally prefixed by its organ")
    eus.add_argument("--data", type=Path, action="append", required=True,
                     help="a dataset folder (its test series) or lab-layout series folders (all of them)")
    eus.add_argument("--out", type=Path, required=True, help="report folder")
    eus.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    eus.set_defaults(func=_cmd_evaluate)

    roi = sub.add_parser("roi", help="ImageJ/Fiji ROIs to instance labels and back")
    roi_sub = roi.add_subparsers(dest="action", required=True, metavar="ACTION")
    rin = roi_sub.add_parser("import", help="a RoiSet zip or .roi file to an instance-label TIFF")
    rin.add_argument("rois", type=Path)
    rin.add_argument("--shape", type=_shape, required=True, help="N,H,W of the stack (or H,W)")
    rin.add_argument("--out", type=Path, required=True, help="labels TIFF to write")
    rin.set_defaults(func=_cmd_roi_import)
    rout = roi_sub.add_parser("export", help="an instance-label TIFF (2D or N,H,W) to a RoiSet zip")
    rout.add_argument("labels", type=Path)
    rout.add_argument("--out", type=Path, required=True, help="RoiSet zip to write (replaced, never appended)")
    rout.add_argument("--organ", default="organ", help="name prefix of the ROIs (default: organ)")
    rout.set_defaults(func=_cmd_roi_export)
