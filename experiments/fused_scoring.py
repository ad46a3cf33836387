"""Score MOSnet models fused at prediction, on the held-out map's test phantoms.

Two questions about the unseen-anatomy gap (docs/results-mosnet.md, "Fewer maps, no ellipsoids,
and averaging at prediction"): does averaging remove a 12-minute model's error on an unseen map,
over several seeds or over views of the scan? ``--model`` repeated fuses several models (seeds):
each organ's margin over its own model's threshold, in logits, is averaged over the models, then
the usual vote. ``--views`` adds test-time augmentation within each model: its probabilities
averaged over in-plane zooms of the scan (voxel sizes 0.9x and 1.1x, so organs look larger and
smaller) and/or in-plane turns of ±8 degrees, turned back before averaging::

    python experiments/fused_scoring.py --hold-out CT280_organs --model /tmp/e/hxv/models/def_s1 --views rotation
    python experiments/fused_scoring.py --hold-out CT280_organs --model M_SEED0 --model M_SEED1

The test phantoms are experiments/heldout_anatomy.py's (seeds 200.. and 300..). Prints the
per-organ DSC and the summary means; ``--json`` adds them to a file under ``--name``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import heldout_anatomy as h

from napari_mousesegment.data.phantom_ct import VOIDS
from napari_mousesegment.inference.ct import predict_volume, vote
from napari_mousesegment.models.mosnet import MOSnet
from napari_mousesegment.store.load import load_mosnet

TURN = 8.0  #: degrees of the in-plane turns
ZOOMS = (0.9, 1.1)  #: factors on the in-plane voxel size
VIEWS = {"none": [(1.0, 0.0)],
         "scale": [(1.0, 0.0), *((z, 0.0) for z in ZOOMS)],
         "rotation": [(1.0, 0.0), (1.0, -TURN), (1.0, TURN)],
         "both": [(1.0, 0.0), *((z, 0.0) for z in ZOOMS), (1.0, -TURN), (1.0, TURN)]}


def view_probabilities(model: MOSnet, scan, zoom: float, turn: float) -> np.ndarray:
    """(M, z, y, x) probabilities of one view of ``scan``, on the scan's own grid."""
    image = scan.image if turn == 0 else ndi.rotate(scan.image.astype(np.float32), turn, axes=(1, 2),
                                                     reshape=False, order=1, mode="nearest")
    spacing = (scan.spacing[0], scan.spacing[1] * zoom, scan.spacing[2] * zoom)
    probs = predict_volume(model, image, spacing, scan.condition, keep_probabilities=True).probabilities
    probs = probs.astype(np.float32)
    return probs if turn == 0 else ndi.rotate(probs, -turn, axes=(2, 3), reshape=False, order=1, mode="constant")


def margin(model: MOSnet, scan, views: list[tuple[float, float]] = VIEWS["none"]) -> torch.Tensor:
    """(M, z, y, x) each organ's margin over the model's own threshold, in logits, of its
    probabilities averaged over ``views``."""
    probs = np.mean([view_probabilities(model, scan, z, t) for z, t in views], 0)
    offsets = torch.logit(torch.tensor(model.config.organ_thresholds()))
    return torch.logit(torch.from_numpy(probs), eps=1e-6) - offsets[:, None, None, None]


def fused_labels(models: list[MOSnet], scan, views: list[tuple[float, float]]) -> np.ndarray:
    """Labels (numbered as the models' organs) of the mean margin over models; each model's
    probabilities are first averaged over ``views``."""
    mean = torch.stack([margin(model, scan, views) for model in models]).mean(0)
    mean = mean.permute(1, 0, 2, 3)  # (z, M, y, x): slices, as vote takes them
    return vote(mean, torch.zeros(mean.shape[1])).numpy().astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atlas", type=Path, action="append", default=None,
                        help="label maps or a folder of them (default ../shared/data/rosenhain)")
    parser.add_argument("--hold-out", required=True, help="the map the test phantoms are drawn from")
    parser.add_argument("--model", type=Path, action="append", required=True,
                        help="a MOSnet folder (repeat to fuse several)")
    parser.add_argument("--views", choices=list(VIEWS), default="none", help="test-time views per model (none)")
    parser.add_argument("--test", type=int, default=4, help="test phantoms per condition (4)")
    parser.add_argument("--voids", choices=VOIDS, default="viscera",
                        help="what fills the voids of the test phantoms (`synth ct --voids`; default viscera)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fused_scoring"), help="where the test phantoms go")
    parser.add_argument("--json", type=Path, help="add the scores to this JSON file")
    parser.add_argument("--name", default="fused", help="the scores' key in --json (default fused)")
    args = parser.parse_args()
    args.atlas = args.atlas or [ROOT.parent / "shared" / "data" / "rosenhain"]
    args.shape = h.DEFAULT_SHAPE
    tests = h.make_tests(args)
    models = [load_mosnet(folder)[0] for folder in args.model]
    organs = {tuple(m.config.organs) for m in models}
    if len(organs) != 1:
        parser.error("the models must label the same organs, in the same order")
    table = h.score(tests, lambda scan: fused_labels(models, scan, VIEWS[args.views]))
    h.print_table({args.name: table})
    if args.json:
        scores = json.loads(args.json.read_text()) if args.json.exists() else {}
        scores[args.name] = {"dsc": table, **h.summary(table)}
        args.json.write_text(json.dumps(scores, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
