"""What scales, and by how much: Dask batch prediction and DDP training with 1 and 2 CPU workers.

Usage: python experiments/scaleout.py WORK [--scans 8] [--device cpu]

1. `predict ct` over N native-size phantoms (200 x 110 x 150): in one process, and on a local
   Dask cluster of 1 and 2 workers (the cores shared out between them).
2. `train mosnet` for 2 epochs under torchrun with 1 and 2 processes (gloo on the CPU,
   --batch-size 8 per process): training slices per second from history.csv.

Prints a Markdown table for docs/scale-out.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path


def _predict(work: Path, scans: list[Path], extra: list[str], label: str) -> float:
    out = work / f"pred-{label}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "napari_mousesegment.cli", "predict", "ct", *map(str, scans), "--model",
                    "mosnet-synthetic", "--condition", "native", "--out", str(out), *extra], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _train(work: Path, data: Path, processes: int) -> float:
    """Seconds of the second epoch (training and rank 0's validation)."""
    out = work / f"train-{processes}"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                    "-m", "napari_mousesegment.cli", "train", "mosnet", "--data", str(data), "--out", str(out),
                    "--epochs", "2", "--width", "8", "--batch-size", "8", "--slice-stride", "2", "--device", "cpu"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))})
    with open(out / "history.csv") as rows:
        return float(list(csv.DictReader(rows))[-1]["seconds"])  # the second epoch: warmed up


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("--scans", type=int, default=8)
    args = parser.parse_args()
    from napari_mousesegment.data.ct_dataset import write_ct_case
    from napari_mousesegment.data.phantom_ct import ct_phantom
    from napari_mousesegment.io.tiff import write_tiff

    work = args.work
    (work / "scans").mkdir(parents=True, exist_ok=True)
    scans = []
    for seed in range(args.scans):
        path = work / "scans" / f"scan{seed}.tif"
        if not path.exists():
            scan = ct_phantom(400 + seed, "native")
            write_tiff(path, scan.image, scan.spacing)
            write_ct_case(work / "data", f"n{seed}", scan)
        scans.append(path)
    rows = [("predict ct, one process (2 torch threads)", _predict(work, scans, [], "serial"))]
    for workers in (1, 2):
        rows.append((f"predict ct --workers {workers}", _predict(work, scans, ["--workers", str(workers),
                                                                                "--overwrite"], f"w{workers}")))
    print(f"| {args.scans} native-size scans | seconds | scans/min |")
    print("| --- | --- | --- |")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.1f} | {60 * args.scans / seconds:.1f} |")
    print()
    print(f"| train mosnet on {args.scans} scans, width 8 | seconds per epoch |")
    print("| --- | --- |")
    for processes in (1, 2):
        print(f"| torchrun --nproc-per-node {processes} (gloo, --batch-size 8 each) | {_train(work, work / 'data', processes):.1f} |")


if __name__ == "__main__":
    main()
