"""Do corrections improve the model? The active-learning loop on a shifted synthetic domain.

The shipped heart U-Net meets a 'new scanner' (lower gain, raised floor; see tests/active). For
each number of corrected frames, a fresh queue gets that many frames corrected from the truth,
one retraining round runs on the CPU, and the new version is scored on frames of *other* series
(never corrected). Writes docs/images/active_loop.png and prints a Markdown table.

Then the same for micro-CT with mosnet-synthetic on another scanner's HU calibration.

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
from napari_mousesegment.inference.ultrasound import segment_frames  # noqa: E402
from napari_mousesegment.store.load import load_unet  # noqa: E402
from napari_mousesegment.training.finetune import FineTuneSettings  # noqa: E402

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
        rows.append((n, pixel_dice(tuned, test_f, test_m), result.dice_after, seconds,
                     "promoted" if result.promoted else "not promoted"))
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


def ct_main() -> None:
    """The same for micro-CT: mosnet-synthetic on another scanner's calibration (HU x 0.8 - 150)."""
    from napari_mousesegment.data.phantom_ct import ct_phantom
    from napari_mousesegment.inference.ct import predict_volume
    from napari_mousesegment.metrics import organ_scores
    from napari_mousesegment.store.load import load_mosnet

    def shifted(seed):
        scan = ct_phantom(seed=seed, condition="native")
        return scan, scan.image.astype(np.float32) * 0.8 - 150

    def large_organ_dsc(model, seeds=(251, 252)):
        values = []
        for seed in seeds:
            scan, image = shifted(seed)
            pred = predict_volume(model, image, scan.spacing, "native")
            rows = organ_scores(pred.labels, scan.labels, pred.organs, scan.organs, scan.spacing)
            values += [r["dsc"] for r in rows if r["organ"] in ("heart", "lungs", "liver", "kidneys")]
        return float(np.mean(values))

    scan, image = shifted(250)
    weak, _, _ = load_mosnet("mosnet-synthetic")
    pred = predict_volume(weak, image, scan.spacing, "native")
    truth = np.zeros_like(pred.labels)
    for organ, value in pred.organs.items():
        if organ in scan.organs:
            truth[scan.labels == scan.organs[organ]] = value
    body = np.nonzero(truth.reshape(len(truth), -1).any(1))[0]
    print("| corrected slices | epochs | mean DSC heart/lungs/liver/kidneys, 2 other phantoms | held-out slices "
          "before -> after | round (s) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| 0 | - | {large_organ_dsc(weak):.3f} | - | - |")
    for n, epochs in ((12, 15), (24, 30), (48, 60)):
        os.environ["MOUSESEGMENT_HOME"] = tempfile.mkdtemp(prefix="mousesegment-home-")
        touched = body[np.linspace(0, len(body) - 1, n).astype(int)]
        corrected = pred.labels.copy()
        corrected[touched] = truth[touched]
        queue = Queue(tempfile.mkdtemp())
        queue.add(image, corrected, "ct", condition="native", model="mosnet-synthetic", prediction=pred.labels,
                  spacing=scan.spacing)
        t0 = time.monotonic()
        [r] = run_rounds(queue.root, settings=FineTuneSettings(epochs=epochs, lr=1e-4), log=lambda m: None)
        seconds = time.monotonic() - t0
        tuned, _, _ = load_mosnet("mosnet-synthetic-lab")
        print(f"| {n} | {epochs} | {large_organ_dsc(tuned):.3f} | {r.dice_before:.3f} -> {r.dice_after:.3f} "
              f"| {seconds:.0f} |")


if __name__ == "__main__":
    main()
    ct_main()
