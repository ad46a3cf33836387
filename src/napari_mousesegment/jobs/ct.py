"""The micro-CT jobs behind the CLI and the demo: predict and evaluate, with their output contracts.

    predict:  DIR/<scan stem>/labels.tif, labels.json ({"organs": {name: value}}), volumes.csv
              (organ, voxels, mm3, flag: see :func:`~..organs.volume_flag`); for NIfTI, Analyze,
              DICOM and OME-Zarr inputs also labels.nii.gz (the input's own grid and affine) and
              labels.ctbl (a 3D Slicer colour table naming the organs); DIR/report.md, the organ
              volumes of every scan of the last run with their flags
    evaluate: REPORT_DIR/per_scan.csv, summary.csv, summary.md, dsc.png (see :mod:`.reports`)
"""

from __future__ import annotations

import csv
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io.scan import case_name
from ..io.tiff import write_tiff, write_tiff_slices
from ..metrics import write_counts_csv, write_rows, write_volumes_csv
from ..organs import volume_flag, volume_range_text
from .outputs import is_complete, mark_complete, read_manifest, staged
from .reports import summarise, write_summary

if TYPE_CHECKING:
    from ..io.geometry import Geometry
    from ..models.mosnet import MOSnetConfig
    from .batch import Outcome

#: ``--condition auto``: tell native from contrast by each scan's own HU (:func:`~..io.hu.guess_condition`).
AUTO = "auto"


def write_labels(folder: str | os.PathLike, labels: np.ndarray, organs: dict[str, int],
                 spacing: tuple[float, float, float], prefix: str = "") -> Path:
    """PREFIXlabels.tif (with its spacing), PREFIXlabels.json ({"organs": ...}) and PREFIXvolumes.csv."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_tiff(folder / f"{prefix}labels.tif", labels, spacing)
    write_organ_names(folder / f"{prefix}labels.json", organs)
    write_volumes_csv(folder / f"{prefix}volumes.csv", labels, organs, spacing, volume_flag)
    return folder


def write_organ_names(path: Path, organs: dict[str, int]) -> None:
    """labels.json: {"organs": {name: label value}}, the names scripts and readers look up."""
    path.write_text(json.dumps({"organs": organs}, indent=2) + "\n")


CT_OUTPUTS = ["labels.tif", "labels.json", "volumes.csv"]
#: Written beside CT_OUTPUTS when the input has a geometry of its own (NIfTI, Analyze, DICOM, OME-Zarr).
GEOMETRY_OUTPUTS = ["labels.nii.gz", "labels.ctbl"]


def write_geometry_outputs(folder: Path, labels: np.ndarray, organs: dict[str, int], geometry: Geometry) -> None:
    """labels.nii.gz on the input's own grid and affine, and labels.ctbl naming its values for Slicer."""
    from ..io.geometry import write_labels_nifti
    from ..io.slicer import write_color_table
    from ..organs import CT_COLORS

    write_labels_nifti(folder / "labels.nii.gz", labels, geometry)
    write_color_table(folder / "labels.ctbl", {v: (o, CT_COLORS.get(o, "#808080")) for o, v in organs.items()})


def stream_labels(folder: Path, slabs, shape: tuple[int, int, int], organs: dict[str, int],
                  spacing: tuple[float, float, float]) -> None:
    """labels.tif written slice by slice as the predictor yields them, and volumes.csv from their
    counts: the label volume is never whole in memory."""
    counts = np.zeros(256, np.int64)

    def slices():
        for _, labels, _ in slabs:
            counts[:] += np.bincount(labels.ravel(), minlength=256)
            yield from labels

    write_tiff_slices(folder / "labels.tif", slices(), shape, np.uint8, spacing)
    write_organ_names(folder / "labels.json", organs)
    write_counts_csv(folder / "volumes.csv", counts, organs, spacing, volume_flag)


def ct_fingerprint(weights_sha256: str, condition: str, cleanup: bool,
                   spacing: tuple[float, float, float] | None, config: MOSnetConfig,
                   hu: str | tuple[float, float] | None = None, series: str | None = None) -> str:
    """What made a prediction: the model's weights, its label rule (per-organ thresholds, organs
    read under another condition) and the settings that change its labels."""
    return json.dumps({"weights": weights_sha256, "thresholds": config.organ_thresholds(),
                       "borrowed": config.borrowed_organs(condition), "condition": condition, "cleanup": cleanup,
                       "spacing": list(spacing) if spacing else None,
                       **({"hu": hu if isinstance(hu, str) else list(hu)} if hu is not None else {}),
                       **({"series": series} if series else {})}, sort_keys=True)


