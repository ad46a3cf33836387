"""MOSnet (Wang et al. 2025): a U-shaped multi-organ network for partially annotated datasets.

- Shared encoder: double convolutions (3×3 conv, batch norm, LeakyReLU, twice) and max-pooling
  (eq. 1).
- Segmentation decoder: at each level a control module (eqs. 2-4) gates the concatenated decoder
  and skip features channel-wise, conditioned on a learned embedding of the dataset's condition
  code, then a double conv. One sigmoid output per organ (multi-label).
- Reconstruction decoder (eq. 5): transposed conv, concatenation with the encoder features of the
  same level, double conv; it reconstructs the input image.

The ablations of the paper are switches: BM has neither control module nor reconstruction,
BM_CM adds the control module, BM_RB the reconstruction decoder, "full" both. BM is a plain
U-Net here, not the paper's UNet++-style nested skips (allowed by the design notes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

VARIANTS = ("full", "bm", "bm_cm", "bm_rb")
MAX_SIGMA = 8.0  #: the widest smoothing an extra window may ask for, in model pixels
#: The plane of a config: one, or several in this order joined by "+" (as models.schema.PLANE_CHOICES).
PLANE_CHOICES = ("axial", "coronal", "sagittal", "axial+coronal", "axial+sagittal", "coronal+sagittal",
                 "axial+coronal+sagittal")


@dataclass
class MOSnetConfig:
    """Everything needed to rebuild a MOSnet and to feed it: saved as config.json beside the weights."""

    organs: list[str]
    conditions: list[str] = field(default_factory=lambda: ["native", "contrast"])
    variant: str = "full"
    width: int = 32  #: channels of the first level; doubled at each of the ``depth`` poolings
    depth: int = 4
    embed_dim: int = 16  #: size of the condition embedding a³
    reduction: int = 8  #: squeeze ratio of the control module's channel gate
    image_size: int = 128  #: in-plane size the slices are resized to
    #: slicing plane: axial = (y, x) slices along z; several joined by "+" (``axial+coronal``): one
    #: network learns slices of each, and prediction averages its probabilities over the planes
    plane: str = "axial"
    #: 2.5D input: this many neighbouring slices on each side join the slice as channels (0: 2D)
    context: int = 0
    context_step: int = 2  #: model voxels between those neighbours (2 at 0.28 mm: 0.56 mm apart)
    spacing_mm: float = 0.28  #: isotropic voxel size the scans are resampled to
    window_level: float = 400.0
    window_width: float = 1000.0
    #: further (level, width) HU windows cut from the input window inside the network, each giving
    #: every input channel again (a soft-tissue window beside a wide one: the field's multi-window
    #: input, with nothing changed before the network); empty: the input window alone. A third
    #: value, sigma, cuts the window from the slice smoothed by a Gaussian of sigma model pixels
    #: (native soft organs a few HU apart under 38 HU of scanner noise); 0 or absent: unsmoothed
    extra_windows: list[list[float]] = field(default_factory=list)
    #: give the network each slice's place along the scan's z axis (0 at its first model slice, 1 at
    #: its last) as one more input channel: a 2D axial slice does not show where along the body it
    #: lies. Axial slices only; the scans are taken to be whole-body and head first, as in training
    position: bool = False
    #: condition -> organs its training datasets annotate (empty: unknown, read every organ as is)
    annotated: dict[str, list[str]] = field(default_factory=dict)
    #: organ -> probability above which the label vote may pick it (missing: 0.5); chosen on the
    #: validation scans after training (see training.thresholds)
    thresholds: dict[str, float] = field(default_factory=dict)
    kind: str = "mosnet"
    version: str = "0"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if not self.organs:
            raise ValueError("a MOSnet needs at least one organ")
        if len(set(self.organs)) != len(self.organs) or len(set(self.conditions)) != len(self.conditions):
            raise ValueError("organ and condition names must be unique")
        if not (2 <= self.width <= 512 and 1 <= self.depth <= 8):  # the bounds of models.schema
            raise ValueError(f"width must be 2..512 and depth 1..8, got width {self.width}, depth {self.depth}")
        if self.image_size % (2**self.depth):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**depth = {2**self.depth}")
        bad = {o: t for o, t in self.thresholds.items() if not 0.0 <= float(t) <= 1.0}  # NaN too
        if bad:
            raise ValueError(f"thresholds must be from 0 to 1, got {bad}")
        if self.plane not in PLANE_CHOICES:
            raise ValueError(f"plane must be axial, coronal or sagittal, or several joined by '+' in that "
                             f"order (axial+coronal), got {self.plane!r}")
        if not (0 <= self.context <= 8 and 1 <= self.context_step <= 16):
            raise ValueError(f"context must be 0..8 slices and context_step 1..16 voxels, got "
                             f"{self.context} and {self.context_step}")
        self.extra_windows = [[float(v) for v in w] for w in self.extra_windows]
        if len(self.extra_windows) > 4 or not all(len(w) in (2, 3) and all(math.isfinite(v) for v in w)
                                                  and w[1] >= 10 and 0 <= (w[2] if len(w) == 3 else 0) <= MAX_SIGMA
                                                  for w in self.extra_windows):
            raise ValueError(f"extra_windows must be at most 4 (level, width[, sigma]) in HU, width from 10, "
                             f"sigma 0 to {MAX_SIGMA:g} pixels, got {self.extra_windows}")
        if self.position and self.plane != "axial":
            raise ValueError(f"position is given to axial slices only, not {self.plane!r} ones")

    @property
    def planes(self) -> list[str]:
        """The slicing planes: one, or the planes of a multi-planar model."""
        return self.plane.split("+")

    @property
    def channels(self) -> int:
        """Input channels: the slice and its ``context`` neighbours on each side."""
        return 1 + 2 * self.context

    @property
    def input_channels(self) -> int:
        """Channels of the tensor the network takes: :attr:`channels`, then the slice's position."""
        return self.channels + int(self.position)

    @property
    def network_channels(self) -> int:
        """Channels of the first convolution: the image's, once per window (input and extra), and
        the slice's position."""
        return self.channels * (1 + len(self.extra_windows)) + int(self.position)

    def slice_offsets(self) -> list[int]:
        """Model-grid offsets of the input channels along the slice axis, centre in the middle."""
        return [self.context_step * k for k in range(-self.context, self.context + 1)]

    @property
    def control(self) -> bool:
        return self.variant in ("full", "bm_cm")

    @property
    def reconstruction(self) -> bool:
        return self.variant in ("full", "bm_rb")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def organ_thresholds(self) -> list[float]:
        """The label vote's threshold of each organ, in ``organs`` order."""
        return [float(self.thresholds.get(organ, 0.5)) for organ in self.organs]

    def borrowed_organs(self, condition: str) -> list[tuple[int, list[int]]]:
        """Organs that no training dataset of ``condition`` annotated, as (condition index to read
        them under instead, organ indices) pairs.

        Under a condition that never annotated an organ, that organ's output got no training signal
        (α = 0), so it is read under the first condition that did annotate it; the decoder's gate
        is the only part that differs. Empty for variants without the control module, for unknown
        annotations, and when ``condition`` annotated every organ.
        """
        if not self.control or condition not in self.annotated:
            return []
        own = set(self.annotated[condition])
        groups: dict[int, list[int]] = {}
        for i, organ in enumerate(self.organs):
            donor = next((c for c in self.conditions if organ in self.annotated.get(c, ())), None)
            if organ not in own and donor is not None:
                groups.setdefault(self.conditions.index(donor), []).append(i)
        return sorted(groups.items())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MOSnetConfig:
        """Build from a config.json's contents; keys that are not config fields (metrics,
        training summary, sha256) are ignored."""
        if data.get("kind", "mosnet") != "mosnet":
            raise ValueError(f"config is for a {data.get('kind')!r} model, not a MOSnet")
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "annotated" not in fields and "training" in data:  # saved before the field existed
            fields["annotated"] = annotated_by_condition(data["training"].get("datasets", []))
        return cls(**fields)


