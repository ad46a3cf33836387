"""The micro-CT jobs behind the CLI and the demo: predict and evaluate, with their output contracts.

    predict:  DIR/<scan stem>/labels.tif, labels.json ({"organs": {name: value}}), volumes.csv;
              for NIfTI, Analyze, DICOM and OME-Zarr inputs also labels.nii.gz (the input's own
              grid and affine) and labels.ctbl (a 3D Slicer colour table naming the organs)
    evaluate: REPORT_DIR/per_scan.csv, summary.csv, summary.md, dsc.png (see :mod:`.reports`)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io.scan import case_name
from ..io.tiff import write_tiff, write_tiff_slices
from ..metrics import write_counts_csv, write_rows, write_volumes_csv
from .outputs import is_complete, mark_complete, staged
from .reports import summarise, write_summary

if TYPE_CHECKING:
    from ..io.geometry import Geometry
    from ..models.mosnet import MOSnetConfig


def write_labels(folder: str | os.PathLike, labels: np.ndarray, organs: dict[str, int],
                 spacing: tuple[float, float, float], prefix: str = "") -> Path:
    """PREFIXlabels.tif (with its spacing), PREFIXlabels.json ({"organs": ...}) and PREFIXvolumes.csv."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_tiff(folder / f"{prefix}labels.tif", labels, spacing)
    write_organ_names(folder / f"{prefix}labels.json", organs)
    write_volumes_csv(folder / f"{prefix}volumes.csv", labels, organs, spacing)
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
    write_counts_csv(folder / "volumes.csv", counts, organs, spacing)


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


def predict_ct_scan(model, scan: str | os.PathLike, condition: str, out: str | os.PathLike, fingerprint: str,
                    spacing: tuple[float, float, float] | None = None, cleanup: bool = False,
                    batch_size: int | None = None, hu: str | tuple[float, float] | None = None,
                    series: str | None = None) -> Path:
    """Segment one scan with a loaded MOSnet and write OUT/<scan stem>/ (see :mod:`.outputs`).

    The scan is read lazily and its labels are written slab by slab, so memory stays bounded by a
    slab whatever the scan's size; ``cleanup`` (which looks at whole organs) needs the labels whole.
    """
    from ..inference.ct import iter_labels, predict_volume
    from ..inference.postprocess import clean_labels
    from ..io.arrays import load, slabs_follow_chunks
    from ..io.readers import read_scan
    from ..io.tiff import read_tiff
    from ..models.preprocess import PLANE_AXIS

    scan = Path(scan)
    volume = read_scan(scan, spacing, hu=hu, series=series, lazy=True)
    if volume.image is None:
        raise ValueError(f"{scan}: holds labels only, no image to segment")
    if not slabs_follow_chunks(volume.image, PLANE_AXIS[model.config.plane]):
        volume.image = load(volume.image)  # slabs across the file's chunks would read the file once per slab
    organs = {o: i + 1 for i, o in enumerate(model.config.organs)}
    target = Path(out) / case_name(scan)
    files = CT_OUTPUTS + (GEOMETRY_OUTPUTS if volume.geometry is not None else [])
    try:
        with staged(target) as tmp:
            if cleanup or model.config.plane != "axial":
                result = predict_volume(model, volume.image, volume.spacing, condition, batch_size=batch_size)
                labels = clean_labels(result.labels, organs, volume.spacing) if cleanup else result.labels
                write_labels(tmp, labels, organs, volume.spacing)
            else:
                slabs = iter_labels(model, volume.image, volume.spacing, condition, batch_size=batch_size)
                stream_labels(tmp, slabs, tuple(volume.image.shape), organs, volume.spacing)
            if volume.geometry is not None:  # read back slab by slab: never a second whole copy
                write_geometry_outputs(tmp, read_tiff(tmp / "labels.tif", lazy=True)[0], organs, volume.geometry)
    except ValueError as exc:  # deep checks (NaN in a slab, shapes) name the scan here
        raise ValueError(str(exc) if str(scan) in str(exc) else f"{scan}: {exc}") from exc
    if volume.geometry is None:  # outputs of an earlier input of the same name would now mislead
        for name in GEOMETRY_OUTPUTS:
            (target / name).unlink(missing_ok=True)
    mark_complete(target, files, {"labels": fingerprint}, source=str(scan))
    return target


