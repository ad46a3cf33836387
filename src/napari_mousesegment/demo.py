"""The main job, headless, on the synthetic samples: what ``mousesegment demo`` runs.

Each step writes real files or is reported as skipped with the reason; nothing is faked. Steps
that need trained models (MOSnet, the ultrasound U-Nets) are skipped until those models exist.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from .data.datasets import write_us_series
from .data.phantom_ct import CONDITIONS, ct_phantom
from .data.phantom_us import ultrasound_series
from .io.composites import read_composite
from .io.volumes import write_tiff
from .organs import US_FRAMES

NO_CT_MODEL = "no trained MOSnet model is available yet (MOSnet and model-store issues)"
NO_US_MODEL = "no trained ultrasound U-Nets are available yet (fetal-ultrasound and model-store issues)"


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


def _volumes_csv(path: Path, volumes: dict[str, float], voxel_mm3: float) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["organ", "voxels", "mm3"])
        for organ, mm3 in volumes.items():
            writer.writerow([organ, round(mm3 / voxel_mm3), f"{mm3:.2f}"])


def _ct_steps(out: Path, seed: int, log: Callable[[str], None]) -> list[Step]:
    steps = []
    for condition in CONDITIONS:
        t0 = time.perf_counter()
        folder = out / "ct" / condition
        folder.mkdir(parents=True)
        scan = ct_phantom(seed=seed, condition=condition)
        write_tiff(folder / "scan.tif", scan.image, scan.spacing)
        write_tiff(folder / "truth_labels.tif", scan.labels, scan.spacing)
        (folder / "truth_labels.json").write_text(json.dumps({"organs": scan.organs}, indent=2) + "\n")
        volumes = scan.organ_volumes()
        _volumes_csv(folder / "truth_volumes.csv", volumes, float(np.prod(scan.spacing)))
        steps.append(Step(
            f"micro-CT {condition}: synthetic scan and truth", "done",
            f"{scan.image.shape} voxels at {scan.spacing[0]} mm; truth liver {volumes['liver']:.0f} mm³, "
            f"heart {volumes['heart']:.0f} mm³",
            [str(folder / n) for n in ("scan.tif", "truth_labels.tif", "truth_volumes.csv")],
            time.perf_counter() - t0,
        ))
        log(f"  {steps[-1].name}: {steps[-1].detail}")
        steps.append(Step(f"micro-CT {condition}: MOSnet segmentation and organ volumes", "skipped", NO_CT_MODEL))
        log(f"  {steps[-1].name}: SKIPPED, {NO_CT_MODEL}")
    return steps


def _us_steps(out: Path, seed: int, log: Callable[[str], None]) -> list[Step]:
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
    tifffile.imwrite(split_dir / "frames.tif", composite.frames, imagej=True, metadata={"axes": "ZYX"})
    same = bool(np.array_equal(composite.frames, series.frames))
    if not same:
        raise RuntimeError("the montage split does not reproduce the series' frames")
    steps.append(Step(
        "ultrasound: split the 5x7 montage into frames", "done",
        f"grid {composite.grid[0]}x{composite.grid[1]} detected; {len(composite.frames)} frames, "
        "identical to the 35-page TIFF", [str(split_dir / "frames.tif")], time.perf_counter() - t0,
    ))
    log(f"  {steps[-1].name}: {steps[-1].detail}")
    steps.append(Step("ultrasound: heart/liver/placenta U-Nets and RoiSet export", "skipped", NO_US_MODEL))
    log(f"  {steps[-1].name}: SKIPPED, {NO_US_MODEL}")
    return steps


def _write_report(out: Path, steps: list[Step], seed: int) -> None:
    report = {"seed": seed, "steps": [asdict(s) for s in steps],
              "scores": None, "scores_note": "no scores: every segmentation step was skipped"}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# napari-mousesegment demo report", "", f"Seed {seed}. Synthetic data; see docs/synthetic-data.md.", "",
             "| step | status | detail |", "| --- | --- | --- |"]
    lines += [f"| {s.name} | {s.status} | {s.detail} |" for s in steps]
    lines += ["", "## Scores against the samples' truth", "",
              "None yet: no segmentation ran, so there is nothing to score. "
              "The skipped steps above say which models are missing."]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def run_demo(out: str | os.PathLike = "mousesegment-demo", *, overwrite: bool = False, seed: int = 0,
             log: Callable[[str], None] = print) -> list[Step]:
    """Run the headless demo into ``out`` and return its steps; writes report.md and report.json."""
    out = Path(out)
    prepare_output(out, overwrite)
    log(f"napari-mousesegment demo -> {out.resolve()}")
    log("micro-CT:")
    steps = _ct_steps(out, seed, log)
    log("fetal ultrasound:")
    steps += _us_steps(out, seed, log)
    _write_report(out, steps, seed)
    skipped = [s for s in steps if s.status == "skipped"]
    log(f"report: {out / 'report.md'}  ({len(steps) - len(skipped)} steps done, {len(skipped)} skipped)")
    return steps