def annotated_by_condition(datasets: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Condition -> sorted organs annotated by any of the datasets ({"condition", "organs"} each)."""
    out: dict[str, set[str]] = {}
    for d in datasets:
        out.setdefault(d["condition"], set()).update(d["organs"])
    return {c: sorted(organs) for c, organs in out.items()}


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, C, H, W) smoothed per channel by a separable Gaussian of ``sigma`` pixels (edges reflected):
    plain convolutions, so TorchScript and ONNX exports carry it. Under bf16 autocast they run in
    bf16, whose steps are at most 0.5 HU below 128 HU: far below the few HU a smoothed soft-tissue
    window is for."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = image.shape[1]
    out = F.pad(image.float(), (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _bl(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.LeakyReLU(0.01, inplace=True))


class DoubleConv(nn.Sequential):
    """(3×3 conv, batch norm, LeakyReLU) twice."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), _bl(c_out),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), _bl(c_out))


class ControlModule(nn.Module):
    """Eq. 4: a channel gate over [a¹; a²] from the pooled features and the condition embedding."""

    def __init__(self, channels: int, embed_dim: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.condition = nn.Sequential(nn.Linear(embed_dim, hidden), nn.LeakyReLU(0.01, inplace=True))
        self.squeeze = nn.Linear(channels, hidden)  # W¹
        self.excite = nn.Linear(2 * hidden, channels)  # W²

    def forward(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        pooled = features.mean(dim=(2, 3))
        gate = torch.sigmoid(self.excite(torch.cat([self.condition(embedding), self.squeeze(pooled)], 1)))
        if torch.is_inference_mode_enabled():  # no backward to keep the input for: gate in place
            return features.mul_(gate[:, :, None, None])
        return features * gate[:, :, None, None]


class DecoderLevel(nn.Module):
    """Eq. 2 (a¹ = BL(Conv3(Up(·)))), concatenation with the skip a², optional gate, double conv."""

    def __init__(self, c_deep: int, c_skip: int, config: MOSnetConfig) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                nn.Conv2d(c_deep, c_skip, 3, padding=1, bias=False), _bl(c_skip))
        self.gate = ControlModule(2 * c_skip, config.embed_dim, config.reduction) if config.control else None
        self.conv = DoubleConv(2 * c_skip, c_skip)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        features = torch.cat([self.up(deep), skip], 1)
        if self.gate is not None:
            features = self.gate(features, embedding)
        return self.conv(features)


class ReconLevel(nn.Module):
    """Eq. 5: DeConv (3×3, stride 2, padding 1), concatenation with the encoder features, double conv."""

    def __init__(self, c_deep: int, c_skip: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(c_deep, c_skip, 3, stride=2, padding=1, output_padding=1)
        self.conv = DoubleConv(2 * c_skip, c_skip)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.deconv(deep), skip], 1))


