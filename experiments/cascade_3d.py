"""A coarse 3D net that places the organs, then a 2D net that draws their borders, in one budget.

The question (docs/results-mosnet.md, "A coarse 3D network beside the 2D one", and what follows it):
the half-resolution 3D net of coarse_3d.py places an unseen map's native organs better than MOSnet,
but its borders are half-resolution ones, and a weighted vote of the two only splits the
difference. Does a 2D net that reads each full-resolution slice *with the 3D net's probabilities as
input channels* keep the 3D placement and add full-resolution borders, within one budget?

Stage 1: coarse_3d.py's 3D net for ``--minutes-3d`` minutes (its recipe, one volume per step).
Stage 2: a 2D U-Net (4 levels, ``--width`` channels at the top, instance norm) on full-resolution
axial slices padded to 112 x 152; inputs the soft-tissue and wide windows, the condition, and the
3D net's 9 probabilities on that slice. Dice + BCE on the organs each set annotates, AdamW at 2e-3
with a warm-up and a cosine over the rest of ``--minutes``, batches of 8 slices, bf16 autocast. The
3D net has seen the training volumes, so its probabilities there are better than on a new mouse:
stage 2 reads them shifted in-plane by up to ``--prior-shift`` voxels, each organ's logit scaled by
0.5-1.5, and each organ's channel dropped with probability ``--prior-drop``, so it learns to check
them against the image. Native stomach and bone are read under the contrast code in both stages.
``--context N`` lets stage 2 read N neighbouring slices' windows on each side as well (2.5D input).

    python experiments/cascade_3d.py --hold-out CT280_organs --data /tmp/e/hxv/data --out /tmp/e/cas/a

``--data-3d DIR`` trains the 3D net on another (larger) pair of sets than the 2D net's ``--data``: the
3D net's volumes are small, the 2D net's full-resolution ones are not. ``--nets-3d K`` trains K 3D
nets of ``--minutes-3d`` each (seeds ``--seed``, ``--seed`` + 1000, ...) and uses the mean of their
logits, to steady where an unseen map's organs are placed.

Scores (OUT/scores.json): the 3D net alone and the cascade, on heldout_anatomy.py's test phantoms, and
the cascade after ``predict --cleanup``'s clean_labels (the largest piece of single-piece organs kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import coarse_3d as c3
import heldout_anatomy as h

from napari_mousesegment.data.phantom_ct import VOIDS
from napari_mousesegment.inference.ct import vote
from napari_mousesegment.inference.postprocess import clean_labels

ORGANS = c3.ORGANS
PLANE = (112, 152)  #: axial slices are padded to this (a multiple of 8)


def windows(hu: np.ndarray, condition: str) -> torch.Tensor:
    """(z, 3, y, x) coarse_3d.channels, one axial slice per row."""
    return c3.channels(hu, condition).permute(1, 0, 2, 3)


def pad2(x: torch.Tensor) -> torch.Tensor:
    short = [PLANE[0] - x.shape[-2], PLANE[1] - x.shape[-1]]
    if min(short) < 0:
        raise SystemExit(f"axial slices of {tuple(x.shape[-2:])} do not fit {PLANE}")
    return F.pad(x, (0, short[1], 0, short[0]))


def neighbours(x: torch.Tensor, rows: torch.Tensor, context: int) -> torch.Tensor:
    """(len(rows), 2 * (2 * context + 1) + 1, y, x): the two windows of each row's slice and of its
    ``context`` neighbours on each side (repeated at the ends), then the condition code."""
    offsets = torch.arange(-context, context + 1)
    near = (rows[:, None] + offsets).clamp(0, len(x) - 1)  # (rows, 2 * context + 1)
    win = x[near, :2].flatten(1, 2)
    return torch.cat([win, x[rows, 2:]], 1)


def border_2d(width: int, context: int = 0) -> c3.UNet:
    """The second stage: a 2D U-Net reading the two windows (of the slice and of ``context``
    neighbours on each side), the condition and the 9 probabilities."""
    return c3.UNet(width, inputs=2 * (2 * context + 1) + 1 + len(ORGANS), dims=2)


def masked_loss_2d(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice (over the batch, per organ) on the organs each slice's dataset annotates."""
    a = annotated[:, :, None, None].expand_as(logits)
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * a).sum() / a.sum()
    p = torch.sigmoid(logits) * a
    t = target * a
    dice = 1 - (2 * (p * t).sum((0, 2, 3)) + 1) / ((p + t).sum((0, 2, 3)) + 1)
    seen = annotated.amax(0)
    return bce + (dice * seen).sum() / seen.sum()


