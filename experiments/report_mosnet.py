"""Write docs/results-mosnet.md and its figures from the outputs of experiments/mosnet_synthetic.sh.

Usage: python experiments/report_mosnet.py WORKDIR
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
from pathlib import Path

import torch

from napari_mousesegment.jobs.reports import ct_summary_table as summary_table
from napari_mousesegment.jobs.reports import read_per_scan, summarise

DOCS = Path(__file__).resolve().parents[1] / "docs"
TARGET_ORGANS = ("heart", "lungs", "liver", "kidneys")


def _table(report: Path) -> str:
    return summary_table(summarise(read_per_scan(report)))


def _model_line(model: Path) -> str:
    meta = json.loads((model / "config.json").read_text())
    history = (model / "history.csv").read_text().strip().splitlines()
    t = meta["training"]
    return (f"width {meta['width']}, {t['parameters'] / 1e6:.2f} M parameters, slices {meta['image_size']} px, "
            f"{len(history) - 1} epochs run (best: epoch {meta['metrics']['epoch']}, mean validation Dice "
            f"{meta['metrics']['val_dice_mean']:.3f}), {len(t['train_scans'])} training / {len(t['val_scans'])} "
            "validation scans")


def _epoch_seconds(models: list[Path]) -> str:
    """The range of seconds per epoch over the runs' histories."""
    seconds = []
    for model in models:
        rows = (model / "history.csv").read_text().strip().splitlines()
        column = rows[0].split(",").index("seconds")
        seconds += [float(row.split(",")[column]) for row in rows[1:]]
    return f"{min(seconds):.0f}-{max(seconds):.0f} s per epoch" if seconds else "no epochs"


def main(work: Path) -> None:
    images = DOCS / "images"
    models = [m for m in sorted((work / "models").iterdir()) if (m / "history.csv").exists()]
    out = ["# MOSnet: measured results", "",
           "Produced by `bash experiments/mosnet_synthetic.sh WORK` (then "
           "`python experiments/report_mosnet.py WORK`) on "
           f"a 2-core {platform.machine()} CPU without GPU (torch {torch.__version__}), two runs side by side "
           f"with OMP_NUM_THREADS=1 each, {_epoch_seconds(models)}. "
           "Training data: 10 native phantoms (seeds 0-9) and "
           "10 contrast phantoms (seeds 100-109); held-out test phantoms: native seeds 200-207, contrast seeds "
           "300-307. "
           "Scores are 3D, on the test scans' own grids, without clean-up. HD95 in mm.", ""]
    for joint in sorted((work / "models").glob("full*")):
        if not (joint / "config.json").exists():
            continue
        name = joint.name
        width = json.loads((joint / "config.json").read_text())["width"]
        shutil.copy(joint / "curves.png", images / f"mosnet_joint_{name}_curves.png")
        out += [f"## Joint training, full model, width {width} (`{name}`)", "", _model_line(joint), "",
                f"![Training curves](images/mosnet_joint_{name}_curves.png)", ""]
        for condition in ("native", "contrast"):
            report = work / "reports" / name / condition
            if (report / "per_scan.csv").exists():
                summary = summarise(read_per_scan(report))
                ok = all(summary[o]["dsc"][0] >= 0.85 for o in TARGET_ORGANS if o in summary)
                n = len({row["scan"] for row in read_per_scan(report)})
                out += [f"### Held-out {condition} phantoms (n = {n})", "", _table(report), "",
                        f"Target DSC ≥ 0.85 on {', '.join(TARGET_ORGANS)}: **{'met' if ok else 'not met'}**.", ""]
    partial = work / "models" / "partial"
    if (work / "reports" / "partial" / "native" / "per_scan.csv").exists():
        shutil.copy(partial / "curves.png", images / "mosnet_partial_curves.png")
        rows = {}
        labels = {"full": "all organs annotated",
                  "partial": "kidneys and bladder unannotated in the native set",
                  "partial_no_borrow": "the same, with every organ read under the native code (`--no-borrow`)"}
        for name in labels:
            report = work / "reports" / name / "native"
            if (report / "per_scan.csv").exists():
                rows[name] = summarise(read_per_scan(report))
        lines = ["| model | kidneys DSC | bladder DSC | heart DSC | liver DSC |", "| --- | --- | --- | --- | --- |"]
        for name, summary in rows.items():
            label = labels[name]
            lines.append(f"| {label} | " + " | ".join(f"{summary[o]['dsc'][0]:.3f} ({summary[o]['dsc'][1]:.3f})"
                                                      for o in ("kidneys", "bladder", "heart", "liver")) + " |")
        out += ["## Partial labels (the paper's Table 3 experiment)", "",
                "The native training set has no kidney or bladder labels; the contrast set has them. Scores on "
                "held-out native phantoms:", "", _model_line(partial), "", *lines, "",
                "![Training curves, partial labels](images/mosnet_partial_curves.png)", ""]
    variants = [work / "models" / f"ablation_{v}" for v in ("bm", "bm_cm", "bm_rb")]
    for condition in ("native", "contrast"):
        table = work / "reports" / f"ablation_{condition}.md"
        if table.exists():
            out += [f"## Ablation on held-out {condition} phantoms (the paper's Table 4)", ""]
            if condition == "native":
                out += [("full is the joint run above; the other variants were trained with its data, settings "
                         "and seed:"), "", *(f"- `{m.name}`: {_model_line(m)}" for m in variants if m.exists()), ""]
            out += [table.read_text(), ""]
    notes = Path(__file__).with_name("mosnet_notes.md")
    if notes.exists():
        out += [notes.read_text()]
    (DOCS / "results-mosnet.md").write_text("\n".join(out) + "\n")
    print(f"wrote {DOCS / 'results-mosnet.md'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
