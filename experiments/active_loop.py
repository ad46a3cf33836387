"""Do corrections improve the model? The active-learning loop on a shifted synthetic domain.

The shipped heart U-Net meets a 'new scanner' (lower gain, raised floor; see tests/active). For
each number of corrected frames, a fresh queue gets that many frames corrected from the truth,
one retraining round runs on the CPU, and the new version is scored on frames of *other* series
(never corrected). Writes docs/images/active_loop.png and prints a Markdown table.

Usage: python experiments/active_loop.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ["MOUSESEGMENT_HOME"] = tempfile.mkdtemp(prefix="mousesegment-home-")

from napari_mousesegment.active.queue import Queue  # noqa: E402
from napari_mousesegment.active.worker import pixel_dice, run_rounds  # noqa: E402
from napari_mousesegment.data.phantom_us import ultrasound_series  # noqa: E402
from napari_mousesegment.models.store import load_unet  # noqa: E402
from napari_mousesegment.training.finetune import FineTuneSettings  # noqa: E402
from napari_mousesegment.us_jobs import segment_frames  # noqa: E402

BASE = "unet-heart-synthetic"
OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "active_loop.png"


def new_scanner(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames.astype(float) * 0.5 + 70, 0, 255).astype(np.uint8) * (frames > 0)).astype(np.uint8)


def main() -> None:
    series = ultrasound_series(seed=270)
    frames, truth = new_scanner(series.frames), series.labels["heart"]
    test = [ultrasound_series(seed=s) for s in (280, 281, 282)]
    test_f = np.concatenate([new_scanner(t.frames) for t in test])
    test_m = np.concatenate([t.labels["heart"] for t in test])
    weak, _, _ = load_unet(BASE)
    _, pred = segment_frames(weak, frames)
    with_hearts = [k for k in range(len(truth)) if truth[k].any()]
    rows = [(0, pixel_dice(weak, test_f, test_m), float("nan"), 0.0, "shipped model")]
    for n in (2, 4, 8, 16):
        os.environ["MOUSESEGMENT_HOME"] = tempfile.mkdtemp(prefix="mousesegment-home-")
        corrected = pred.copy()
        corrected[with_hearts[:n]] = truth[with_hearts[:n]]
        queue = Queue(tempfile.mkdtemp())
        queue.add(frames, corrected, "ultrasound", organ="heart", model=BASE, prediction=pred)
        t0 = time.monotonic()
        [result] = run_rounds(queue.root, settings=FineTuneSettings(epochs=15), log=lambda m: None)
        seconds = time.monotonic() - t0
        tuned, _, _ = load_unet(f"{BASE}-lab")
        rows.append((n, pixel_dice(tuned, test_f, test_m), result["dice_after"], seconds,
                     "promoted" if result["promoted"] else "not promoted"))
    print("| corrected frames | Dice on 105 frames of 3 other series | held-out corrected frames | round (s) | |")
    print("| --- | --- | --- | --- | --- |")
    for n, dice, held, seconds, verdict in rows:
        print(f"| {n} | {dice:.3f} | {held:.3f} | {seconds:.0f} | {verdict} |")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r[0] for r in rows], [r[1] for r in rows], "o-")
    ax.set_xlabel("frames corrected (one round each)")
    ax.set_ylabel("heart Dice, 3 uncorrected series")
    ax.set_ylim(0, 1)
    ax.set_title("shipped heart U-Net on a new scanner")
    fig.tight_layout()
    fig.savefig(OUT, dpi=90)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
