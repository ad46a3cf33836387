"""The option rules every command shares, each written once: numbers, ``--spacing``, ``--device``,
``--grid``, ``--shape``, organ lists, ``--model [ORGAN=]MODEL``, the Dask options, and warnings
shown as one line each."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

DEVICES = ("auto", "cpu", "cuda")


def numbers(text: str, cast: type, what: str, example: str) -> tuple:
    """Comma-separated numbers of an option, or an argparse error that shows the expected form."""
    try:
        return tuple(cast(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must look like {example}, got {text!r}") from None


def spacing(text: str) -> tuple[float, float, float]:
    """``--spacing``: a voxel size Z,Y,X in mm, or one number for all three; finite and within
    1 µm to 10 mm (:data:`..io.readers.SPACING_RANGE_MM`), so that a wrong unit (1000 for 1 mm, or
    inf) is refused here rather than asking a resample for terabytes."""
    from ..io.readers import SPACING_RANGE_MM

    low, high = SPACING_RANGE_MM
    values = numbers(text, float, "spacing", "0.28,0.28,0.28")
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) and low <= v <= high for v in values):
        raise argparse.ArgumentTypeError(f"spacing needs 1 or 3 numbers in mm from {low:g} (1 µm) to {high:g}, "
                                         f"got {text!r}")
    return values  # type: ignore[return-value]


def window(text: str) -> tuple[float, float]:
    """``--window``: LEVEL,WIDTH in HU; level ± width/2 maps to 0..1, finite, width from 10 HU."""
    values = numbers(text, float, "window", "400,1000")
    if len(values) != 2 or not all(math.isfinite(v) for v in values) or not 10 <= values[1] <= 100_000 \
            or not -10_000 <= values[0] <= 100_000:
        raise argparse.ArgumentTypeError(f"window needs LEVEL,WIDTH in HU (level -10000 to 100000, width 10 to 100000), "
                                         f"got {text!r}")
    return values  # type: ignore[return-value]


def extra_window(text: str) -> tuple[float, ...]:
    """``--extra-window``: LEVEL,WIDTH as ``--window``, or LEVEL,WIDTH,SIGMA to cut it from the slice
    smoothed by a Gaussian of SIGMA model pixels (0 to 8)."""
    head, _, sigma = text.rpartition(",") if text.count(",") == 2 else (text, "", "")
    values = window(head)
    if not sigma:
        return values
    smooth = numbers(sigma, float, "extra window sigma", "40,400,1.5")[0]
    if not 0 <= smooth <= 8:  # also NaN
        raise argparse.ArgumentTypeError(f"extra window sigma must be 0 to 8 model pixels, got {text!r}")
    return (*values, smooth)


def hu(text: str) -> str | tuple[float, float]:
    """``--hu``: ``auto``, or AIR,WATER raw grey values that become -1000 and 0 HU."""
    from ..io.hu import parse_hu

    try:
        return parse_hu(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_scan_options(parser) -> None:
    """``--spacing``, ``--hu`` and ``--series``: how to read a micro-CT scan, for every command that reads one."""
    parser.add_argument("--spacing", type=spacing, default=None,
                        help="voxel size Z,Y,X in mm (one number for all three; 0.001 to 10) when the file lacks it "
                             "or states it unusably (a resolution or pixdim of 0)")
    parser.add_argument("--hu", type=hu, default=None, metavar="AIR,WATER|auto",
                        help="grey values are not HU (SkyScan, raw TIFF): map the raw values of air and water to "
                             "-1000 and 0 HU, or 'auto' to find air and soft tissue in the histogram")
    parser.add_argument("--series", default=None, metavar="UID",
                        help="the DICOM series to read when a folder holds several")


def shape(text: str) -> tuple[int, int, int]:
    """``--shape``: N,H,W of a stack (or H,W of one frame)."""
    values = numbers(text, int, "shape", "35,240,320")
    if len(values) == 2:
        values = (1, *values)
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"shape must be N,H,W (or H,W) positive integers, got {text!r}")
    return values  # type: ignore[return-value]


def grid(text: str) -> tuple[int, int]:
    """``--grid``: a montage grid RxC, e.g. 5x7."""
    from ..io.composites import parse_grid

    try:
        value = parse_grid(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value is None:
        raise argparse.ArgumentTypeError("grid must look like 5x7, got ''")
    return value


def augment_settings(args: argparse.Namespace, defaults, unused: tuple[str, ...] = ()):
    """AugmentSettings from ``--augment NAME=VALUE,...`` over ``defaults`` (0 or false switches one
    off), or every augmentation off with ``--no-augment``; ``unused`` names what this model has no
    use for, refused rather than silently ignored."""
    from dataclasses import fields, replace

    from ..training.augment import AugmentSettings

    if args.no_augment:
        return AugmentSettings.off()
    settings = replace(defaults)
    names = {f.name: f.type for f in fields(AugmentSettings) if f.name not in unused}
    for item in (args.augment or "").split(","):
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
                number = float(value)
            except ValueError:
                number = math.nan
            if not (math.isfinite(number) and number >= 0):
                raise ValueError(f"--augment {name} needs a number of at least 0, got {value!r}")
            setattr(settings, name, number)
    return settings


def add_augment(parser: argparse.ArgumentParser, defaults: str) -> None:
    """``--augment NAME=VALUE,...`` and ``--no-augment``; ``defaults`` lists each default for the help."""
    parser.add_argument("--augment", default=None, metavar="NAME=VALUE,...",
                        help=f"augmentation ranges, 0 switches one off: {defaults}")
    parser.add_argument("--no-augment", action="store_true", help="switch every augmentation off")


def organs(text: str) -> list[str]:
    """``--organs``: comma-separated organ names or ROI keywords."""
    names = [o.strip() for o in text.split(",") if o.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one organ, e.g. heart,liver,placenta")
    return names


def positive_int(text: str) -> int:
    """An option's whole number of at least 1 (--workers, --batch-size), or an argparse error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def check_round_epochs(epochs: int) -> None:
    """Refuse fine-tuning epochs per round outside 1-100000 (``worker --epochs``, ``serve --epochs``)."""
    if not 1 <= epochs <= 100_000:
        raise ValueError(f"--epochs: {epochs} is not 1 to 100000")


