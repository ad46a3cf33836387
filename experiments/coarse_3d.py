"""A coarse 3D U-Net on whole phantoms, alone and fused with a 2D MOSnet, on an unseen map.

The question (docs/results-mosnet.md, "A coarse 3D network beside the 2D one"): MOSnet reads one
slice at a time, and in native scans soft organs differ by a few HU, so it must tell liver from
gut by shape in a single plane. Does a network that sees the whole animal at once place the organs
of a map it never saw better, and does adding its vote to MOSnet's close the unseen-anatomy gap?

The 3D net: a U-Net of 4 levels (``--width`` channels at the top, doubling), instance norm, on the
phantom at half resolution (0.56 mm, padded to 104 x 56 x 80), inputs a soft-tissue window, a wide
window and the condition (+1 contrast, -1 native). Sigmoid per organ, Dice + BCE on the organs each
dataset annotates (the native set lacks stomach and bone), AdamW at 2e-3 with a 50-step warm-up and
a cosine over ``--minutes``, batches of ``--batch`` volumes (1) shifted by up to 4 voxels, bf16 autocast.
Prediction: logits upsampled to the scan's grid, an organ where its logit is above 0; native stomach
and bone are read under the contrast code, as MOSnet borrows them.

Fused with ``--mosnet M``: each organ's margin is (1 - w) * MOSnet's margin over its own threshold
+ w * the 3D logit, then MOSnet's vote (inference.ct.vote), for each w in ``--weights``::

    python experiments/coarse_3d.py --hold-out CT280_organs --data /tmp/e/hxv/data --minutes 12 --batch 1 \
        --out /tmp/e/c3d/r12b1 --mosnet /tmp/e/hxv/models/mosnet

``--data`` holds native/ and contrast/ dataset folders (experiments/heldout_anatomy.py's OUT/data).
The test phantoms are heldout_anatomy.py's (seeds 200.. and 300.., drawn from the held-out map).
The weights go to OUT/coarse_3d.safetensors and the scores to OUT/scores.json.

``--factor 4`` runs the net on a quarter-resolution grid (1.12 mm, 56 x 32 x 40) and ``--affine P``
warps the volumes of a share P of the steps (measured in "The 3D net on the map's own anatomy, and a
3D-then-2D cascade in one budget"; cascade_3d.py uses this net as its first stage).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import heldout_anatomy as h
from fused_scoring import margin as mosnet_margin

from napari_mousesegment.data.ct_dataset import load_case, read_ct_dataset
from napari_mousesegment.data.phantom_ct import CONDITIONS, VOIDS
from napari_mousesegment.inference.ct import vote
from napari_mousesegment.organs import CT_ORGANS
from napari_mousesegment.store.load import load_mosnet

ORGANS = list(CT_ORGANS)
GRIDS = {2: (104, 56, 80), 4: (56, 32, 40)}  #: the grid every phantom is padded to (multiples of 8), by factor
FACTOR = 2  #: the net's voxel is FACTOR x the scan's (2: 0.56 mm); --factor 4 sets 1.12 mm
GRID = GRIDS[FACTOR]


def set_factor(factor: int) -> None:
    """Run the net at 1/factor of the scan's resolution (2 or 4)."""
    global FACTOR, GRID
    FACTOR, GRID = factor, GRIDS[factor]
BORROWED = ("stomach", "bone")  #: never labelled in native scans: read under the contrast code


def channels(hu: np.ndarray, condition: str) -> torch.Tensor:
    """(3, z, y, x) soft-tissue and wide windows and the condition code, on the scan's grid."""
    x = torch.from_numpy(hu.astype(np.float32))
    soft = ((x - 40) / 200).clamp(-1, 1)
    wide = ((x + 200) / 800).clamp(-1.5, 2.5)
    code = torch.full_like(x, 1.0 if condition == "contrast" else -1.0)
    return torch.stack([soft, wide, code])


