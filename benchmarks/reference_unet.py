"""The plain U-Net that every learning figure is compared with: what a 60-line script would do.

Width 16, depth 4, Adam at 1e-3, Dice + BCE, random batches of 8 frames resized to a square,
horizontal flips, a fixed time budget, the last weights, threshold 0.5. No validation, no schedule,
no post-processing. ``channels`` > 1 takes extra input channels (the micro-CT condition).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PlainUNet(nn.Module):
    def __init__(self, channels: int = 1, outputs: int = 1, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList(_block(a, b) for a, b in zip([channels, *widths[:-1]], widths))
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths[-2::-1], widths[:0:-1]))
        self.merge = nn.ModuleList(_block(2 * a, a) for a in widths[-2::-1])
        self.head = nn.Conv2d(width, outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, skips[-2::-1]):
            x = merge(torch.cat([up(x), skip], 1))
        return self.head(x)


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum((0, 2, 3)) + 1) / (p.sum((0, 2, 3)) + target.sum((0, 2, 3)) + 1)
    return dice.mean() + F.binary_cross_entropy_with_logits(logits, target)


def train_plain(images: torch.Tensor, masks: torch.Tensor, minutes: float, seed: int = 0,
                batch: int = 8) -> tuple[PlainUNet, int]:
    """Train on (N, C, S, S) images and (N, K, S, S) {0, 1} masks for ``minutes``; (model, steps)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PlainUNet(images.shape[1], masks.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    end, steps = time.monotonic() + minutes * 60, 0
    model.train()
    while time.monotonic() < end:
        idx = torch.from_numpy(rng.choice(len(images), min(batch, len(images)), replace=False))
        x, y = images[idx], masks[idx]
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        loss = dice_bce(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    return model.eval(), steps


def square(x: torch.Tensor, size: int, masks: bool = False) -> torch.Tensor:
    """(N, C, H, W) resized to (N, C, size, size): bilinear for images, nearest for masks."""
    return F.interpolate(x.float(), size=(size, size), mode="nearest" if masks else "bilinear")


@torch.inference_mode()
def predict_plain(model: PlainUNet, images: torch.Tensor, shape: tuple[int, int], batch: int = 8) -> np.ndarray:
    """(N, K, H, W) probabilities at ``shape`` for (N, C, S, S) images."""
    out = [torch.sigmoid(F.interpolate(model(images[s:s + batch]), size=shape, mode="bilinear"))
           for s in range(0, len(images), batch)]
    return torch.cat(out).numpy()
