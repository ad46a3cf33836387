"""Batch augmentation for ultrasound frames and micro-CT slices, run on the training device (GPU
when there is one).

All geometric changes (rotation, scaling, translation, flips, elastic deformation) are folded into
one sampling grid per batch, so a batch is resampled once; masks follow the image exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass
class AugmentSettings:
    """Each augmentation with its range; 0 (or False) switches it off."""

    rotation: float = 20.0  #: ± degrees (the report used ±10 and ±20)
    scale: float = 0.15  #: ± relative zoom
    translation: float = 0.1  #: ± fraction of the frame
    hflip: bool = True  #: left-right flips (depth stays down, as in B-mode)
    vflip: bool = False  #: up-down flips (off: they put the probe at the bottom)
    noise: float = 0.03  #: Gaussian noise σ, in [0, 1] intensity units
    brightness: float = 0.1  #: ± added intensity
    contrast: float = 0.2  #: ± relative contrast
    elastic: float = 0.02  #: largest elastic displacement, as a fraction of the frame
    crop: float = 0.15  #: up to this fraction of each border cropped away and padded back with black
    #: ± shift of a MOSnet's slice-position channel, as a fraction of the scan, with up to twice
    #: that relative stretch about its middle: mice lie a little further in or out, and differ in length
    position: float = 0.0

    @classmethod
    def off(cls) -> AugmentSettings:
        return cls(0.0, 0.0, 0.0, False, False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def for_ct(cls) -> AugmentSettings:
        """MOSnet's default: pose and size vary between mice, so rotate, zoom, shift and warp the
        axial slices; never flip (left and right differ), add no noise and barely touch the
        intensities (native soft organs differ by a few HU, ~0.005 in the window)."""
        return cls(rotation=10.0, scale=0.15, translation=0.05, hflip=False, vflip=False, noise=0.0,
                   brightness=0.01, contrast=0.05, elastic=0.02, crop=0.0, position=0.05)


def _uniform(n: int, spread: float, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(n, device=device, generator=generator) * 2 - 1) * spread


def jitter_positions(position: torch.Tensor, spread: float, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """(B, 1, S, S) constant position channels, each slice's stretched about the middle by up to
    ± 2·spread and shifted by up to ± spread, within [0, 1]."""
    b, dev = len(position), position.device
    stretch = (1 + _uniform(b, 2 * spread, dev, generator)).view(b, 1, 1, 1)
    shift = _uniform(b, spread, dev, generator).view(b, 1, 1, 1)
    return (0.5 + (position - 0.5) * stretch + shift).clamp(0.0, 1.0)


def augment(image: torch.Tensor, mask: torch.Tensor, settings: AugmentSettings,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment (B, C, H, W) images in [0, 1] (2.5D channels move together) and their (B, M, H, W)
    binary masks together."""
    b, _, h, w = image.shape
    dev = image.device
    angle = _uniform(b, math.radians(settings.rotation), dev, generator)
    zoom = 1 + _uniform(b, settings.scale, dev, generator)
    flip_x = torch.where(torch.rand(b, device=dev, generator=generator) < 0.5, -1.0, 1.0) if settings.hflip else 1.0
    flip_y = torch.where(torch.rand(b, device=dev, generator=generator) < 0.5, -1.0, 1.0) if settings.vflip else 1.0
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(b, 2, 3, device=dev)  # rotation (aspect-corrected) times the flips: no shear
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip_x, -sin * h / w * flip_y
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h * flip_x, cos * flip_y
    theta[:, :, 2] = torch.stack([_uniform(b, 2 * settings.translation, dev, generator) for _ in range(2)], 1)
    grid = F.affine_grid(theta, (b, 1, h, w), align_corners=False)
    if settings.elastic > 0:
        coarse = torch.randn(b, 2, 5, 5, device=dev, generator=generator)
        field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
        field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
        grid = grid + 2 * settings.elastic * field.permute(0, 2, 3, 1)
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = F.grid_sample(mask, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if settings.contrast or settings.brightness:
        mean = image.mean(dim=(2, 3), keepdim=True)
        gain = (1 + _uniform(b, settings.contrast, dev, generator)).view(b, 1, 1, 1)
        shift = _uniform(b, settings.brightness, dev, generator).view(b, 1, 1, 1)
        image = (image - mean) * gain + mean + shift
    if settings.noise > 0:
        image = image + settings.noise * torch.randn(image.shape, device=dev, generator=generator)
    if settings.crop > 0:
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        cut = (torch.rand(b, 4, device=dev, generator=generator) * settings.crop)
        keep = ((ys >= (cut[:, 0] * h).view(b, 1, 1)) & (ys < h - (cut[:, 1] * h).view(b, 1, 1))
                & (xs >= (cut[:, 2] * w).view(b, 1, 1)) & (xs < w - (cut[:, 3] * w).view(b, 1, 1)))
        image = image * keep[:, None]
        mask = mask * keep[:, None]
    return image.clamp(0, 1), mask