def onehot(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(9, ...) float masks of the organs, in ORGANS order, of a label array of any shape."""
    lab = torch.as_tensor(labels)
    return torch.stack([(lab == CT_ORGANS[o]).float() for o in ORGANS])


def borrowed(run, condition: str) -> torch.Tensor:
    """``run(condition)`` (organs on axis 1), with native stomach and bone from ``run("contrast")``."""
    out = run(condition)
    if condition == "native":
        lent = run("contrast")
        for organ in BORROWED:
            out[:, ORGANS.index(organ)] = lent[:, ORGANS.index(organ)]
    return out


def inputs(hu: np.ndarray, condition: str) -> torch.Tensor:
    """(1, 3, *GRID) network input: channels() at 1/FACTOR resolution."""
    return pad(F.avg_pool3d(channels(hu, condition)[None], FACTOR, ceil_mode=True))


def targets(labels: np.ndarray) -> torch.Tensor:
    """(1, 9, *GRID) organ fractions of each net voxel (FACTOR scan voxels a side)."""
    return pad(F.avg_pool3d(onehot(labels.astype(np.int64))[None], FACTOR, ceil_mode=True))


def pad(x: torch.Tensor) -> torch.Tensor:
    short = [GRID[i] - x.shape[2 + i] for i in range(3)]
    if min(short) < 0:
        raise SystemExit(f"a phantom of {tuple(FACTOR * s for s in x.shape[2:])} voxels does not fit {GRID} "
                         f"at 1/{FACTOR} size")
    return F.pad(x, (0, short[2], 0, short[1], 0, short[0]))


LAYERS = {3: (nn.Conv3d, nn.InstanceNorm3d, nn.ConvTranspose3d, F.max_pool3d),
          2: (nn.Conv2d, nn.InstanceNorm2d, nn.ConvTranspose2d, F.max_pool2d)}  #: by dimension


def block(cin: int, cout: int, dims: int = 3) -> nn.Sequential:
    conv, norm = LAYERS[dims][:2]
    return nn.Sequential(conv(cin, cout, 3, padding=1), norm(cout, affine=True), nn.LeakyReLU(0.01),
                         conv(cout, cout, 3, padding=1), norm(cout, affine=True), nn.LeakyReLU(0.01))


class UNet(nn.Module):
    """A 4-level U-Net in ``dims`` dimensions (3: this script's net; 2: cascade_3d.py's second
    stage): width, 2x, 4x, 8x channels; instance norm; transposed-convolution upsampling."""

    def __init__(self, width: int = 16, inputs: int = 3, outputs: int = len(ORGANS), dims: int = 3):
        super().__init__()
        ch = [width * 2**k for k in range(4)]
        up = LAYERS[dims][2]
        self.pool = LAYERS[dims][3]
        self.down = nn.ModuleList([block(inputs, ch[0], dims)] + [block(ch[k], ch[k + 1], dims) for k in range(3)])
        self.up = nn.ModuleList([up(ch[k + 1], ch[k], 2, 2) for k in range(3)])
        self.merge = nn.ModuleList([block(2 * ch[k], ch[k], dims) for k in range(3)])
        self.head = LAYERS[dims][0](ch[0], outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, down in enumerate(self.down):
            x = down(x if k == 0 else self.pool(x, 2))
            skips.append(x)
        x = skips.pop()
        for k in (2, 1, 0):
            x = self.merge[k](torch.cat([self.up[k](x), skips[k]], 1))
        return self.head(x)


Coarse3D = UNet  #: the 3D net (dims 3 is the default)


class Mean(nn.Module):
    """Several nets as one: the mean of their logits (cascade_3d.py --nets-3d)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def masked_loss(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over the organs each volume's dataset annotates."""
    a = annotated[:, :, None, None, None].expand_as(logits)
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * a).sum() / a.sum()
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum((2, 3, 4)) + 1) / ((p + target).sum((2, 3, 4)) + 1)
    return bce + (dice * annotated).sum() / annotated.sum()