def check_case_names(scans: list[str | os.PathLike]) -> None:
    """Refuse scans whose outputs would share a folder (``a/scan.tif`` and ``b/scan.nii.gz``)."""
    names = [case_name(s) for s in scans]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"several scans are named {clash}: their outputs would overwrite each other "
                         "under --out; predict them into separate --out folders")


def pick_condition(image, spacing: tuple[float, float, float], condition: str, conditions: list[str],
                   source: str) -> tuple[str, str]:
    """The condition to segment a scan under, and how it was chosen: ``condition`` itself, or for
    ``auto`` the one the scan's HU point to (a model with one condition: that one)."""
    if condition != AUTO:
        return condition, "given"
    if len(conditions) == 1:
        return conditions[0], "the model's only condition"
    check_auto(conditions, source)
    from ..io.hu import guess_condition

    chosen, reason = guess_condition(image, spacing, source)
    return chosen, f"auto: {reason}"


def check_auto(conditions: list[str], model: str | os.PathLike) -> None:
    """Refuse ``--condition auto`` for a model that does not know both native and contrast."""
    if len(conditions) != 1 and not {"native", "contrast"} <= set(conditions):
        raise ValueError(f"--condition auto tells native from contrast, but model {model} knows {conditions}; "
                         "give --condition")


def predict_ct_scan(model, scan: str | os.PathLike, condition: str, out: str | os.PathLike, fingerprint: str,
                    spacing: tuple[float, float, float] | None = None, cleanup: bool = False,
                    batch_size: int | None = None, hu: str | tuple[float, float] | None = None,
                    series: str | None = None, force: bool = False,
                    progress: Callable[[int, int], None] | None = None,
                    note: Callable[[str], None] | None = None) -> Path:
    """Segment one scan with a loaded MOSnet and write OUT/<scan stem>/ (see :mod:`.outputs`).

    The scan is read lazily and its labels are written slab by slab, so memory stays bounded by a
    slab whatever the scan's size; ``cleanup`` (which looks at whole organs) needs the labels whole.
    A scan whose values are not plausible HU is refused unless ``force`` (:func:`~..io.hu.check_hu`;
    then it is a warning, kept in the manifest as ``forced``);
    ``condition`` may be ``auto`` (:func:`pick_condition`), and the choice goes to ``note`` and to
    the output's manifest. ``progress(done, total)`` follows the network's slices.
    """
    from ..inference.ct import iter_fused_labels, iter_labels, predict_volume
    from ..inference.postprocess import clean_labels
    from ..io.arrays import load, slabs_follow_chunks
    from ..io.hu import check_hu, hu_problem
    from ..io.readers import read_scan
    from ..io.tiff import read_tiff
    from ..models.preprocess import PLANE_AXIS

    scan = Path(scan)
    volume = read_scan(scan, spacing, hu=hu, series=series, lazy=True)
    if volume.image is None:
        raise ValueError(f"{scan}: holds labels only, no image to segment")
    forced = hu_problem(volume.image, calibrated=hu is not None) if force else None
    if forced:
        warnings.warn(f"{scan}: {forced}; predicting anyway (--force)", stacklevel=2)
    elif not force:
        check_hu(volume.image, str(scan), calibrated=hu is not None)
    if not all(slabs_follow_chunks(volume.image, PLANE_AXIS[p]) for p in model.config.planes):
        volume.image = load(volume.image)  # slabs across the file's chunks would read the file once per slab
    condition, how = pick_condition(volume.image, volume.spacing, condition, model.config.conditions, str(scan))
    if note and how != "given":
        note(f"{scan}: condition {condition} ({how})")
    organs = {o: i + 1 for i, o in enumerate(model.config.organs)}
    target = Path(out) / case_name(scan)
    files = CT_OUTPUTS + (GEOMETRY_OUTPUTS if volume.geometry is not None else [])
    try:
        with staged(target) as tmp:
            planes = model.config.planes
            if cleanup or planes in (["coronal"], ["sagittal"]):  # their labels do not come in axial slabs
                result = predict_volume(model, volume.image, volume.spacing, condition, batch_size=batch_size,
                                        progress=progress)
                labels = clean_labels(result.labels, organs, volume.spacing) if cleanup else result.labels
                write_labels(tmp, labels, organs, volume.spacing)
            else:  # a multi-planar model's summed probabilities wait on disk in the staging folder
                slabs = (iter_labels(model, volume.image, volume.spacing, condition, batch_size=batch_size,
                                     progress=progress) if len(planes) == 1 else
                         iter_fused_labels(model, volume.image, volume.spacing, condition, batch_size=batch_size,
                                           progress=progress, scratch=tmp))
                stream_labels(tmp, slabs, tuple(volume.image.shape), organs, volume.spacing)
            if volume.geometry is not None:  # read back slab by slab: never a second whole copy
                write_geometry_outputs(tmp, read_tiff(tmp / "labels.tif", lazy=True)[0], organs, volume.geometry)
    except ValueError as exc:  # deep checks (NaN in a slab, shapes) name the scan here
        raise ValueError(str(exc) if str(scan) in str(exc) else f"{scan}: {exc}") from exc
    if volume.geometry is None:  # outputs of an earlier input of the same name would now mislead
        for name in GEOMETRY_OUTPUTS:
            (target / name).unlink(missing_ok=True)
    mark_complete(target, files, {"labels": fingerprint}, source=str(scan), condition=condition, condition_how=how,
                  **({"forced": forced} if forced else {}))
    return target


