"""The main job, headless, on the synthetic samples: what ``mousesegment demo`` runs.

Each step writes real files or is reported as skipped with the reason; nothing is faked. By
default the segmentation steps use the built-in models trained on synthetic data
(``mosnet-synthetic``, ``unet-<organ>-synthetic``); other models can be named instead, and
``--no-models`` skips those steps.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.phantom_ct import CONDITIONS, ct_phantom
from ..data.phantom_us import ultrasound_series, write_us_series
from ..io.composites import read_composite
from ..io.tiff import write_stack, write_tiff
from ..organs import US_FRAMES, volume_flag
from ..store.registry import SHIPPED_CT, SHIPPED_US, model_config
from .ct import write_labels

NO_CT_MODEL = "no MOSnet model given (--no-models); pass --ct-model NAME|DIR to segment the samples"
NO_US_MODEL = "no U-Nets given (--no-models); pass --us-model ORGAN=NAME|DIR to segment the series"


@dataclass
class Step:
    """One step of the demo: done with its outputs, or skipped with the reason."""

    name: str
    status: str  #: "done" or "skipped"
    detail: str = ""
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0


class OutputNotEmpty(FileExistsError):
    """The demo's output folder holds files and --overwrite was not given."""


def prepare_output(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse a non-empty one unless ``overwrite``, so no user file is lost silently."""
    if out.exists() and not out.is_dir():
        raise OutputNotEmpty(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputNotEmpty(f"{out} is not empty; choose another --out or pass --overwrite")
        if not (out / "report.json").exists():
            raise OutputNotEmpty(f"{out} is not empty and was not written by the demo (no report.json); "
                                 "refusing to delete it even with --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _segment_ct(scan, folder: Path, model_dir: str, log: Callable[[str], None]) -> tuple[Step, list[dict]]:
    """Run a trained MOSnet on the phantom and score it against the phantom's truth."""
    from ..inference.ct import predict_volume
    from ..metrics import organ_scores
    from ..store.load import load_mosnet

    t0 = time.perf_counter()
    model, config, _ = load_mosnet(model_dir)
    pred = predict_volume(model, scan.image, scan.spacing, scan.condition)
    write_labels(folder, pred.labels, pred.organs, scan.spacing)
    rows = [{"sample": f"ct {scan.condition}", **r}
            for r in organ_scores(pred.labels, scan.labels, pred.organs, scan.organs, scan.spacing)]
    mean = np.mean([r["dsc"] for r in rows])
    step = Step(f"micro-CT {scan.condition}: MOSnet segmentation and organ volumes", "done",
                f"model {model_dir}; mean DSC {mean:.3f} over {len(rows)} organs",
                [str(folder / n) for n in ("labels.tif", "volumes.csv")], time.perf_counter() - t0)
    return step, rows


def _ct_steps(out: Path, seed: int, log: Callable[[str], None], ct_model: str | None = None,
              scores: list[dict] | None = None) -> list[Step]:
    steps = []
    for condition in CONDITIONS:
        t0 = time.perf_counter()
        folder = out / "ct" / condition
        folder.mkdir(parents=True)
        scan = ct_phantom(seed=seed, condition=condition)
        write_tiff(folder / "scan.tif", scan.image, scan.spacing)
        write_labels(folder, scan.labels, scan.organs, scan.spacing, prefix="truth_")
        volumes = scan.organ_volumes()
        steps.append(Step(
            f"micro-CT {condition}: synthetic scan and truth", "done",
            f"{scan.image.shape} voxels at {scan.spacing[0]} mm; truth liver {volumes['liver']:.0f} mm³, "
            f"heart {volumes['heart']:.0f} mm³",
            [str(folder / n) for n in ("scan.tif", "truth_labels.tif", "truth_volumes.csv")],
            time.perf_counter() - t0,
        ))
        log(f"  {steps[-1].name}: {steps[-1].detail}")
        if ct_model is None:
            steps.append(Step(f"micro-CT {condition}: MOSnet segmentation and organ volumes", "skipped", NO_CT_MODEL))
            log(f"  {steps[-1].name}: SKIPPED, {NO_CT_MODEL}")
        else:
            step, rows = _segment_ct(scan, folder, ct_model, log)
            steps.append(step)
            scores.extend(rows)
            log(f"  {step.name}: {step.detail}")
    return steps


def _us_steps(out: Path, seed: int, log: Callable[[str], None], us_models: dict[str, str] | None = None,
              us_scores: list[dict] | None = None) -> list[Step]:
    t0 = time.perf_counter()
    series_dir = out / "ultrasound" / "series_demo"
    series = ultrasound_series(seed=seed)
    write_us_series(series_dir, series)
    counts = {o: sum(1 for i in series.instances if i.organ == o) for o in series.labels}
    steps = [Step(
        "ultrasound: synthetic series and truth RoiSets", "done",
        f"{US_FRAMES} frames; truth instances " + ", ".join(f"{o} {n}" for o, n in counts.items()),
        [str(series_dir)], time.perf_counter() - t0,
    )]
    log(f"  {steps[-1].name}: {steps[-1].detail}")

    t0 = time.perf_counter()
    composite = read_composite(series_dir / "series_demo_montage.png")
    split_dir = out / "ultrasound" / "split"
    split_dir.mkdir()
    write_stack(split_dir / "frames.tif", composite.frames)
    same = bool(np.array_equal(composite.frames, series.frames))
    if not same:
        raise RuntimeError("the montage split does not reproduce the series' frames")
    steps.append(Step(
        "ultrasound: split the 5x7 montage into frames", "done",
        f"grid {composite.grid[0]}x{composite.grid[1]} detected; {len(composite.frames)} frames, "
        "identical to the 35-page TIFF", [str(split_dir / "frames.tif")], time.perf_counter() - t0,
    ))
    log(f"  {steps[-1].name}: {steps[-1].detail}")
    if not us_models:
        steps.append(Step("ultrasound: heart/liver/placenta U-Nets and RoiSet export", "skipped", NO_US_MODEL))
        log(f"  {steps[-1].name}: SKIPPED, {NO_US_MODEL}")
    else:
        steps.append(_segment_us(series, out / "ultrasound" / "predicted", us_models, us_scores))
        log(f"  {steps[-1].name}: {steps[-1].detail}")
    return steps


def _segment_us(series, folder: Path, models: dict[str, str], scores: list[dict]) -> Step:
    """Run the organ U-Nets on the series, write labels and RoiSets, score against the truth."""
    from ..inference.ultrasound import segment_frames
    from ..metrics import frame_counts, segmentation_scores
    from ..store.load import load_unets
    from .rois import write_fiji_files, write_rois

    t0 = time.perf_counter()
    folder.mkdir(parents=True)
    files = [str(path) for path in write_fiji_files(folder, series.frames, models)]
    for organ, model in load_unets(models, list(models)).items():
        _, labels = segment_frames(model, series.frames)
        write_stack(folder / f"{organ}_labels.tif", labels, compress=True)
        write_rois(folder / f"{organ}_RoiSet.zip", labels, organ, log=lambda m: None)
        files += [str(folder / f"{organ}_labels.tif"), str(folder / f"{organ}_RoiSet.zip")]
        truth = series.labels[organ] if organ in series.labels else np.zeros_like(labels)
        totals = frame_counts(labels, truth).sum(0)
        scores.append({"sample": "ultrasound series_demo", "organ": organ, **segmentation_scores(*totals)})
    detail = "; ".join(f"{r['organ']} Dice {r['dice']:.3f}, precision {r['precision']:.3f}, "
                       f"instance F1 {r['instance_f1']:.3f}" for r in scores)
    return Step("ultrasound: organ U-Nets and RoiSet export", "done", detail, files, time.perf_counter() - t0)


def _training_seeds(model: str) -> set[int]:
    """Seeds of the synthetic scans or series a model was trained or validated on (from its config)."""
    import re

    training = model_config(model).get("training", {})
    names = [*training.get("train_scans", []), *training.get("val_scans", []),
             *training.get("train_series", []), *training.get("val_series", [])]
    return {int(m.group(1)) for n in names if (m := re.search(r"(?:phantom|series)_(\d+)$", str(n)))}


def _seen_note(seed: int, ct_model: str | None, us_models: dict[str, str]) -> list[str]:
    """Which models saw this seed's sample during training: their scores here are not held-out scores."""
    seen = [m for m in ([ct_model] if ct_model else []) + list(us_models.values()) if seed in _training_seeds(m)]
    if not seen:
        return [f"No model here was trained on seed {seed}'s samples: these are held-out scores."]
    return [f"Seed {seed}'s samples were among the training data of {', '.join(seen)}, so their scores here "
            "are not held-out scores; docs/results-mosnet.md and docs/results-ultrasound.md give those "
            "(or rerun with a seed the models never saw, e.g. --seed 250)."]


def _write_report(out: Path, steps: list[Step], seed: int, scores: list[dict], us_scores: list[dict],
                  note: list[str] | None = None) -> None:
    report = {"seed": seed, "steps": [asdict(s) for s in steps], "scores": scores or None,
              "ultrasound_scores": us_scores or None, "training_note": " ".join(note or []) or None}
    if not scores and not us_scores:
        report["scores_note"] = "no scores: every segmentation step was skipped"
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# napari-mousesegment demo report", "", f"Seed {seed}. Synthetic data; see docs/synthetic-data.md.", "",
             "| step | status | detail |", "| --- | --- | --- |"]
    lines += [f"| {s.name} | {s.status} | {s.detail} |" for s in steps]
    lines += ["", "## Scores against the samples' truth", "", *(note or []), ""]
    if scores:
        lines += ["| sample | organ | DSC | JSC | HD95 (mm) | volume (mm³) | truth volume (mm³) | volume flag |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['sample']} | {r['organ']} | {r['dsc']:.3f} | {r['jsc']:.3f} | {r['hd95_mm']:.2f} | "
                  f"{r['volume_pred_mm3']:.0f} | {r['volume_truth_mm3']:.0f} | "
                  f"{volume_flag(r['organ'], r['volume_pred_mm3'])} |" for r in scores]
        lines += ["", ("Volume flag: the predicted volume against a plausible range for an adult mouse "
                       "(`low`, `high`, `absent`: found nowhere; see docs/mosnet.md).")]
    if us_scores:
        lines += ["", "| sample | organ | Dice | precision | recall | instance F1 |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['sample']} | {r['organ']} | {r['dice']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                  f"{r['instance_f1']:.3f} |" for r in us_scores]
    if not scores and not us_scores:
        lines += ["None yet: no segmentation ran, so there is nothing to score. "
                  "The skipped steps above say which models are missing."]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def run_demo(out: str | os.PathLike = "mousesegment-demo", *, overwrite: bool = False, seed: int = 0,
             ct_model: str | os.PathLike | None = SHIPPED_CT, us_models: dict[str, str] | None = None,
             log: Callable[[str], None] = print) -> list[Step]:
    """Run the headless demo into ``out`` and return its steps; writes report.md and report.json.

    ``ct_model`` (a MOSnet name or folder) segments and scores the micro-CT samples, ``us_models``
    (organ -> U-Net name or folder; None: the built-in ones) the ultrasound series. None for
    ``ct_model`` and an empty dict for ``us_models`` skip those steps.
    """
    out = Path(out)
    us_models = dict(SHIPPED_US) if us_models is None else us_models
    ct_model = None if ct_model is None else str(ct_model)
    models = ([ct_model] if ct_model is not None else []) + list(us_models.values())
    for model in models:
        model_config(model)  # fail before writing anything when a model is missing
    prepare_output(out, overwrite)
    scores: list[dict] = []
    log(f"napari-mousesegment demo -> {out.resolve()}")
    log("micro-CT:")
    steps = _ct_steps(out, seed, log, ct_model, scores)
    log("fetal ultrasound:")
    us_scores: list[dict] = []
    steps += _us_steps(out, seed, log, us_models, us_scores)
    _write_report(out, steps, seed, scores, us_scores, _seen_note(seed, ct_model, us_models) if models else None)
    skipped = [s for s in steps if s.status == "skipped"]
    log(f"report: {out / 'report.md'}  ({len(steps) - len(skipped)} steps done, {len(skipped)} skipped)")
    return steps