def training_cases(data: Path) -> Iterator[tuple[np.ndarray, np.ndarray, str, torch.Tensor]]:
    """(HU, labels, condition, annotated-organ flags) of every volume in DATA/native and DATA/contrast."""
    for condition in CONDITIONS:
        dataset = read_ct_dataset(data / condition)
        annotated = torch.tensor([float(o in dataset.organs) for o in ORGANS])
        for case in dataset.cases:
            image, labels, _ = load_case(dataset, case)
            yield image, labels, dataset.condition, annotated


def read_training(data: Path) -> tuple[list, list, list]:
    """Inputs, targets and annotated-organ flags of every training volume, on the net's grid."""
    return net_data(training_cases(data))


def net_data(cases: Iterable) -> tuple[list, list, list]:
    """Inputs, targets and flags on the net's grid, of ``training_cases``' volumes (read once, so a
    generator keeps no full-resolution volume)."""
    xs, ts, fs = [], [], []
    for image, labels, condition, flags in cases:
        xs.append(inputs(image, condition))
        ts.append(targets(labels))
        fs.append(flags)
    return xs, ts, fs


def warp(x: torch.Tensor, t: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random affine warp of a batch of volumes and their organ fractions: each axis scaled by
    0.85-1.15 and the volume turned by up to 10 degrees about each axis (in the grid's normalised
    coordinates, so a slight shear on this non-cubic grid), so the net sees organs laid
    out, sized and tilted otherwise than in the few training mice."""
    angles = np.deg2rad(rng.uniform(-10, 10, 3))
    turn = np.eye(3)
    for axis, a in enumerate(angles):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        turn = turn @ r
    matrix = turn @ np.diag(rng.uniform(0.85, 1.15, 3))
    theta = torch.zeros(x.shape[0], 3, 4)
    theta[:, :, :3] = torch.from_numpy(matrix.astype(np.float32))
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    t = F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x, t


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, rate: float, x: torch.Tensor,
               loss_of) -> torch.Tensor:
    """One step at learning rate ``rate`` under bf16 autocast; ``loss_of(float logits)`` is the loss."""
    for group in optimizer.param_groups:
        group["lr"] = rate
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    loss = loss_of(logits.float())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def train(args: argparse.Namespace, data: tuple[list, list, list] | None = None) -> tuple[Coarse3D, int]:
    """The 3D net trained for ``args.minutes``, on ``data`` (read_training's) or on ``args.data``."""
    xs, ts, flags = data or read_training(args.data)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = Coarse3D(args.width)
    optimizer = torch.optim.AdamW(model.parameters(), args.lr, weight_decay=1e-4)
    budget, steps = args.minutes * 60, 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < budget:
        pick = rng.choice(len(xs), args.batch, replace=False)
        shift = [int(s) for s in rng.integers(-4, 5, 3)]
        x = torch.roll(torch.cat([xs[i] for i in pick]), shift, (2, 3, 4))
        t = torch.roll(torch.cat([ts[i] for i in pick]), shift, (2, 3, 4))
        if getattr(args, "affine", 0.0) and rng.random() < args.affine:
            x, t = warp(x, t, rng)
        x[:, :2] = x[:, :2] * float(rng.uniform(0.9, 1.1)) + float(rng.normal(0, 0.05))
        annotated = torch.stack([flags[i] for i in pick])
        rate = args.lr * min(1.0, (steps + 1) / 50) * 0.5 * (1 + np.cos(np.pi * elapsed / budget))
        loss = train_step(model, optimizer, rate, x, lambda logits: masked_loss(logits, t, annotated))
        steps += 1
        if steps % 100 == 0:
            print(f"step {steps}  loss {loss.item():.3f}  {elapsed:.0f} s", flush=True)
    return model.eval(), steps


@torch.inference_mode()
def logits_3d(model: Coarse3D, image: np.ndarray, condition: str) -> torch.Tensor:
    """(9, z, y, x) logits on the scan's grid; native stomach and bone under the contrast code."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = borrowed(lambda code: model(inputs(image, code)).float(), condition)
    z, y, x = image.shape
    return F.interpolate(out, scale_factor=FACTOR, mode="trilinear", align_corners=False)[0, :, :z, :y, :x]


def fused_labels(margins: dict, mosnet, model: Coarse3D, scan, weight: float) -> np.ndarray:
    """Labels of (1 - weight) * MOSnet's margin + weight * the 3D logit, by MOSnet's vote.
    ``margins`` keeps each scan's two margins for the other weights."""
    key = (scan.condition, scan.seed)
    if key not in margins:
        flat = mosnet_margin(mosnet, scan) if mosnet is not None else None
        margins[key] = (logits_3d(model, scan.image, scan.condition), flat)
    coarse, flat = margins[key]
    margin = coarse if weight == 1 else weight * coarse + (1 - weight) * flat
    return vote(margin.permute(1, 0, 2, 3), torch.zeros(len(ORGANS))).numpy().astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atlas", type=Path, action="append", default=None,
                        help="label maps or a folder of them (default ../shared/data/rosenhain)")
    parser.add_argument("--hold-out", required=True, help="the map the test phantoms are drawn from")
    parser.add_argument("--data", type=Path, required=True, help="a folder with native/ and contrast/ training sets")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=1, help="volumes per step (1; 2 learned less in 12 minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mosnet", type=Path, help="a MOSnet folder to fuse with")
    parser.add_argument("--weights", default="0,0.3,0.5,1", help="3D weights of the fusion (0,0.3,0.5,1)")
    parser.add_argument("--test", type=int, default=4, help="test phantoms per condition (4)")
    parser.add_argument("--voids", choices=VOIDS, default="viscera")
    parser.add_argument("--factor", type=int, choices=sorted(GRIDS), default=2,
                        help="the net's voxel in scan voxels (2: 0.56 mm, the default; 4: 1.12 mm)")
    parser.add_argument("--affine", type=float, default=0.0, metavar="P",
                        help="the share of steps whose volumes are warped (scaled 0.85-1.15 per axis, "
                             "turned up to 10 degrees; default 0)")
    args = parser.parse_args()
    set_factor(args.factor)
    args.atlas = args.atlas or [ROOT.parent / "shared" / "data" / "rosenhain"]
    args.shape = h.DEFAULT_SHAPE
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "coarse_3d.safetensors"
    if path.is_file():
        model = Coarse3D(args.width)
        model.load_state_dict(load_file(path))
        model.eval()
        old = args.out / "scores.json"
        steps = json.loads(old.read_text()).get("steps", 0) if old.is_file() else 0
    else:
        model, steps = train(args)
        save_file(model.state_dict(), path)
    print(f"3D net: {steps} steps in {args.minutes} min", flush=True)
    tests = h.make_tests(argparse.Namespace(**{**vars(args), "out": args.out}))
    mosnet = load_mosnet(args.mosnet)[0] if args.mosnet else None
    if mosnet is not None and list(mosnet.config.organs) != ORGANS:
        parser.error(f"--mosnet labels {mosnet.config.organs}, not {ORGANS}")
    weights = [float(w) for w in args.weights.split(",")] if mosnet is not None else [1.0]
    margins: dict = {}
    tables = {f"w3d_{w:g}": h.score(tests, lambda scan, w=w: fused_labels(margins, mosnet, model, scan, w))
              for w in weights}
    h.print_table(tables)
    scores = {"steps": steps, "minutes": args.minutes, "width": args.width,
              **{name: {"dsc": t, **h.summary(t)} for name, t in tables.items()}}
    (args.out / "scores.json").write_text(json.dumps(scores, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