def ct_output_complete(scan: str | os.PathLike, out: str | os.PathLike, fingerprint: str) -> bool:
    return is_complete(Path(out) / case_name(scan), {"labels": fingerprint})


def predict_ct_task(scan: str, *, model: str, weights: str, condition: str, out: str, spacing=None,
                    device: str = "auto", cleanup: bool = False, batch_size: int | None = None,
                    threads: int | None = None, hu=None, series: str | None = None, force: bool = False):
    """One scan on a Dask worker (the model loaded once per worker); errors become a failed outcome."""
    from .batch import Outcome, cached_model, failure

    try:
        net = cached_model("mosnet", model, device, threads, weights)
        fingerprint = ct_fingerprint(weights, condition, cleanup, spacing, net.config, hu, series)
        target = predict_ct_scan(net, scan, condition, out, fingerprint, spacing, cleanup, batch_size, hu, series,
                                 force=force)
        return Outcome(scan, "done", str(target))
    except Exception as exc:  # noqa: BLE001  (any error of one input is reported, the batch goes on)
        return failure(scan, exc)


def predict_ct_serial(scans: list[str | os.PathLike], model_dir: str | os.PathLike, condition: str,
                      out: str | os.PathLike, spacing: tuple[float, float, float] | None = None,
                      device: str = "auto", cleanup: bool = False, log=print, batch_size: int | None = None,
                      hu: str | tuple[float, float] | None = None, series: str | None = None,
                      force: bool = False, keep_going: bool = True, progress: bool | None = None) -> list[Outcome]:
    """Segment each scan in this process; one :class:`~.batch.Outcome` per scan.

    With ``keep_going`` a scan that fails is reported as failed and the others go on, as on Dask
    (:func:`predict_ct_batch`); without it the first failure is raised. ``progress`` shows a bar
    per scan on stderr (default: only when stderr is a terminal).
    """
    from tqdm.auto import tqdm

    from ..models.preprocess import pick_device
    from ..store.load import load_mosnet
    from .batch import Outcome, failure, terminal

    check_case_names(scans)
    model, config, meta = load_mosnet(model_dir, pick_device(device))
    if condition == AUTO:
        check_auto(config.conditions, model_dir)
    elif condition not in config.conditions:
        raise ValueError(f"condition {condition!r} is unknown to model {model_dir}; it knows {config.conditions}")
    fingerprint = ct_fingerprint(meta["sha256"], condition, cleanup, spacing, config, hu, series)
    bars = terminal() if progress is None else progress
    outcomes = []
    for k, scan in enumerate(scans):
        bar = tqdm(total=None, desc=f"{Path(scan).name} ({k + 1}/{len(scans)})", unit="slice", leave=False,
                   disable=not bars, file=sys.stderr)

        def advance(done: int, total: int, bar=bar) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            target = predict_ct_scan(model, scan, condition, out, fingerprint, spacing, cleanup, batch_size, hu,
                                     series, force=force, progress=advance, note=log)
        except Exception as exc:
            if not keep_going:
                raise
            outcomes.append(failure(scan, exc))  # reported with the others at the end, as on Dask
            continue
        finally:
            bar.close()
        log(f"{scan} -> {target}")
        outcomes.append(Outcome(str(scan), "done", str(target)))
    return outcomes


