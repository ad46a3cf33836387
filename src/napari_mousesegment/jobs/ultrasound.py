"""The ultrasound jobs behind the CLI: predict composites to instance labels and RoiSets, evaluate.

    predict:  DIR/<composite stem>/<organ>_labels.tif (N, H, W instance ids)
              DIR/<composite stem>/<organ>_RoiSet.zip (one ROI per instance, on its frame)
              DIR/<composite stem>/frames.tif (the N frames the ROIs are on), README.txt (for Fiji)
    evaluate: REPORT_DIR/per_frame.csv, per_series.csv, summary.csv, summary.md (see :mod:`.reports`)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..inference.ultrasound import segment_frames
from ..io.composites import read_composite
from ..io.tiff import write_stack
from ..metrics import frame_counts, segmentation_scores
from ..store.load import load_unets
from ..store.registry import model_config
from .outputs import is_complete, mark_complete, read_manifest, staged
from .reports import write_us_report
from .rois import FIJI_FILES, write_fiji_files, write_rois


def us_outputs(organ: str) -> list[str]:
    return [f"{organ}_labels.tif", f"{organ}_RoiSet.zip"]


def weights_of(models: dict[str, str], organs: list[str]) -> dict[str, str]:
    """Organ -> sha256 of the weights of its model (a name or folder): what made each organ's output."""
    return {organ: model_config(models[organ])["sha256"] for organ in organs}


def predict_composite(loaded: dict, weights: dict[str, str], source: str | os.PathLike, out: str | os.PathLike,
                      grid: tuple[int, int] | None = None, log=print) -> Path:
    """Segment one composite with loaded U-Nets (organ -> model, whose weights' sha256 is in ``weights``)
    and write OUT/<stem>/ (see :mod:`.outputs`), with the frames as a stack for Fiji and a README.

    Outputs of other organs already in the folder stay, and stay counted as complete.
    """
    source = Path(source)
    frames = read_composite(source, grid=grid).frames
    if frames.ndim != 3:
        raise ValueError(f"{source}: frames must be grey (N, H, W), got shape {frames.shape}")
    if np.issubdtype(frames.dtype, np.floating) and not np.isfinite(frames).all():
        raise ValueError(f"{source}: the frames contain NaN or infinite values")
    target = Path(out) / source.stem
    before = (read_manifest(target) or {}).get("parts", {})
    earlier = {o: made for o, made in (before.items() if isinstance(before, dict) else [])
               if o not in loaded and is_complete(target, {o: made})}
    parts = {**earlier, **{organ: weights[organ] for organ in loaded}}
    with staged(target) as tmp:
        write_fiji_files(tmp, frames, parts)
        for organ, model in loaded.items():
            _, labels = segment_frames(model, frames)
            write_stack(tmp / f"{organ}_labels.tif", labels, compress=True)
            write_rois(tmp / f"{organ}_RoiSet.zip", labels, organ, log, shown=target / f"{organ}_RoiSet.zip")
            n = sum(len(np.unique(f[f > 0])) for f in labels)
            log(f"{source} {organ}: {n} instances in {int(np.any(labels > 0, axis=(1, 2)).sum())} frames")
    mark_complete(target, [*FIJI_FILES, *(f for o in sorted(parts) for f in us_outputs(o))], parts,
                  source=str(source))
    return target


def _check_stems(sources: list[Path]) -> None:
    stems = [s.stem for s in sources]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise ValueError(f"several composites are named {clash}: their outputs would overwrite each other "
                         "under --out; predict them in separate runs")