class Volume:
    """One training volume at full resolution: windows, 3D logits (float16), labels, annotated flags."""

    def __init__(self, image: np.ndarray, labels: np.ndarray, condition: str, annotated: torch.Tensor,
                 prior: torch.Tensor):
        self.x = pad2(windows(image, condition))
        self.prior = pad2(prior.permute(1, 0, 2, 3)).half()  # (z, 9, y, x) logits
        self.labels = pad2(torch.from_numpy(labels.astype(np.int64))[:, None])[:, 0]
        self.annotated = annotated


def slice_batch(volumes: list[Volume], rng: np.random.Generator, batch: int, shift: int, drop: float,
                context: int = 0):
    xs, ts, flags = [], [], []
    for _ in range(batch):
        v = volumes[rng.integers(len(volumes))]
        k = int(rng.integers(len(v.x)))
        prior = v.prior[k].float()
        dy, dx = (int(s) for s in rng.integers(-shift, shift + 1, 2))
        prior = torch.roll(prior, (dy, dx), (1, 2))
        prior = prior * torch.from_numpy(rng.uniform(0.5, 1.5, len(ORGANS)).astype(np.float32))[:, None, None]
        keep = torch.from_numpy((rng.random(len(ORGANS)) >= drop).astype(np.float32))
        prior = torch.sigmoid(prior) * keep[:, None, None]
        x = neighbours(v.x, torch.tensor([k]), context)[0]
        x[:-1] = x[:-1] * float(rng.uniform(0.9, 1.1)) + float(rng.normal(0, 0.05))
        xs.append(torch.cat([x, prior]))
        ts.append(c3.onehot(v.labels[k]))
        flags.append(v.annotated)
    x, t = torch.stack(xs), torch.stack(ts)
    if rng.random() < 0.5:  # left-right mirror
        x, t = x.flip(-1), t.flip(-1)
    return x, t, torch.stack(flags)


def train_2d(volumes: list[Volume], args: argparse.Namespace, budget: float) -> tuple[c3.UNet, int]:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    model = border_2d(args.width, args.context)
    optimizer = torch.optim.AdamW(model.parameters(), args.lr_2d, weight_decay=1e-4)
    steps, start = 0, time.monotonic()
    while (elapsed := time.monotonic() - start) < budget:
        x, t, flags = slice_batch(volumes, rng, args.batch_2d, args.prior_shift, args.prior_drop, args.context)
        rate = args.lr_2d * min(1.0, (steps + 1) / 100) * 0.5 * (1 + np.cos(np.pi * elapsed / budget))
        loss = c3.train_step(model, optimizer, rate, x, lambda logits: masked_loss_2d(logits, t, flags))
        steps += 1
        if steps % 200 == 0:
            print(f"2D step {steps}  loss {loss.item():.3f}  {elapsed:.0f} s", flush=True)
    return model.eval(), steps


@torch.inference_mode()
def cascade_logits(model3: c3.Coarse3D, model2: c3.UNet, image: np.ndarray, condition: str,
                   context: int = 0) -> torch.Tensor:
    """(9, z, y, x) stage-2 logits; native stomach and bone read under the contrast code."""
    prior = torch.sigmoid(c3.logits_3d(model3, image, condition))  # borrowed organs already lent
    z, y, x = image.shape

    def run(code: str) -> torch.Tensor:
        win = neighbours(windows(image, code), torch.arange(z), context)
        inp = pad2(torch.cat([win, prior.permute(1, 0, 2, 3)], 1))
        outs = []
        for s in range(0, z, 32):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outs.append(model2(inp[s:s + 32]).float())
        return torch.cat(outs)[:, :, :y, :x]

    return c3.borrowed(run, condition).permute(1, 0, 2, 3)