def predict_ct(scans: list[str | os.PathLike], model_dir: str | os.PathLike, condition: str,
               out: str | os.PathLike, spacing: tuple[float, float, float] | None = None,
               device: str = "auto", cleanup: bool = False, log=print, batch_size: int | None = None,
               hu: str | tuple[float, float] | None = None, series: str | None = None,
               force: bool = False) -> list[Path]:
    """Segment each scan in this process and write its labels, organ names and volumes under ``out``.

    ``condition`` is native, contrast (or another the model knows) or ``auto`` (each scan's own HU
    decide); ``cleanup`` keeps the largest piece of single-piece organs and drops tiny fragments;
    ``batch_size`` is the predictor's (None: its default for the device); ``hu`` calibrates scans
    that are not in HU and ``series`` picks a DICOM series (see :func:`~..io.readers.read_scan`);
    ``force`` predicts scans whose values are not plausible HU. The first bad scan stops the run;
    :func:`predict_ct_serial` and :func:`predict_ct_batch` go on past bad scans.
    """
    outcomes = predict_ct_serial(scans, model_dir, condition, out, spacing, device, cleanup, log, batch_size, hu,
                                 series, force=force, keep_going=False, progress=False)
    return [Path(o.output) for o in outcomes]


def predict_ct_batch(scans: list[str | os.PathLike], model: str, condition: str, out: str | os.PathLike, *,
                     workers: int | None = None, scheduler: str | None = None, overwrite: bool = False,
                     spacing: tuple[float, float, float] | None = None, device: str = "auto", cleanup: bool = False,
                     batch_size: int | None = None, connect_timeout: float = 10.0, log=print,
                     hu: str | tuple[float, float] | None = None, series: str | None = None, force: bool = False):
    """Segment many scans on Dask (``workers`` local processes, or the cluster at ``scheduler``).

    Scans whose outputs are complete (made by the same weights and settings) are skipped unless
    ``overwrite``; a failed scan is reported and the others go on. Returns one
    :class:`~.batch.Outcome` per scan.
    """
    from functools import partial

    from ..models.mosnet import MOSnetConfig
    from ..store.registry import model_config
    from .batch import run_batch, threads_per_worker

    check_case_names(scans)
    meta = model_config(model)
    if condition == AUTO:
        check_auto(list(meta.get("conditions", [])), model)
    elif condition not in meta.get("conditions", []):  # checked once here rather than failing every scan
        raise ValueError(f"condition {condition!r} is unknown to model {model}; it knows {meta.get('conditions')}")
    fingerprint = ct_fingerprint(meta["sha256"], condition, cleanup, spacing, MOSnetConfig.from_dict(meta), hu, series)
    sources = [str(Path(s).absolute()) for s in scans]  # workers may start elsewhere
    spec = str(Path(model).absolute()) if Path(model).exists() else str(model)  # a folder, or a name
    out = Path(out).absolute()
    task = partial(predict_ct_task, model=spec, weights=meta["sha256"], condition=condition, out=str(out),
                   spacing=spacing, device=device, cleanup=cleanup, batch_size=batch_size,
                   threads=threads_per_worker(workers), hu=hu, series=series, force=force)
    return run_batch(sources, task, partial(ct_output_complete, out=out, fingerprint=fingerprint), workers=workers,
                     scheduler=scheduler, overwrite=overwrite, connect_timeout=connect_timeout, log=log)


def read_volumes(folder: str | os.PathLike) -> list[dict]:
    """The rows of an output folder's volumes.csv (organ, voxels, mm3, flag), flags filled in for
    files written before the flag column existed; [] when there is none."""
    path = Path(folder) / "volumes.csv"
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error):
        return []
    table = []
    for row in rows:
        try:
            mm3 = float(row.get("mm3", "nan"))
        except ValueError:
            continue
        table.append({"organ": row.get("organ", ""), "mm3": mm3,
                      "flag": row.get("flag") or volume_flag(row.get("organ", ""), mm3)})
    return table