class MOSnet(nn.Module):
    """MOSnet, built from its config alone.

    ``forward(image, condition)`` takes (B, C, S, S) windowed slices in [0, 1] (C =
    ``config.input_channels``: the slice, with its neighbours when 2.5D, and its position along the
    scan when the config has one) and (B,) condition indices into ``config.conditions``; it returns
    per-organ logits (B, M, S, S) and the reconstruction of the slices (B, ``config.channels``, S, S)
    in [0, 1], or None when the variant has no reconstruction.
    """

    def __init__(self, config: MOSnetConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.width * 2**i for i in range(config.depth + 1)]
        self.encoder = nn.ModuleList([DoubleConv(config.network_channels, widths[0])] +
                                     [DoubleConv(widths[i - 1], widths[i]) for i in range(1, len(widths))])
        self.decoder = nn.ModuleList([DecoderLevel(widths[i + 1], widths[i], config)
                                      for i in reversed(range(config.depth))])
        self.seg_head = nn.Conv2d(widths[0], len(config.organs), 1)
        self.embedding = nn.Embedding(len(config.conditions), config.embed_dim) if config.control else None
        if config.reconstruction:
            self.recon = nn.ModuleList([ReconLevel(widths[i + 1], widths[i]) for i in reversed(range(config.depth))])
            self.recon_head = nn.Conv2d(widths[0], config.channels, 1)
        else:
            self.recon = None

    def windows(self, image: torch.Tensor) -> torch.Tensor:
        """The input (B, C, S, S), in [0, 1] over the config's window, and each extra window cut
        from it, as channels: (B, C·(1 + extra), S, S), then the position channel when the config
        has one (passed through). Float32 arithmetic, so a soft-tissue window keeps the few-HU
        steps that a bf16 first convolution would round away (a smoothed window's blur excepted:
        see :func:`gaussian_blur`)."""
        config = self.config
        if image.shape[1] != config.input_channels:
            raise ValueError(f"expected {config.input_channels} input channels, got {image.shape[1]}")
        if not config.extra_windows and not config.position:
            return image
        position = image[:, config.channels:]
        image = image[:, :config.channels]
        if not config.extra_windows:
            return torch.cat([image.float(), position.float()], 1)
        hu = image.float() * config.window_width + (config.window_level - config.window_width / 2)
        smoothed = {0.0: hu}
        cuts = []
        for level, width, *rest in config.extra_windows:
            sigma = rest[0] if rest else 0.0
            if sigma not in smoothed:
                smoothed[sigma] = gaussian_blur(hu, sigma)
            cuts.append(((smoothed[sigma] - (level - width / 2)) / width).clamp(0.0, 1.0))
        return torch.cat([image.float(), *cuts, position.float()], 1)

    def _encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        x = self.windows(image)
        for i, block in enumerate(self.encoder):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        return skips

    def _segment(self, skips: list[torch.Tensor], condition: torch.Tensor) -> torch.Tensor:
        embedding = self.embedding(condition) if self.embedding is not None else None
        seg = skips[-1]
        for level, skip in zip(self.decoder, reversed(skips[:-1])):
            seg = level(seg, skip, embedding)
        return self.seg_head(seg)

    def segment(self, image: torch.Tensor, condition: torch.Tensor,
                borrowed: Sequence[tuple[int, list[int]]] = ()) -> torch.Tensor:
        """Per-organ logits alone: prediction has no use for the reconstruction decoder's work.

        ``borrowed`` (see :meth:`MOSnetConfig.borrowed_organs`) reads those organs under another
        condition; the encoder does not depend on the condition, so only the decoder runs again.
        """
        skips = self._encode(image)
        logits = self._segment(skips, condition)
        for other, organs in borrowed:
            logits[:, organs] = self._segment(skips, torch.full_like(condition, other))[:, organs]
        return logits

    def forward(self, image: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        skips = self._encode(image)
        logits = self._segment(skips, condition)
        if self.recon is None:
            return logits, None
        rec = skips[-1]
        for level, skip in zip(self.recon, reversed(skips[:-1])):
            rec = level(rec, skip)
        return logits, torch.sigmoid(self.recon_head(rec))


class ConditionedMOSnet(MOSnet):
    """A MOSnet with its condition fixed: one image in, per-organ logits out.

    The form bioimage.io packages hold (one package per condition, since their consumers feed one
    image tensor). Organs the condition never annotated are read under the condition that did, as
    :meth:`MOSnetConfig.borrowed_organs` says; the state dict is a MOSnet's, key for key.
    """

    def __init__(self, condition: str, **values: Any) -> None:
        config = MOSnetConfig.from_dict(values)
        if condition not in config.conditions:
            raise ValueError(f"condition {condition!r} is not one of {config.conditions}")
        super().__init__(config)
        self.condition = config.conditions.index(condition)
        self.borrowed = [other for other, _ in config.borrowed_organs(condition)]
        masks = torch.zeros(len(self.borrowed), len(config.organs), dtype=torch.bool)
        for k, (_, organs) in enumerate(config.borrowed_organs(condition)):
            masks[k, organs] = True
        # Organ masks instead of indexed assignment, so a traced copy runs at any batch and size.
        self.register_buffer("masks", masks[:, None, :, None, None], persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        skips = self._encode(image)
        condition = torch.full((image.shape[0],), self.condition, dtype=torch.long, device=image.device)
        logits = self._segment(skips, condition)
        for k, other in enumerate(self.borrowed):
            logits = torch.where(self.masks[k], self._segment(skips, torch.full_like(condition, other)), logits)
        return logits


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
