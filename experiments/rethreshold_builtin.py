"""Choose the built-in ``mosnet-synthetic``'s label thresholds again, by the rule ``train mosnet``
now uses, and score them beside its recorded ones on the same test phantoms; weights unchanged.

The built-in was trained (experiments/ship_mosnet.py) before thresholds left room
(``training.thresholds.TOLERANCE``, 2026-12-03): each organ then took the threshold with the best
validation vote Dice. Here its training data are drawn again (same seeds, today's generator), the
thresholds are chosen on its own validation scans (``config.json``'s ``training.val_scans``), and
the test phantoms of ship_mosnet.py (other animals, each anatomy in turn) are predicted once with
their probabilities kept and scored at the recorded thresholds, at the new ones and at 0.5.
``--install`` writes the new thresholds and scores into the built-in's config.json and gives it
the next version (its predictions change, so a queued correction must name which ones it saw).
Once installed, "recorded" are the installed thresholds. Measured on 2026-12-03 and not installed:
the big organs gained, but the liver of single ellipsoid phantoms over-segmented
(docs/results-mosnet.md, "Its thresholds chosen again").

    python experiments/rethreshold_builtin.py --out /tmp/ship
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.heldout_anatomy import BIG  # noqa: E402
from experiments.ship_mosnet import evaluate, make_data, make_tests  # noqa: E402
from experiments.ship_weights import BUILTIN  # noqa: E402
from experiments.threshold_tolerance import capped_thresholds, labels_at, validation_slices  # noqa: E402
from napari_mousesegment.inference.ct import predict_volume  # noqa: E402
from napari_mousesegment.store.load import load_mosnet  # noqa: E402
from napari_mousesegment.training.thresholds import (TOLERANCE, _at_most, choose_thresholds,  # noqa: E402
                                                     validation_logits, vote_dice)

CPU = torch.device("cpu")
NAME = "mosnet-synthetic"


def install(folder: Path, thresholds: dict[str, float], result: dict, tolerance: float) -> None:
    """The new thresholds, their test scores and the next version, into ``folder``'s config.json."""
    meta = json.loads((folder / "config.json").read_text())
    new = result["new"]
    meta["thresholds"] = thresholds
    meta["training"]["settings"]["threshold_tolerance"] = tolerance
    meta["version"] = str(int(meta["version"]) + 1)
    scores = meta["test_scores"]
    scores.update({c: {o: round(v, 3) for o, v in new["dsc"][c].items()} for c in ("native", "contrast")})
    scores["big_organs_by_anatomy"] = new["big_by_anatomy"]
    scores["thresholds_chosen"] = (f"chosen again on {time.strftime('%Y-%m-%d')} on the validation scans, each organ the "
                            f"lowest within {tolerance:g} of its best vote Dice (experiments/rethreshold_builtin.py); "
                            "scored on test phantoms of that day's generator")
    recorded = result["recorded"]
    scores["recorded_thresholds_same_phantoms"] = {k: round(recorded[k], 3)
                                                   for k in ("native_big_mean", "contrast_big_mean")}
    scores.setdefault("baselines_note", "baselines scored on 2026-12-02 on that day's test phantoms")
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    load_mosnet(folder)  # still verifies and loads
    print(f"installed: {folder} version {meta['version']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder: the training and test phantoms")
    parser.add_argument("--atlas", type=Path, action="append", default=None,
                        help="label maps or a folder of them (default ../shared/data/rosenhain)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    parser.add_argument("--capped", type=float, nargs="*", default=[],
                        help="also score the capped rule of experiments/threshold_tolerance.py with these caps")
    parser.add_argument("--install", action="store_true", help="write the new thresholds into the built-in")
    args = parser.parse_args()
    args.atlas = args.atlas or [ROOT.parent / "shared" / "data" / "rosenhain"]
    folder = BUILTIN / NAME
    model, _, meta = load_mosnet(folder)
    organs = model.config.organs
    args.train = next(d["scans"] for d in meta["training"]["datasets"])
    args.test = 8
    args.voids = "muscle"  # the built-in (version 3) was trained and scored on phantoms drawn before 2026-12-05
    make_data(args)

    val = validation_slices(model, folder, args.out / "data")
    chosen, _, after = choose_thresholds(model, val, CPU, tolerance=args.tolerance)
    recorded = model.config.organ_thresholds()
    scored = _at_most(val, 512)  # the slices the thresholds were chosen on
    before = vote_dice(validation_logits(model, scored, CPU), scored, torch.logit(torch.tensor(recorded)))
    print(f"validation vote Dice: recorded thresholds {before:.3f}, new {after:.3f}")
    print("thresholds: " + " ".join(f"{o} {r:.3f}->{chosen[o]:.3f}" for o, r in zip(organs, recorded)), flush=True)

    tests = make_tests(args)
    probabilities = {(s.condition, s.seed): predict_volume(model, s.image, s.spacing, s.condition,
                                                           keep_probabilities=True).probabilities
                     for scans in tests.values() for s in scans}
    rules = {"recorded": recorded, "new": [chosen[o] for o in organs], "0.5": [0.5] * len(organs),
             **{f"capped {cap:g}": t for cap, t in capped_thresholds(model, val, args.capped).items()}}
    result: dict = {"tolerance": args.tolerance, "validation_vote_dice": {"recorded": before, "new": after},
                    "thresholds": {k: dict(zip(organs, v)) for k, v in rules.items()}}
    for name, thresholds in rules.items():
        result[name] = evaluate(tests, lambda s: labels_at(probabilities[(s.condition, s.seed)], thresholds))
        r = result[name]
        print(f"{name}: big organs ({', '.join(BIG)}) native {r['native_big_mean']:.3f}, contrast "
              f"{r['contrast_big_mean']:.3f}; by anatomy {r['big_by_anatomy']}")
        for condition, row in r["dsc"].items():
            print(f"    {condition}: " + " ".join(f"{o} {v:.3f}" for o, v in row.items()), flush=True)
    (args.out / "rethreshold.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.install:
        install(folder, chosen, result, args.tolerance)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
