"""The report's three organ U-Nets: standard (4 levels), deep (5 levels) and residual.

Written in plain torch rather than taken from MONAI: MONAI 1.6 needs torch >= 2.8 and would
replace a lab's own CUDA torch on install. Any architecture can learn any organ or keyword.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F

ARCHS = {"standard": (4, False), "deep": (5, False), "residual": (4, True)}  #: arch -> (levels, residual)
DEFAULT_ARCH = {"heart": "standard", "liver": "deep", "placenta": "residual"}


@dataclass
class UNetConfig:
    """Everything needed to rebuild a U-Net and prepare its input; saved as the model's config.json."""

    organ: str = "heart"
    arch: str = "standard"
    width: int = 16
    image_size: int = 128  #: training crop size; prediction runs on whole frames
    #: frames are resized so that their longer side has this many pixels, for training and prediction
    #: alike, and probabilities resized back (0: frames at their own size, as models before 0.4)
    frame_size: int = 0
    dropout: float = 0.1  #: before the bottleneck; also gives MC-dropout uncertainty
    threshold: float = 0.5  #: probability threshold, chosen on validation (largest Dice, or for precision)
    min_size: int = 30  #: instances smaller than this many pixels (at frame size) are dropped
    kind: str = "unet"
    version: str = "0"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {self.arch!r}")
        levels = ARCHS[self.arch][0]
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size must be a multiple of {2 ** (levels - 1)} for {self.arch}")
        if not 1 <= self.width <= 512:  # the bounds of models.schema (this file stands alone in packages)
            raise ValueError(f"width must be from 1 to 512, got {self.width}")
        if self.frame_size and not 16 <= self.frame_size <= 4096:
            raise ValueError(f"frame_size must be 0 or from 16 to 4096, got {self.frame_size}")
        if not 0.0 <= float(self.threshold) <= 1.0:  # NaN too
            raise ValueError(f"threshold must be from 0 to 1, got {self.threshold}")

    @property
    def levels(self) -> int:
        return ARCHS[self.arch][0]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> UNetConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class _Block(nn.Module):
    """Two 3x3 conv + batch norm + ReLU; with ``residual``, plus a 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, residual: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = (nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out, inplace=True)


class UNet(nn.Module):
    """Encoder-decoder with skip connections; one logit channel (the organ)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        levels, residual = ARCHS[config.arch]
        widths = [config.width * 2**i for i in range(levels)]
        self.down = nn.ModuleList()
        cin = 1
        for w in widths:
            self.down.append(_Block(cin, w, residual))
            cin = w
        self.dropout = nn.Dropout2d(config.dropout)
        self.up = nn.ModuleList(nn.ConvTranspose2d(w_hi, w_lo, 2, stride=2)
                                for w_hi, w_lo in zip(widths[:0:-1], widths[-2::-1]))
        self.merge = nn.ModuleList(_Block(2 * w, w, residual) for w in widths[-2::-1])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            if i == len(self.down) - 1:
                x = self.dropout(x)
            x = block(x)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, skips[-2::-1]):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def unet_from_fields(**values) -> UNet:
    """A U-Net from its config's fields: the architecture callable that bioimage.io packages name,
    so that this file alone (it imports only torch) rebuilds the network."""
    return UNet(UNetConfig.from_dict(values))
