"""Corrections on anatomy never trained on (issue 17): how far one correction round takes a MOSnet
on scans drawn from a label map it never saw.

Starts from a model of an experiments/heldout_anatomy.py run (``WORK/models/NAME``) and that run's
native test phantoms (``WORK/test/native``, drawn from the held-out map). For each count of
corrected slices, it corrects evenly spaced axial slices of the first test phantom from its truth,
queues the scan with the model's prediction, runs one round through the worker (lr 1e-4,
replaying ``WORK/data/native``, as ``worker --replay`` does), and scores the new version on the
other native test phantoms, which nobody corrected. The baseline is the model before any round,
scored on the same phantoms. Each round starts from the model itself, not from the last round::

    python experiments/heldout_rounds.py --work /tmp/ho24 --model mosnet

A multi-planar model (``--plane axial+coronal+sagittal``) learns the corrections on its axial
plane and is scored with its planes fused, as ``predict ct`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.heldout_anatomy import BIG, score

from napari_mousesegment.active.queue import Queue
from napari_mousesegment.active.worker import run_rounds
from napari_mousesegment.data.ct_dataset import load_case, read_ct_dataset
from napari_mousesegment.inference.ct import predict_volume
from napari_mousesegment.store.load import load_mosnet
from napari_mousesegment.store import versions
from napari_mousesegment.training.finetune import FineTuneSettings

ROUNDS = ((12, 15), (24, 30), (48, 60))  # corrected slices, epochs (as experiments/active_loop.ct_main)


def test_scans(work: Path) -> list[SimpleNamespace]:
    """The native test phantoms of a heldout_anatomy run, labels numbered as CT_ORGANS."""
    dataset = read_ct_dataset(work / "test" / "native")
    scans = []
    for case in dataset.cases:
        image, labels, spacing = load_case(dataset, case)
        scans.append(SimpleNamespace(image=image, labels=labels, spacing=spacing, condition="native", name=case))
    return scans


def big_mean(table: dict[str, dict[str, float]]) -> float:
    return float(np.mean([table["native"][o] for o in BIG]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="the work folder of a heldout_anatomy run")
    parser.add_argument("--model", default="mosnet", help="the model in WORK/models to start from (mosnet)")
    args = parser.parse_args()
    folder = args.work / "models" / args.model
    name = versions.lab_name(str(folder))  # where each round publishes its version
    scans = test_scans(args.work)
    if len(scans) < 2:
        raise SystemExit(f"{args.work}/test/native: needs two test phantoms or more (one to correct, others to score)")
    corrected_scan, others = scans[0], scans[1:]

    def table(model) -> dict[str, dict[str, float]]:
        return score({"native": others}, lambda s: predict_volume(model, s.image, s.spacing, "native").labels)

    base, config, _ = load_mosnet(folder)
    before = table(base)
    pred = predict_volume(base, corrected_scan.image, corrected_scan.spacing, "native").labels
    truth = corrected_scan.labels
    body = np.nonzero(truth.reshape(len(truth), -1).any(1))[0]
    rows = [{"slices": 0, "epochs": 0, "native": before["native"], "big_mean": big_mean(before)}]
    print(f"{folder} ({config.plane}): before any round, big organs {big_mean(before):.3f} on "
          f"{len(others)} other phantoms", flush=True)
    for n, epochs in ROUNDS:
        os.environ["MOUSESEGMENT_HOME"] = tempfile.mkdtemp(prefix="mousesegment-home-")
        touched = body[np.linspace(0, len(body) - 1, n).astype(int)]
        corrected = pred.copy()
        corrected[touched] = truth[touched]
        queue = Queue(tempfile.mkdtemp())
        queue.add(corrected_scan.image, corrected, "ct", condition="native", model=str(folder), prediction=pred,
                  spacing=corrected_scan.spacing)
        t0 = time.monotonic()
        [r] = run_rounds(queue.root, replay=str(args.work / "data" / "native"),
                         settings=FineTuneSettings(epochs=epochs, lr=1e-4), log=lambda m: None)
        seconds = time.monotonic() - t0
        if r.failed:
            raise SystemExit(f"round on {n} slices failed: {r.error}")
        if r.version is not None and not r.promoted:  # score the round's own version, promoted or not
            versions.promote(name, r.version)
        after = table(load_mosnet(name)[0])
        rows.append({"slices": n, "epochs": epochs, "native": after["native"], "big_mean": big_mean(after),
                     "held_out_before": r.dice_before, "held_out_after": r.dice_after, "promoted": r.promoted,
                     "seconds": seconds})
        organs = ", ".join(f"{o} {after['native'][o]:.2f}" for o in BIG)
        print(f"{n} slices, {epochs} epochs: big organs {big_mean(after):.3f} ({organs}); held-out slices "
              f"{r.dice_before} -> {r.dice_after}, promoted {r.promoted}, {seconds:.0f} s", flush=True)
    out = args.work / f"heldout_rounds_{args.model}.json"
    out.write_text(json.dumps({"model": str(folder), "plane": config.plane, "rounds": rows}, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
