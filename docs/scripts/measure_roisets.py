"""Pixels an exported RoiSet loses: old writer (largest piece, holes filled) vs the composite writer.

Instances: the shipped U-Nets' predictions on 5 synthetic series (seeds 900-904), all three organs,
and HC18 expert masks (real, one head per frame). New: our own ImageJ-exact reader of the written
RoiSet (the ImageJ tests prove it equals ImageJ 1.53t's fill).

    python docs/scripts/measure_roisets.py     # from the repository root, ../shared beside it
"""
import glob
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from napari_mousesegment.data.phantom_us import ultrasound_series
from napari_mousesegment.inference.ultrasound import segment_frames
from napari_mousesegment.io.roi import labels_to_rois, read_rois, rois_to_labels, write_roiset
from napari_mousesegment.store.load import load_unets

HC18_TRUTH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hc18_dev" / "truth"


def old_loss(mask):
    """Pixels the old writer lost: it outlined the largest 4-connected piece with holes filled."""
    pieces, n = ndi.label(mask)
    if n > 1:
        sizes = np.bincount(pieces.ravel())[1:]
        pieces = pieces == (np.argmax(sizes) + 1)
    kept = ndi.binary_fill_holes(pieces > 0)
    return int((kept ^ mask).sum())

def measure(name, stacks):
    inst = odd = 0; area = lost_old = lost_new = 0
    for organ, labels in stacks:
        tmp = Path(tempfile.mkdtemp())
        rois = labels_to_rois(labels, organ)
        back = rois_to_labels(read_rois(write_roiset(tmp / "r.zip", rois)), labels.shape)
        k = 0
        for f in range(len(labels)):
            for v in np.unique(labels[f][labels[f] > 0]):
                m = labels[f] == v
                inst += 1; area += int(m.sum())
                lo = old_loss(m); odd += lo > 0 or ndi.label(m)[1] > 1; lost_old += lo
                k += 1
                lost_new += int(((back[f] == k) ^ m).sum())
    print(f"{name}: {inst} instances, {odd} in pieces or with holes; area {area} px; "
          f"old writer lost {lost_old} px ({100*lost_old/max(area,1):.2f}%), composite writer {lost_new} px")

models = load_unets({o: f"unet-{o}-synthetic" for o in ("heart", "liver", "placenta")}, ["heart", "liver", "placenta"], "cpu")
stacks = []
for seed in range(900, 905):
    frames = ultrasound_series(seed=seed).frames
    for organ, model in models.items():
        stacks.append((organ, segment_frames(model, frames)[1]))
measure("shipped U-Nets on 5 synthetic series", stacks)
truth = [("head", ndi.label(tifffile.imread(p) > 0, structure=np.array([[[0]*3]*3, [[0,1,0],[1,1,1],[0,1,0]], [[0]*3]*3]))[0])
         for p in sorted(glob.glob(str(HC18_TRUTH / "*.tif")))]
measure("HC18 expert masks (6 series x 35 frames)", truth)
truth_syn = []
for seed in range(900, 905):
    s = ultrasound_series(seed=seed)
    for organ in ("heart", "liver", "placenta"):
        truth_syn.append((organ, s.labels[organ]))
measure("synthetic truth instances (5 series)", truth_syn)
# A correction as users paint it: a 3-px eraser stroke across the middle of every placenta (splits it).
cut = []
for organ, labels in truth_syn:
    if organ == "placenta":
        edited = labels.copy()
        edited[:, :, 158:161] = 0
        cut.append((organ, edited))
measure("placentas cut by an eraser stroke", cut)