def ct_output_complete(scan: str | os.PathLike, out: str | os.PathLike, fingerprint: str) -> bool:
    return is_complete(Path(out) / case_name(scan), {"labels": fingerprint})


def predict_ct_task(scan: str, *, model: str, weights: str, condition: str, out: str, spacing=None,
                    device: str = "auto", cleanup: bool = False, batch_size: int | None = None,
                    threads: int | None = None, hu=None, series: str | None = None):
    """One scan on a Dask worker (the model loaded once per worker); errors become a failed outcome."""
    from .batch import Outcome, cached_model, failure

    try:
        net = cached_model("mosnet", model, device, threads, weights)
        fingerprint = ct_fingerprint(weights, condition, cleanup, spacing, net.config, hu, series)
        target = predict_ct_scan(net, scan, condition, out, fingerprint, spacing, cleanup, batch_size, hu, series)
        return Outcome(scan, "done", str(target))
    except Exception as exc:  # noqa: BLE001  (any error of one input is reported, the batch goes on)
        return failure(scan, exc)


def predict_ct(scans: list[str | os.PathLike], model_dir: str | os.PathLike, condition: str,
               out: str | os.PathLike, spacing: tuple[float, float, float] | None = None,
               device: str = "auto", cleanup: bool = False, log=print, batch_size: int | None = None,
               hu: str | tuple[float, float] | None = None, series: str | None = None) -> list[Path]:
    """Segment each scan in this process and write its labels, organ names and volumes under ``out``.

    ``cleanup`` keeps the largest piece of single-piece organs and drops tiny fragments;
    ``batch_size`` is the predictor's (None: its default for the device); ``hu`` calibrates scans
    that are not in HU and ``series`` picks a DICOM series (see :func:`~..io.readers.read_scan`).
    The first bad scan stops the run; :func:`predict_ct_batch` goes on past bad scans.
    """
    from ..models.preprocess import pick_device
    from ..store.load import load_mosnet

    check_case_names(scans)
    model, config, meta = load_mosnet(model_dir, pick_device(device))
    if condition not in config.conditions:
        raise ValueError(f"condition {condition!r} is unknown to model {model_dir}; it knows {config.conditions}")
    fingerprint = ct_fingerprint(meta["sha256"], condition, cleanup, spacing, config, hu, series)
    written = []
    for scan in scans:
        target = predict_ct_scan(model, scan, condition, out, fingerprint, spacing, cleanup, batch_size, hu, series)
        log(f"{scan} -> {target}")
        written.append(target)
    return written


def predict_ct_batch(scans: list[str | os.PathLike], model: str, condition: str, out: str | os.PathLike, *,
                     workers: int | None = None, scheduler: str | None = None, overwrite: bool = False,
                     spacing: tuple[float, float, float] | None = None, device: str = "auto", cleanup: bool = False,
                     batch_size: int | None = None, connect_timeout: float = 10.0, log=print,
                     hu: str | tuple[float, float] | None = None, series: str | None = None):
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
    if condition not in meta.get("conditions", []):  # checked once here rather than failing every scan
        raise ValueError(f"condition {condition!r} is unknown to model {model}; it knows {meta.get('conditions')}")
    fingerprint = ct_fingerprint(meta["sha256"], condition, cleanup, spacing, MOSnetConfig.from_dict(meta), hu, series)
    sources = [str(Path(s).absolute()) for s in scans]  # workers may start elsewhere
    spec = str(Path(model).absolute()) if Path(model).exists() else str(model)  # a folder, or a name
    out = Path(out).absolute()
    task = partial(predict_ct_task, model=spec, weights=meta["sha256"], condition=condition, out=str(out),
                   spacing=spacing, device=device, cleanup=cleanup, batch_size=batch_size,
                   threads=threads_per_worker(workers), hu=hu, series=series)
    return run_batch(sources, task, partial(ct_output_complete, out=out, fingerprint=fingerprint), workers=workers,
                     scheduler=scheduler, overwrite=overwrite, connect_timeout=connect_timeout, log=log)


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
