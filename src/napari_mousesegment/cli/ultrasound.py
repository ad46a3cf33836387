"""``mousesegment train unet``, ``predict ultrasound`` and ``evaluate ultrasound``: fetal ultrasound."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..organs import US_ORGANS
from . import options


def _cmd_train(args: argparse.Namespace) -> int:
    from ..models.unet import DEFAULT_ARCH, UNetConfig
    from ..training.augment import AugmentSettings
    from ..training.unet import UNetSettings, train_unet

    arch = args.arch or DEFAULT_ARCH.get(args.organ, "standard")
    frame_size = args.image_size if args.frame_size is None else args.frame_size
    config = UNetConfig(organ=args.organ, arch=arch, width=args.width, image_size=args.image_size,
                        frame_size=frame_size)
    settings = UNetSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
                            warmup=args.warmup, val_split=args.val_split, val_fraction=args.val_fraction,
                            finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                            plateau_patience=args.plateau_patience, plateau_factor=args.plateau_factor,
                            alpha=args.alpha, early_stop=args.early_stop,
                            test_series=args.test, max_minutes=args.max_minutes, device=args.device,
                            seed=args.seed, resume=args.resume, precision_target=args.precision_target,
                            threshold_rule=args.threshold_rule,
                            augment=options.augment_settings(args, AugmentSettings(), unused=("position",)))
    summary = options.run_training(train_unet, args.data, args.out, config, settings)
    if summary is not None:
        print(f"model -> {summary['out']} (best validation Dice {summary['best_val_dice']:.3f}, "
              f"threshold {summary['threshold']})")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    """Serial or on Dask, one rule: a bad composite among several is reported and the others go on
    (exit 1). Organs without --model get their built-in U-Net."""
    from ..jobs.batch import report
    from ..jobs.ultrasound import (
        predict_ultrasound_batch,
        predict_ultrasound_serial,
        with_builtin_models,
    )

    asked = options.parse_models(args.model)
    unused = [organ for organ in asked if organ not in args.organs]
    if unused:  # a typo in ORGAN=MODEL would otherwise leave that organ to a built-in model without a word
        raise ValueError(f"--model {unused[0]}={asked[unused[0]]}: {unused[0]!r} is not among --organs "
                         f"{','.join(args.organs)}")
    models, added = with_builtin_models(args.organs, asked)
    for organ in added:
        print(f"model for {organ}: the built-in {models[organ]} (no --model {organ}=... given; trained on "
              "synthetic series: for a first look, train on your own series before measuring)")
    if options.distributed(args):
        return options.exit_code(predict_ultrasound_batch(
            args.composites, args.organs, models, args.out, workers=args.workers,
            scheduler=args.scheduler, overwrite=args.overwrite, grid=args.grid, device=args.device,
            connect_timeout=args.connect_timeout))
    with options.warnings_to_stderr():
        outcomes = predict_ultrasound_serial(args.composites, args.organs, models, args.out, args.grid, args.device,
                                             keep_going=len(args.composites) > 1)
    if len(args.composites) > 1:
        report(outcomes)
    return options.exit_code(outcomes)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..jobs.ultrasound import evaluate_ultrasound

    evaluate_ultrasound(options.parse_models(args.model), args.data, args.out, args.device)
    print(f"report -> {args.out}")
    return 0


def add_commands(train_sub, predict_sub, evaluate_sub) -> None:
    """``train unet``, ``predict ultrasound`` and ``evaluate ultrasound``."""
    unet = train_sub.add_parser("unet", help="an ultrasound organ U-Net")
    unet.add_argument("--organ", required=True, help="heart, liver, placenta or any ROI keyword (e.g. head)")
    unet.add_argument("--data", type=Path, action="append", required=True,
                      help="series folders in the lab layout, or a dataset folder (repeatable)")
    unet.add_argument("--out", type=Path, required=True, help="model folder to write")
    unet.add_argument("--arch", choices=["standard", "deep", "residual"], default=None,
                      help="default: standard for hearts, deep for livers, residual for placentas")
    unet.add_argument("--width", type=options.count(1, 512), default=8,
                      help="channels of the first level (default 8, measured on real ultrasound: on a CPU "
                           "without bf16, 16 takes 3.3 times longer per step and learns less in a fixed budget)")
    unet.add_argument("--image-size", type=options.count(8, 4096), default=128, help="training crop size in pixels (default 128)")
    unet.add_argument("--frame-size", type=options.count(0, 4096), default=None,
                      help="resize frames so their longer side has this many pixels, in training and prediction "
                           "(default: --image-size, so crops hold whole organs; 0: frames at their own size)")
    unet.add_argument("--epochs", type=options.count(0), default=None,
                      help="budget in epochs (default: --max-minutes alone when given, else 100)")
    unet.add_argument("--max-minutes", type=options.MINUTES, default=None,
                      help="budget in minutes: the schedule anneals to fit it, then training stops cleanly")
    unet.add_argument("--schedule", choices=["cosine", "plateau"], default="cosine",
                      help="cosine: warm-up then cosine decay over the budget (default); plateau: the report's "
                           "drops on a validation plateau, early stopping and a fine-tuning stage")
    unet.add_argument("--warmup", type=options.number(0.0, 0.5), default=0.05,
                      help="cosine: fraction of the budget warming up (0.05)")
    unet.add_argument("--finetune-epochs", type=options.count(0), default=10, help="plateau: fine-tuning epochs (10)")
    unet.add_argument("--finetune-lr", type=options.LEARNING_RATE, default=1e-5, help="plateau: learning rate of fine-tuning (1e-5)")
    unet.add_argument("--early-stop", type=options.count(1), default=10,
                      help="plateau: epochs without a better validation Dice (10); the cosine schedule runs its budget")
    unet.add_argument("--batch-size", type=options.positive_int, default=8)
    unet.add_argument("--lr", type=options.LEARNING_RATE, default=1e-3,
                      help="peak learning rate (default 1e-3, measured on real ultrasound; the report used 1e-4)")
    unet.add_argument("--plateau-patience", type=options.count(1), default=5,
                      help="plateau: epochs without a lower validation loss before the lr drops (5)")
    unet.add_argument("--plateau-factor", type=options.number(0.0, 1.0, open_low=True), default=0.1, help="plateau: the lr drop (0.1)")
    unet.add_argument("--val-split", choices=["auto", "series", "frames"], default="auto",
                      help="validation: whole series, frames within each series, or auto (a dataset folder's own "
                           "split; else series from 6 series up, frames below)")
    unet.add_argument("--val-fraction", type=options.number(0.0, 0.9, open_low=True), default=0.2,
                      help="share of series or frames held out for validation (0.2)")
    unet.add_argument("--alpha", type=options.number(0.0, 1.0), default=0.5, help="weight of Dice in alpha*Dice + (1-alpha)*BCE (0.5)")
    unet.add_argument("--test", type=options.count(0), default=5, help="lab-layout data: whole series held out for testing (5)")
    options.add_augment(unet, "rotation (degrees, 20), scale (0.15), translation (0.1), hflip (true), vflip (false), "
                              "noise (0.03), brightness (0.1), contrast (0.2), elastic (0.02), crop (0.15)")
    unet.add_argument("--threshold-rule", choices=["dice", "f0.5"], default="dice",
                      help="choose the threshold with the largest validation Dice (default, measured on real "
                           "ultrasound) or the largest F0.5 (precision first, as the report)")
    unet.add_argument("--precision-target", type=options.number(0.0, 1.0, open_low=True), default=None,
                      help="choose the threshold as the lowest reaching this validation precision "
                           "(overrides --threshold-rule)")
    options.add_device(unet)
    unet.add_argument("--seed", type=int, default=0)
    unet.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    unet.set_defaults(func=_cmd_train)

    pus = predict_sub.add_parser("ultrasound", help="composites to instance labels and RoiSets with the U-Nets")
    pus.add_argument("composites", type=Path, nargs="+",
                     help="multi-page TIFF, montage image, folder of frames, or series folder (as `synth ultrasound` "
                          "writes)")
    pus.add_argument("--organs", type=options.organs, default=list(US_ORGANS),
                     help="comma-separated (default: all three)")
    pus.add_argument("--model", action="append", default=[], metavar="[ORGAN=]MODEL",
                     help="one per organ: a model name or folder, optionally prefixed by its organ (default: the "
                          "built-in unet-ORGAN-synthetic of each organ, trained on synthetic series)")
    pus.add_argument("--out", type=Path, required=True)
    pus.add_argument("--grid", type=options.grid, default=None, help="montage grid RxC (default: detect)")
    options.add_device(pus)
    options.add_batch_options(pus)
    pus.set_defaults(func=_cmd_predict)

    eus = evaluate_sub.add_parser("ultrasound", help="U-Nets on held-out series: pixel and instance scores")
    eus.add_argument("--model", action="append", required=True, metavar="[ORGAN=]MODEL",
                     help="one per organ: a model name or folder, optionally prefixed by its organ")
    eus.add_argument("--data", type=Path, action="append", required=True,
                     help="a dataset folder (its test series) or lab-layout series folders (all of them)")
    eus.add_argument("--out", type=Path, required=True, help="report folder")
    options.add_device(eus)
    eus.set_defaults(func=_cmd_evaluate)