def count(low: int = 0, high: int = 100_000):
    """An option type: a whole number in [low, high] (epochs, series held out, patience), or an
    argparse error that shows the range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {text!r}")
        return value
    return parse


def number(low: float, high: float, *, open_low: bool = False):
    """An option type: a finite number in [low, high] (or (low, high] with ``open_low``: learning
    rates, factors), or an argparse error that shows the range."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (low < value if open_low else low <= value) and value <= high):
            raise argparse.ArgumentTypeError(
                f"expected a number {'above' if open_low else 'from'} {low:g} {'and up' if open_low else ''} "
                f"to {high:g}, got {text!r}".replace("  ", " "))
        return value
    return parse


#: The learning rates and time budgets every trainer takes.
LEARNING_RATE = number(0.0, 1.0, open_low=True)
MINUTES = number(0.0, 60 * 24 * 30, open_low=True)


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda`` (auto: a GPU when torch sees one)."""
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto (a GPU when torch sees one, the default), cpu or cuda")


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    """The Dask options of ``predict ct`` and ``predict ultrasound``: many inputs on a cluster."""
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
    """Whether the batch options ask for Dask."""
    return args.workers is not None or args.scheduler is not None


def exit_code(outcomes: list) -> int:
    """0 when every input is done or skipped; 1 when some failed (each was reported)."""
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def parse_models(specs: list[str]) -> dict[str, str]:
    """Organ -> model, from --model values: ORGAN=MODEL, or a bare MODEL whose config names its organ.

    MODEL is a model folder or an installed model's name (``mousesegment models list``).
    """
    from ..store.registry import model_config

    models = {}
    for spec in specs:
        organ, sep, model = spec.partition("=")
        if not sep:
            organ, model = model_config(spec).get("organ", ""), spec
            if not organ:
                raise ValueError(f"--model {spec}: not an ultrasound U-Net (its config names no organ)")
        if not organ or not model:
            raise ValueError(f"--model takes ORGAN=MODEL or MODEL (a name or folder), got {spec!r}")
        models[organ.strip()] = model.strip()
    return models


@contextmanager
def warnings_to_stderr(show: bool = True) -> Iterator[None]:
    """Show the warnings of the block as ``warning: ...`` lines on stderr after it ends (none when
    ``show`` is false); a warning repeated from the same place with the same text is shown once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        # a file handle left to the garbage collector (by a lazy reader, or an earlier call in the same
        # process) says nothing about the user's input: not a line for them
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            yield
        finally:
            for w in caught if show else ():
                print(f"warning: {w.message}", file=sys.stderr)


def run_training(train, *args):
    """Run a trainer, also under torchrun: leave its process group afterwards, whatever happens, and
    show warnings once. The trainer's summary on rank 0 (the process that reports), None on the others."""
    from ..training import distributed

    main = distributed.main_process()
    with warnings_to_stderr(show=main):
        try:
            summary = train(*args)
        finally:
            distributed.finish()
    return summary if main else None
