"""Where a MOSnet's false positives lie on the held-out map's test phantoms: inside the voids or not.

A void is a voxel an organ held in the same seed's ellipsoid phantom that the map's organs leave
unlabelled. It was solid muscle in phantoms drawn before 2026-12-05 (``--voids muscle``; see
docs/results-mosnet.md, "The tissue left where the ellipsoid organs were") and is a sponge of fat
and soft tissue since (``--voids viscera``, the default)::

    python experiments/phantom_voids.py --hold-out CT280_organs --model /tmp/e/hxm/models/mosnet --test 2 --voids muscle

Prints, per test phantom: the voids' volume against the labelled organs', and per big organ its
Dice, its false positives against its true volume and the share of those inside the voids; then,
per model and condition, the big organs' mean Dice as scored and with the voids left out of the
count (the most that a void-free phantom could give the same predictions). The test phantoms are
experiments/heldout_anatomy.py's (seeds 200.. and 300..).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import heldout_anatomy as h

from napari_mousesegment.data.phantom_ct import VOIDS, ct_phantom
from napari_mousesegment.inference.ct import predict_volume
from napari_mousesegment.metrics import dice
from napari_mousesegment.organs import CT_ORGANS
from napari_mousesegment.store.load import load_mosnet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atlas", type=Path, action="append", default=None,
                        help="label maps or a folder of them (default ../shared/data/rosenhain)")
    parser.add_argument("--hold-out", required=True, help="the map the test phantoms are drawn from")
    parser.add_argument("--model", type=Path, action="append", required=True, help="a MOSnet folder (repeat)")
    parser.add_argument("--test", type=int, default=2, help="test phantoms per condition (2)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/phantom_voids"), help="where the test phantoms go")
    parser.add_argument("--voids", choices=VOIDS, default="viscera",
                        help="what fills the voids of the test phantoms (`synth ct --voids`; default viscera)")
    args = parser.parse_args()
    args.atlas = args.atlas or [ROOT.parent / "shared" / "data" / "rosenhain"]
    args.shape = h.DEFAULT_SHAPE
    tests = h.make_tests(args)
    voids = {}  # per test phantom, drawn once for every model
    for condition, scans in tests.items():
        for scan in scans:
            plain = ct_phantom(scan.seed, condition, shape=tuple(args.shape)).labels
            voids[condition, scan.seed] = (plain > 0) & (plain != CT_ORGANS["bone"]) & (scan.labels == 0)
    for folder in args.model:
        model = load_mosnet(folder)[0]
        for condition, scans in tests.items():
            means: dict[str, list[float]] = {"as scored": [], "voids left out": []}
            for scan in scans:
                void = voids[condition, scan.seed]
                pred = predict_volume(model, scan.image, scan.spacing, scan.condition).labels
                cells, plain_dsc, void_free = [], [], []
                for organ in h.BIG:
                    truth, found = scan.labels == CT_ORGANS[organ], pred == CT_ORGANS[organ]
                    wrong = found & ~truth
                    dsc = dice(found, truth)
                    plain_dsc.append(dsc)
                    void_free.append(dice(found & ~void, truth))  # the truth never lies in a void
                    cells.append(f"{organ} {dsc:.2f}, false positives {wrong.sum() / max(truth.sum(), 1):.2f} "
                                 f"of its volume, {(wrong & void).sum() / max(wrong.sum(), 1):.2f} in voids")
                print(f"{folder.name} {condition} seed {scan.seed}: voids {void.sum() / (scan.labels > 0).sum():.2f} "
                      f"of the organs' volume; " + "; ".join(cells), flush=True)
                means["as scored"].append(sum(plain_dsc) / len(plain_dsc))
                means["voids left out"].append(sum(void_free) / len(void_free))
            print(f"{folder.name} {condition}: big organs' mean Dice " + ", ".join(
                f"{k} {sum(v) / len(v):.3f}" for k, v in means.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