def labels_of(margin: torch.Tensor) -> np.ndarray:
    return vote(margin.permute(1, 0, 2, 3), torch.zeros(len(ORGANS))).numpy().astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atlas", type=Path, action="append", default=None)
    parser.add_argument("--hold-out", required=True)
    parser.add_argument("--data", type=Path, required=True, help="a folder with native/ and contrast/ training sets")
    parser.add_argument("--data-3d", type=Path, help="the 3D net's training sets, when not --data's "
                        "(read inside the budget; the 2D net keeps --data's)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=12.0, help="both stages together (12)")
    parser.add_argument("--minutes-3d", type=float, default=5.0, help="of which the 3D net (5)")
    parser.add_argument("--nets-3d", type=int, default=1,
                        help="3D nets of --minutes-3d each (seeds --seed, +1000, ...), their logits averaged (1)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3, help="the 3D net's")
    parser.add_argument("--lr-2d", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=1, help="volumes per 3D step")
    parser.add_argument("--batch-2d", type=int, default=8)
    parser.add_argument("--context", type=int, default=0, metavar="N",
                        help="the 2D net also reads N neighbouring slices on each side (2.5D; 0)")
    parser.add_argument("--prior-shift", type=int, default=3)
    parser.add_argument("--prior-drop", type=float, default=0.15)
    parser.add_argument("--factor", type=int, choices=sorted(c3.GRIDS), default=2,
                        help="the 3D net's voxel in scan voxels (2: 0.56 mm; 4: 1.12 mm)")
    parser.add_argument("--affine", type=float, default=0.0, metavar="P",
                        help="the share of 3D steps whose volumes are warped (coarse_3d.py --affine; 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--voids", choices=VOIDS, default="viscera")
    args = parser.parse_args()
    c3.set_factor(args.factor)
    args.atlas = args.atlas or [ROOT.parent / "shared" / "data" / "rosenhain"]
    args.shape = h.DEFAULT_SHAPE
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    cases = list(c3.training_cases(args.data))
    data_3d = c3.net_data(c3.training_cases(args.data_3d) if args.data_3d else cases)
    nets, steps3 = [], 0
    for k in range(args.nets_3d):  # the first net's seed is --seed, so one net is the run it was
        stage1 = argparse.Namespace(**{**vars(args), "minutes": args.minutes_3d, "seed": args.seed + 1000 * k})
        net, steps = c3.train(stage1, data_3d)
        nets.append(net)
        steps3 += steps
    model3 = nets[0] if len(nets) == 1 else c3.Mean(nets).eval()
    del data_3d
    save_file(model3.state_dict(), args.out / "coarse_3d.safetensors")
    volumes = [Volume(image, labels, condition, annotated, c3.logits_3d(model3, image, condition))
               for image, labels, condition, annotated in cases]
    del cases
    left = args.minutes * 60 - (time.monotonic() - start)
    print(f"3D net: {steps3} steps; priors in {time.monotonic() - start - args.nets_3d * args.minutes_3d * 60:.0f} s; "
          f"2D: {left:.0f} s left", flush=True)
    model2, steps2 = train_2d(volumes, args, left)
    save_file(model2.state_dict(), args.out / "border_2d.safetensors")
    tests = h.make_tests(argparse.Namespace(**{**vars(args), "out": args.out}))
    cache: dict = {}

    def labels(scan) -> tuple[np.ndarray, np.ndarray]:
        """The 3D net's and the cascade's labels of one test scan, voted once for every table."""
        key = (scan.condition, scan.seed)
        if key not in cache:
            image, condition = scan.image, scan.condition
            cache[key] = (labels_of(c3.logits_3d(model3, image, condition)),
                          labels_of(cascade_logits(model3, model2, image, condition, args.context)))
        return cache[key]

    tables = {"coarse_3d": h.score(tests, lambda s: labels(s)[0]),
              "cascade": h.score(tests, lambda s: labels(s)[1]),
              "cascade_cleaned": h.score(tests, lambda s: clean_labels(labels(s)[1], c3.CT_ORGANS, s.spacing))}
    h.print_table(tables)
    scores = {"steps_3d": steps3, "steps_2d": steps2, **vars(args),
              **{name: {"dsc": t, **h.summary(t)} for name, t in tables.items()}}
    scores = {k: (str(v) if isinstance(v, Path) else v) for k, v in scores.items()}
    scores["atlas"] = [str(a) for a in args.atlas]
    (args.out / "scores.json").write_text(json.dumps(scores, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