def with_builtin_models(organs: list[str], models: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """``models`` with the built-in U-Net (:data:`~..store.registry.SHIPPED_US`) of each organ asked
    for that has none given, and the organs that got one; organs without a built-in stay missing."""
    from ..store.registry import SHIPPED_US

    chosen = dict(models)
    added = [o for o in organs if o not in chosen and o in SHIPPED_US]
    chosen.update({o: SHIPPED_US[o] for o in added})
    return chosen, added


def predict_ultrasound_serial(composites: list[str | os.PathLike], organs: list[str], models: dict[str, str],
                              out: str | os.PathLike, grid: tuple[int, int] | None = None, device: str = "auto",
                              log=print, keep_going: bool = True, progress: bool | None = None) -> list:
    """Segment each composite for each organ in this process; one :class:`~.batch.Outcome` per composite.

    With ``keep_going`` a composite that fails is reported as failed and the others go on, as on
    Dask; without it the first failure is raised. ``progress`` shows a bar over the composites on
    stderr (default: only when stderr is a terminal).
    """
    import sys

    from tqdm.auto import tqdm

    from .batch import Outcome, failure, terminal

    sources = [Path(c) for c in composites]
    _check_stems(sources)
    loaded = load_unets(models, organs, device)
    weights = weights_of(models, organs)
    outcomes = []
    bars = terminal() if progress is None else progress
    for source in tqdm(sources, desc="composites", unit="composite", leave=False, disable=not bars,
                       file=sys.stderr):
        try:
            outcomes.append(Outcome(str(source), "done", str(predict_composite(loaded, weights, source, out, grid, log))))
        except Exception as exc:
            if not keep_going:
                raise
            outcomes.append(failure(source, exc))  # reported with the others at the end, as on Dask
    return outcomes


def predict_ultrasound(composites: list[str | os.PathLike], organs: list[str], models: dict[str, str],
                       out: str | os.PathLike, grid: tuple[int, int] | None = None, device: str = "auto",
                       log=print) -> list[Path]:
    """Segment each composite for each organ in this process; write instance labels and RoiSets under
    ``out``. The first bad composite stops the run; :func:`predict_ultrasound_serial` goes on."""
    outcomes = predict_ultrasound_serial(composites, organs, models, out, grid, device, log, keep_going=False,
                                         progress=False)
    return [Path(o.output) for o in outcomes]


def predict_us_task(source: str, *, organs: list[str], models: dict[str, str], weights: dict[str, str], out: str,
                    grid: tuple[int, int] | None = None, device: str = "auto", threads: int | None = None):
    """One composite on a Dask worker (each U-Net loaded once per worker); errors become a failed outcome."""
    from .batch import Outcome, cached_model, failure

    try:
        loaded = {organ: cached_model("unet", models[organ], device, threads, weights[organ]) for organ in organs}
        target = predict_composite(loaded, weights, source, out, grid, log=lambda _: None)
        return Outcome(source, "done", str(target))
    except Exception as exc:  # noqa: BLE001  (any error of one input is reported, the batch goes on)
        return failure(source, exc)


def predict_ultrasound_batch(composites: list[str | os.PathLike], organs: list[str], models: dict[str, str],
                             out: str | os.PathLike, *, workers: int | None = None, scheduler: str | None = None,
                             overwrite: bool = False, grid: tuple[int, int] | None = None, device: str = "auto",
                             connect_timeout: float = 10.0, log=print):
    """Segment many composites on Dask; complete ones are skipped unless ``overwrite``, failures reported."""
    from functools import partial

    from .batch import run_batch, threads_per_worker

    sources = [Path(c).absolute() for c in composites]  # workers may start elsewhere
    _check_stems(sources)
    missing = [o for o in organs if o not in models]
    if missing:
        raise ValueError(f"no model for {', '.join(missing)}; pass --model ORGAN=MODEL for each organ")
    specs = {o: str(Path(models[o]).absolute()) if Path(models[o]).exists() else models[o] for o in organs}
    weights = weights_of(models, list(organs))
    out = Path(out).absolute()
    task = partial(predict_us_task, organs=list(organs), models=specs, weights=weights, out=str(out), grid=grid,
                   device=device, threads=threads_per_worker(workers))
    return run_batch([str(s) for s in sources], task, lambda s: is_complete(out / Path(s).stem, weights),
                     workers=workers, scheduler=scheduler, overwrite=overwrite, connect_timeout=connect_timeout,
                     log=log)


def evaluate_ultrasound(models: dict[str, str], data: list[str | os.PathLike], out: str | os.PathLike,
                        device: str = "auto", log=print) -> dict[str, dict[str, float]]:
    """Score organ models on held-out series: a dataset folder's test split, or every lab series given."""
    from ..data.us_dataset import load_us_items

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_unets(models, list(models), device)
    frame_rows, series_rows, summary = [], [], {}
    for organ, model in loaded.items():
        items = [i for i in load_us_items(data, organ, lab_split="test") if i.split == "test"]
        if not items:
            raise ValueError(f"no held-out (test) series annotated for {organ!r} in {', '.join(map(str, data))}")
        totals = np.zeros(6, np.int64)
        for item in items:
            _, pred = segment_frames(model, item.frames)
            counts = frame_counts(pred, item.labels[organ])
            frame_rows += [{"organ": organ, "series": item.name, "frame": k + 1, **segmentation_scores(*c)}
                           for k, c in enumerate(counts)]
            series_totals = counts.sum(0)
            totals += series_totals
            series_rows.append({"organ": organ, "series": item.name, **segmentation_scores(*series_totals)})
        summary[organ] = {"series": len(items), **segmentation_scores(*totals)}
        s = summary[organ]
        log(f"{organ}: {len(items)} series, Dice {s['dice']:.3f}, precision {s['precision']:.3f}, "
            f"recall {s['recall']:.3f}, instance F1 {s['instance_f1']:.3f}")
    write_us_report(out, frame_rows, series_rows, summary)
    return summary
