"""Evaluation reports: summaries, Markdown tables and figures of the micro-CT and ultrasound scores,
and the comparison of several micro-CT reports (the paper's Table 4).

    micro-CT:    REPORT_DIR/per_scan.csv, summary.csv, summary.md, dsc.png
    ultrasound:  REPORT_DIR/per_frame.csv, per_series.csv, summary.csv, summary.json, summary.md
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

from ..metrics import write_rows


def summarise(rows: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Mean, SD and n per organ and metric, skipping NaN (HD95 with an empty side)."""
    summary: dict[str, dict[str, tuple[float, float, int]]] = {}
    for organ in dict.fromkeys(r["organ"] for r in rows):
        summary[organ] = {}
        for metric in ("dsc", "jsc", "hd95_mm"):
            values = [r[metric] for r in rows if r["organ"] == organ and not math.isnan(r[metric])]
            summary[organ][metric] = (float(np.mean(values)) if values else math.nan,
                                      float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values))
    return summary


def ct_summary_table(summary: dict) -> str:
    """Markdown table: metrics as rows, organs as columns, cells "mean (SD)"."""
    organs = list(summary)
    lines = ["| metric | " + " | ".join(organs) + " |", "| --- |" + " --- |" * len(organs)]
    for metric, label in (("dsc", "DSC ↑"), ("jsc", "JSC ↑"), ("hd95_mm", "HD95 (mm) ↓")):
        lines.append(f"| {label} | " + " | ".join(f"{summary[o][metric][0]:.3f} ({summary[o][metric][1]:.3f})"
                                                  for o in organs) + " |")
    return "\n".join(lines)


def write_summary(out: Path, summary: dict, title: str) -> None:
    """summary.csv, a Markdown table ("mean (SD)", organs as columns) and a DSC bar chart."""
    organs = list(summary)
    with open(out / "summary.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["organ", "metric", "mean", "sd", "n"])
        for organ in organs:
            for metric, (mean, sd, n) in summary[organ].items():
                writer.writerow([organ, metric, f"{mean:.4f}", f"{sd:.4f}", n])
    (out / "summary.md").write_text(f"# {title}\n\n{ct_summary_table(summary)}\n")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(organs), 3.5))
    ax.bar(organs, [summary[o]["dsc"][0] for o in organs], yerr=[summary[o]["dsc"][1] for o in organs], capsize=3)
    ax.set_ylim(0, 1)
    ax.set_ylabel("DSC, mean (SD)")
    ax.set_title(title, fontsize=9)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(out / "dsc.png", dpi=100)
    plt.close(fig)


def read_per_scan(report: str | os.PathLike) -> list[dict]:
    """Rows of an evaluation report's per_scan.csv, with numbers as floats."""
    path = Path(report) / "per_scan.csv"
    if not path.is_file():
        raise ValueError(f"{report}: not an evaluation report (no per_scan.csv)")
    with open(path, newline="") as fh:
        return [{k: (v if k in ("scan", "organ") else float(v)) for k, v in row.items()} for row in csv.DictReader(fh)]


def compare_reports(reports: dict[str, str | os.PathLike], reference: str, metric: str = "dsc") -> str:
    """A Markdown table (Table 4 of the paper): mean metric per organ for each model, and the
    paired Wilcoxon signed-rank p-value of each model against ``reference`` over the same scans."""
    from scipy.stats import wilcoxon

    if reference not in reports:
        raise ValueError(f"reference {reference!r} is not among the reports {sorted(reports)}")
    tables = {name: {(r["scan"], r["organ"]): r[metric] for r in read_per_scan(path)} for name, path in reports.items()}
    organs = list(dict.fromkeys(organ for _, organ in tables[reference]))
    lines = ["| model | " + " | ".join(organs) + " | mean |", "| --- |" + " --- |" * (len(organs) + 1)]
    for name, table in tables.items():
        cells, pooled_a, pooled_b = [], [], []
        for organ in organs:
            keys = [k for k in tables[reference] if k[1] == organ and k in table]
            a = [table[k] for k in keys]
            b = [tables[reference][k] for k in keys]
            pooled_a += a
            pooled_b += b
            cell = f"{np.mean(a):.3f}" if a else "n/a"
            if name != reference and len(a) >= 2 and any(x != y for x, y in zip(a, b)):
                cell += f" (p={wilcoxon(a, b).pvalue:.2g})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(pooled_a):.3f} |")
    lines.append("")
    lines.append(f"{metric.upper()} per organ over the same held-out scans; p: paired Wilcoxon signed-rank "
                 f"test against {reference}, per organ over scans.")
    return "\n".join(lines) + "\n"


def us_summary_table(summary: dict[str, dict[str, float]]) -> str:
    """Pixel and instance scores per organ, over all held-out frames, as Markdown."""
    lines = ["| organ | series | Dice | precision | recall | IoU | inst. precision | inst. recall | inst. F1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for organ, s in summary.items():
        lines.append(f"| {organ} | {s['series']} | {s['dice']:.3f} | {s['precision']:.3f} | {s['recall']:.3f} | "
                     f"{s['iou']:.3f} | {s['instance_precision']:.3f} | {s['instance_recall']:.3f} | "
                     f"{s['instance_f1']:.3f} |")
    return "\n".join(lines) + "\n"


def write_us_report(out: Path, frame_rows: list[dict], series_rows: list[dict],
                    summary: dict[str, dict[str, float]]) -> None:
    """per_frame.csv, per_series.csv, summary.csv, summary.json and the Markdown table."""
    write_rows(out / "per_frame.csv", frame_rows)
    write_rows(out / "per_series.csv", series_rows)
    write_rows(out / "summary.csv", [{"organ": o, **s} for o, s in summary.items()])
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(us_summary_table(summary))
