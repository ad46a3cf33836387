"""How a trained MOSnet's label thresholds, chosen on its validation scans by each rule, score on
phantoms drawn from a label map it never saw.

The thresholds are chosen again from the model's own validation scans (``config.json``'s
``training.val_scans``, read from the data it was trained on) with each ``--tolerance`` (0 is the
best-Dice rule of models trained before 2026-12-03; see ``training.thresholds.TOLERANCE``). The test
phantoms are those of ``heldout_anatomy.py`` (same seeds), predicted once with their probabilities
kept; each rule's label vote is then scored on them. 0.5 for every organ and the model's own
thresholds (``config.json``) are scored beside them.
``--capped T`` scores a rule that was tried and not taken: after the best-Dice ascent, each organ in
turn takes its lowest threshold that keeps the mean validation vote Dice within T of that peak (a
cap on the total given up, where the tolerance rule gives up to its tolerance at every step).
With ``--ellipsoids``, ellipsoid phantoms of the same seeds (anatomy the model did learn from) are
scored too, for what each rule costs where the validation scans are a fair sample.

    python experiments/threshold_tolerance.py --model /tmp/hof/models/bm_fill --data /tmp/hof/data \\
        --hold-out mouse_b_organs --tolerance 0.002 --ellipsoids
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.heldout_anatomy import make_tests, score, summary  # noqa: E402
from napari_mousesegment.data.ct_dataset import read_ct_dataset  # noqa: E402
from experiments.heldout_anatomy import TEST_SEEDS  # noqa: E402
from napari_mousesegment.data.phantom_ct import CONDITIONS, DEFAULT_SHAPE, VOIDS, ct_phantom  # noqa: E402
from napari_mousesegment.inference.ct import predict_volume, vote  # noqa: E402
from napari_mousesegment.store.load import load_mosnet  # noqa: E402
from napari_mousesegment.training.slices import build_slices  # noqa: E402
from napari_mousesegment.training.thresholds import (OFFSETS, VoteTrials, _as_thresholds, _ascend,  # noqa: E402
                                                     _at_most, choose_thresholds, validation_logits)

CPU = torch.device("cpu")


def validation_slices(model, folder: Path, data: Path):
    """The slices of the scans the model was validated on, as ``train mosnet`` built them."""
    config = json.loads((folder / "config.json").read_text())
    val_ids = set(config["training"]["val_scans"])
    datasets = [read_ct_dataset(data / c) for c in CONDITIONS]
    cases = {str(d.root): [c for c in d.cases if f"{d.name}/{c}" in val_ids] for d in datasets}
    return build_slices(datasets, model.config, cases, config["training"]["settings"]["slice_stride"])


def capped_thresholds(model, val, caps: list[float], passes: int = 2) -> dict[float, list[float]]:
    """The capped rule's thresholds for each cap (see the module docstring), on at most 512
    validation slices as train's."""
    val = _at_most(val, 512)
    logits = validation_logits(model, val, CPU)
    trials = VoteTrials(logits, val)
    best, _, peak = _ascend(logits, val, torch.zeros(logits.shape[1]), range(logits.shape[1]), passes)
    chosen = {}
    for cap in caps:
        offsets = best.clone()
        for _ in range(passes):
            for i in range(logits.shape[1]):
                scores = trials.scores(offsets, i).tolist()
                offsets[i] = float(OFFSETS[next(t for t, s in enumerate(scores) if s >= peak - cap)])
        by_organ = _as_thresholds(model, offsets)
        chosen[cap] = [by_organ[o] for o in model.config.organs]
    return chosen


def labels_at(probabilities: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """The label vote of kept probabilities (M, z, y, x) at per-organ thresholds."""
    p = torch.from_numpy(probabilities.astype(np.float32)).clamp(1e-4, 1 - 1e-4)
    offsets = torch.logit(torch.tensor(thresholds))
    return vote(torch.logit(p).movedim(1, 0), offsets).numpy().astype(np.uint8)  # (z, M, y, x) -> (z, y, x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the folder holding native/ and contrast/")
    parser.add_argument("--hold-out", required=True, help="the label map the test phantoms are drawn from")
    parser.add_argument("--atlas", type=Path, nargs="+", default=[Path("../shared/data/rosenhain")])
    parser.add_argument("--tolerance", type=float, nargs="+", default=[0.0, 0.002])
    parser.add_argument("--capped", type=float, nargs="*", default=[], help="caps of the capped rule to score")
    parser.add_argument("--test", type=int, default=4, help="test phantoms per condition")
    parser.add_argument("--ellipsoids", action="store_true", help="also score ellipsoid phantoms of the same seeds")
    parser.add_argument("--voids", choices=VOIDS, default="viscera",
                        help="what fills the voids of the map's test phantoms (`synth ct --voids`; muscle: as "
                             "drawn before 2026-12-05)")
    args = parser.parse_args()

    model, _, _ = load_mosnet(args.model)
    val = validation_slices(model, args.model, args.data)
    rules = {"0.5": [0.5] * len(model.config.organs), "its own": model.config.organ_thresholds()}
    for tolerance in args.tolerance:
        chosen, _, after = choose_thresholds(model, val, CPU, tolerance=tolerance)
        rules[f"tolerance {tolerance:g}"] = [chosen[o] for o in model.config.organs]
        print(f"tolerance {tolerance:g}: validation vote Dice {after:.3f}, thresholds "
              + " ".join(f"{o} {chosen[o]:.3f}" for o in model.config.organs), flush=True)
    rules.update({f"capped {cap:g}": t for cap, t in capped_thresholds(model, val, args.capped).items()})

    sets = {args.hold_out: make_tests(argparse.Namespace(atlas=args.atlas, hold_out=args.hold_out,
                                                         out=args.model / "tolerance_test", shape=DEFAULT_SHAPE,
                                                         test=args.test, voids=args.voids))}
    if args.ellipsoids:
        sets["ellipsoids"] = {c: [ct_phantom(TEST_SEEDS[c] + k, c, shape=DEFAULT_SHAPE) for k in range(args.test)]
                              for c in CONDITIONS}
    results = {}
    for anatomy, tests in sets.items():
        probabilities = {(s.condition, s.seed): predict_volume(model, s.image, s.spacing, s.condition,
                                                               keep_probabilities=True).probabilities
                         for scans in tests.values() for s in scans}
        for name, thresholds in rules.items():
            table = score(tests, lambda s: labels_at(probabilities[(s.condition, s.seed)], thresholds))
            results[f"{anatomy}, {name}"] = {"thresholds": thresholds, "dsc": table, **summary(table)}
            print(f"{anatomy}, {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary(table).items()))
            for condition, row in table.items():
                print(f"    {condition}: " + " ".join(f"{o} {v:.2f}" for o, v in row.items()), flush=True)
    (args.model / "threshold_tolerance.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