def volume_table(outcomes: list[Outcome], out: str | os.PathLike) -> list[dict]:
    """One row per organ of every scan done or skipped (its outputs in ``out`` already complete):
    scan, condition, organ, mm3, flag, range."""
    rows = []
    for outcome in outcomes:
        if outcome.status == "failed":
            continue
        folder = Path(outcome.output) if outcome.output else Path(out) / case_name(outcome.source)
        condition = (read_manifest(folder) or {}).get("condition", "")
        for row in read_volumes(folder):
            rows.append({"scan": folder.name, "condition": condition, **row,
                         "range": volume_range_text(row["organ"])})
    return rows


def format_volume_table(rows: list[dict]) -> str:
    """The organ volumes as an aligned text table, a scan's name and condition on its first row."""
    if not rows:
        return ""
    header = ("scan", "condition", "organ", "volume (mm3)", "flag", "plausible range")
    cells, last = [], None
    for r in rows:
        first = r["scan"] != last
        last = r["scan"]
        cells.append((r["scan"] if first else "", r["condition"] if first else "", r["organ"], f"{r['mm3']:.1f}",
                      r["flag"], r["range"].replace("mm³", "mm3")))
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
    line = "  ".join(f"{{:{'>' if i == 3 else '<'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(line.format(*c).rstrip() for c in [header, *cells]) + "\n"


def write_volume_report(out: str | os.PathLike, rows: list[dict], outcomes: list[Outcome]) -> Path:
    """OUT/report.md: every organ's volume of the run's scans with its flag, and the scans that failed."""
    flagged = [r for r in rows if r["flag"] not in ("ok", "")]
    lines = ["# mousesegment predict ct: organ volumes", "",
             ("Flags: `low`/`high` outside a generous range for an adult (20-30 g) mouse, `absent` found nowhere "
             "(see docs/mosnet.md). A flag asks for a look at the scan, its voxel size and the model; it "
             "changes nothing."), "",
             f"{len(flagged)} of {len(rows)} organ volumes flagged.", "",
             "| scan | condition | organ | volume (mm³) | flag | plausible range |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['scan']} | {r['condition']} | {r['organ']} | {r['mm3']:.1f} | "
              f"{'**' + r['flag'] + '**' if r['flag'] not in ('ok', '') else r['flag']} | {r['range']} |" for r in rows]
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        lines += ["", "## Failed scans", "", *(f"- {o.source}: {o.message}" for o in failed)]
    path = Path(out) / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def evaluate_ct(model_dir: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
                device: str = "auto", log=print, borrow: bool = True) -> dict:
    """Score a model on every scan of a dataset folder; tables shaped like the paper's Tables 1-2.

    ``borrow=False`` reads every organ under the dataset's own condition, even organs that no
    training dataset of that condition annotated (see :func:`predict_volume`).
    """
    from ..data.ct_dataset import load_case, read_ct_dataset
    from ..inference.ct import predict_volume
    from ..metrics import organ_scores
    from ..models.preprocess import pick_device
    from ..store.load import load_mosnet

    model, config, _ = load_mosnet(model_dir, pick_device(device))
    dataset = read_ct_dataset(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    organs = {o: i + 1 for i, o in enumerate(config.organs)}
    if not set(organs) & set(dataset.organs):
        raise ValueError(f"model {model_dir} and dataset {data} share no organ to evaluate")
    rows = []
    for case in dataset.cases:
        image, labels, spacing = load_case(dataset, case)
        pred = predict_volume(model, image, spacing, dataset.condition, borrow=borrow)
        for row in organ_scores(pred.labels, labels, organs, dataset.organs, spacing):
            rows.append({"scan": case, **row})
        log(f"  {case}: " + ", ".join(f"{r['organ']} {r['dsc']:.3f}" for r in rows if r["scan"] == case))
    write_rows(out / "per_scan.csv", rows)
    summary = summarise(rows)
    write_summary(out, summary, f"{Path(model_dir).name} on {dataset.name} ({dataset.condition})")
    return summary
