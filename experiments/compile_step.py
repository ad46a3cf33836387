"""Does ``torch.compile`` make a MOSnet training step faster on this CPU? (issue 17, learning per minute)

Times the training loop's step (forward, MOSnet loss, backward, Adam) on random slices, eager and
compiled, for one variant per run, so that each figure comes from a fresh process::

    python experiments/compile_step.py --variant full --mode eager
    python experiments/compile_step.py --variant full --mode compile

The first compiled step includes compilation; the rate is measured after three warm-up steps.
"""

from __future__ import annotations

import argparse
import time

import torch

from napari_mousesegment.models.mosnet import MOSnet, MOSnetConfig
from napari_mousesegment.organs import CT_ORGANS
from napari_mousesegment.training.losses import RECON_WEIGHT
from napari_mousesegment.training.mosnet import batch_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="full")
    parser.add_argument("--mode", choices=["eager", "compile"], default="eager")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = MOSnetConfig(organs=list(CT_ORGANS), width=args.width, image_size=128, variant=args.variant)
    model = MOSnet(config).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    forward = torch.compile(model) if args.mode == "compile" else model
    n, organs = args.batch_size, len(config.organs)
    image = torch.randn(n, 1, 128, 128).contiguous(memory_format=torch.channels_last)
    masks = (torch.rand(n, organs, 128, 128) > 0.8).float()
    annotated = torch.ones(n, organs, dtype=torch.bool)
    condition = torch.arange(n) % 2
    beta = torch.ones(organs)

    def step() -> None:  # the training recipe's own loss, without augmentation
        loss = batch_loss(forward, (image, masks, annotated, condition), beta, RECON_WEIGHT).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    per_step = (time.perf_counter() - start) / args.steps
    print(f"{args.variant} {args.mode}: first step {first:.1f} s, then {1000 * per_step:.0f} ms per step "
          f"of {n} slices")


if __name__ == "__main__":
    main()
