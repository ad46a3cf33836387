"""Figures of a benchmark run: python benchmarks/plot.py docs/benchmarks.json docs/images/benchmark.png"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt


def plot(results: dict, out: Path) -> None:
    """Two panels: the CT predictor's batch-size trade-off, and its cost at 1x/2x/4x the slices."""
    ct, scaling = results["ct"], results["scaling"]
    sizes = sorted(int(k[5:-8]) for k in ct if k.startswith("batch") and k.endswith("_seconds"))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, xs, seconds, memory, xlabel, title in (
        (axes[0], sizes, [ct[f"batch{s}_seconds"] for s in sizes], [ct[f"batch{s}_extra_rss_mb"] for s in sizes],
         "--batch-size (slices per network pass)", f"one native scan ({ct['scan_shape']})"),
        (axes[1], [scaling[f"x{f}_slices"] for f in (1, 2, 4)], [scaling[f"x{f}_seconds"] for f in (1, 2, 4)],
         [scaling[f"x{f}_extra_rss_mb"] for f in (1, 2, 4)], "slices in the scan", "1x, 2x, 4x the slices"),
    ):
        ax.plot(xs, seconds, "o-", color="tab:blue")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds", color="tab:blue")
        ax.set_ylim(0, max(seconds) * 1.15)
        twin = ax.twinx()
        twin.plot(xs, memory, "s--", color="tab:red")
        twin.set_ylabel("extra peak memory (MB)", color="tab:red")
        twin.set_ylim(0, max(memory) * 1.15)
        ax.set_title(title)
    axes[0].set_xscale("log", base=2)
    machine = results["machine"]
    fig.suptitle(f"MOSnet prediction on {machine['cpu']} ({machine['torch_threads']} threads, {machine['device']})",
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}")
