"""Synthetic fetal-mouse ultrasound series with ImageJ-style ground truth.

A series is 35 B-mode frames of one litter seen from different probe angles. Each frame shows 0-4
fetuses; each fetus has a heart, a liver and a placenta, and an organ may be partly or wholly out
of view. The picture has what real B-mode has and models must cope with: a sector shape, speckle,
depth attenuation, dark amniotic fluid and a bright placenta.

The truth is a polygon per organ instance. Masks are that polygon filled by ImageJ's rule
(:func:`napari_mousesegment.io.roi.fill_polygon`), so ROI files written from it open in Fiji with
exactly the masks used here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..io.roi import fill_polygon, polygon_roi
from ..io.series import write_series
from ..organs import US_FRAMES, US_ORGANS

DEFAULT_FRAME_SHAPE = (240, 320)
#: Mean echo strength of each structure (uterine tissue is about 0.28). The liver is brighter than
#: the rest of the body by 6 dB (v2; 3.8 dB in v1, where an absent liver could not be told from a
#: present one, unlike the "well-defined" livers of the report).
ECHO = {"sac": 0.03, "body": 0.55, "liver": 1.1, "heart": 0.1, "placenta": 1.3}
_MIN_AREA = 25  # pixels: smaller visible remnants are not annotated (annotators skip slivers)


@dataclass(frozen=True)
class OrganInstance:
    """One annotated organ in one frame."""

    organ: str
    frame: int  #: 0-based
    index: int  #: 1-based within (organ, frame)
    polygon: np.ndarray  #: (n, 2) float (x, y) vertices in ImageJ pixel coordinates

    @property
    def name(self) -> str:
        """ROI name: organ, 1-based frame and instance, never ImageJ's NNNN-NNNN-NNNN form."""
        return f"{self.organ}_f{self.frame + 1:02d}_{self.index}"


@dataclass(frozen=True)
class USSeries:
    """One synthetic series: frames, per-organ instance labels and the polygons behind them."""

    frames: np.ndarray  #: (n_frames, H, W) uint8 B-mode
    labels: dict[str, np.ndarray]  #: organ -> (n_frames, H, W) uint16 instance ids per frame
    instances: list[OrganInstance] = field(repr=False)
    seed: int = 0

    def organ_instances(self, organ: str, frame: int | None = None) -> list[OrganInstance]:
        """The instances of one organ, optionally on one frame, in id order."""
        return [i for i in self.instances if i.organ == organ and (frame is None or i.frame == frame)]


def _check_args(seed: int, n_frames: int, frame_shape: tuple[int, int]) -> tuple[int, int]:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(n_frames, (int, np.integer)) or not 1 <= n_frames <= 500:
        raise ValueError(f"n_frames must be an integer in 1..500, got {n_frames!r}")
    if len(frame_shape) != 2 or any(not isinstance(n, (int, np.integer)) for n in frame_shape):
        raise ValueError(f"frame_shape must be two integers (height, width), got {frame_shape!r}")
    if min(frame_shape) < 64 or max(frame_shape) > 2048:
        raise ValueError(f"frame_shape {tuple(frame_shape)} must be between 64 and 2048 pixels per side")
    return int(frame_shape[0]), int(frame_shape[1])


def _sector(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sector mask, depth map (0 at the probe, 1 at the far edge) and the sector's outline."""
    h, w = shape
    apex = np.array([w / 2, -0.08 * h])  # (x, y), just above the image
    r_in, r_out, half = 0.12 * h, 1.12 * h, np.deg2rad(36)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    r = np.hypot(xx - apex[0], yy - apex[1])
    theta = np.arctan2(xx - apex[0], yy - apex[1])
    mask = (r >= r_in) & (r <= r_out) & (np.abs(theta) <= half)
    depth = np.clip((r - r_in) / (r_out - r_in), 0, 1)
    angles = np.linspace(-half, half, 33)
    outer = np.stack([apex[0] + r_out * np.sin(angles), apex[1] + r_out * np.cos(angles)], 1)
    outline = np.concatenate([[apex], outer])  # convex pie slice from the apex
    return mask, depth, outline


def _clip_convex(poly: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clipping of a polygon against a convex, counter-clockwise polygon."""
    out = poly
    for a, b in zip(clip, np.roll(clip, -1, axis=0)):
        if len(out) == 0:
            break
        edge = b - a
        side = edge[0] * (out[:, 1] - a[1]) - edge[1] * (out[:, 0] - a[0])
        kept = []
        for i in range(len(out)):
            p, q = out[i], out[(i + 1) % len(out)]
            sp, sq = side[i], side[(i + 1) % len(out)]
            if sp >= 0:
                kept.append(p)
            if (sp >= 0) != (sq >= 0):
                kept.append(p + (q - p) * (sp / (sp - sq)))
        out = np.array(kept)
    return out


def _ccw(poly: np.ndarray) -> np.ndarray:
    x, y = poly[:, 0], poly[:, 1]
    area = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
    return poly if area > 0 else poly[::-1]


def _blob(rng: np.random.Generator, center, radii, angle: float, n: int = 36, wobble: float = 0.12) -> np.ndarray:
    """An irregular closed outline: an ellipse with smooth random harmonics."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in (2, 3, 4):
        r += wobble / k * rng.uniform(-1, 1) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    x, y = radii[0] * r * np.cos(t), radii[1] * r * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([center[0] + c * x - s * y, center[1] + s * x + c * y], 1)


def _crescent(rng: np.random.Generator, center, radius: float, thickness: float, angle: float, n: int = 40) -> np.ndarray:
    """A placenta-like disc seen edge-on: a thick crescent hugging a sac of the given radius."""
    span = rng.uniform(0.7, 1.1)
    t = np.linspace(-span, span, n // 2)
    bulge = thickness * (0.6 + 0.4 * np.cos(np.pi * t / (2 * span)))
    inner = np.stack([radius * np.cos(t + angle), radius * np.sin(t + angle)], 1)
    outer = np.stack([(radius + bulge) * np.cos(t + angle), (radius + bulge) * np.sin(t + angle)], 1)[::-1]
    return np.concatenate([inner, outer]) + np.asarray(center)


def _quantise(poly: np.ndarray) -> np.ndarray:
    """Snap vertices to odd multiples of 1/32 px.

    Such values are exact in ImageJ's float32 and never fall on a pixel centre or edge, where
    ImageJ versions break ties differently (a vertex exactly on a pixel-centre row can move the
    fill by a pixel between ImageJ releases).
    """
    return np.floor(poly * 16) / 16 + 1 / 32


def _fetus_layout(rng: np.random.Generator, shape, sector_mask, scale: float, placed: list) -> dict | None:
    """Pose one fetus (sac, body, organs) without overlapping the ones already placed."""
    h, w = shape
    ys, xs = np.nonzero(sector_mask)
    for _ in range(40):
        k = rng.integers(len(ys))
        center = np.array([xs[k], ys[k]], float)
        sac_r = rng.uniform(34, 44) * scale
        if any(np.hypot(*(center - c)) < sac_r + r + 32 * scale for c, r in placed):  # room for placentas
            continue
        placed.append((center, sac_r))
        angle = rng.uniform(0, 2 * np.pi)
        axis = np.array([np.cos(angle), np.sin(angle)])
        body_r = np.array([sac_r * 0.72, sac_r * 0.48])
        return {
            "sac": _blob(rng, center, (sac_r, sac_r * 0.92), angle, wobble=0.05),
            "body": _blob(rng, center, body_r, angle, wobble=0.06),
            "heart": _blob(rng, center + axis * body_r[0] * 0.35, (6.5 * scale, 5.5 * scale),
                           rng.uniform(0, np.pi), n=24, wobble=0.1),
            "liver": _blob(rng, center - axis * body_r[0] * 0.15, (11 * scale, 8 * scale),
                           angle + rng.uniform(-0.4, 0.4), n=32, wobble=0.2),
            "placenta": _crescent(rng, center, sac_r * 1.02, rng.uniform(10, 14) * scale,
                                  angle + np.pi + rng.uniform(-0.8, 0.8)),
        }
    return None


def _speckle(rng: np.random.Generator, shape) -> np.ndarray:
    """Rayleigh speckle with a longer lateral than axial correlation, mean 1."""
    re = ndi.gaussian_filter(rng.standard_normal(shape), (0.8, 1.6))
    im = ndi.gaussian_filter(rng.standard_normal(shape), (0.8, 1.6))
    env = np.hypot(re, im)
    return env / env.mean()


def _render(rng, shape, sector_mask, depth, layers: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """B-mode frame from (mask, echogenicity) layers painted in order over uterine tissue."""
    echo = 0.28 * np.exp(0.6 * ndi.gaussian_filter(rng.standard_normal(shape), 10) * 4)
    for mask, value in layers:
        echo = np.where(mask, value, echo)
    echo = np.clip(ndi.gaussian_filter(echo, 0.7), 0.01, None)
    env = echo * _speckle(rng, shape)
    env *= np.exp(-1.2 * depth) * (1 + 0.25 * depth)  # attenuation, partly corrected by gain
    db = 20 * np.log10(env + 1e-4)
    img = np.clip((db + 42) / 52, 0, 1) * 255
    img[~sector_mask] = 0
    return img.astype(np.uint8)


def ultrasound_series(
    seed: int = 0,
    n_frames: int = US_FRAMES,
    frame_shape: tuple[int, int] = DEFAULT_FRAME_SHAPE,
) -> USSeries:
    """Make one synthetic fetal-ultrasound series with its organ instances.

    Parameters
    ----------
    seed : int
        Draws the litter and every frame; the same seed gives the same series.
    n_frames : int
        Frames in the series (35 for the lab's composites).
    frame_shape : (height, width)
        Size of one frame in pixels.

    Returns
    -------
    USSeries
        uint8 frames, instance labels per organ (``heart``, ``liver``, ``placenta``) and the
        polygons they were filled from.

    Examples
    --------
    >>> series = ultrasound_series(seed=3)
    >>> series.frames.shape
    (35, 240, 320)
    """
    shape = _check_args(seed, n_frames, frame_shape)
    rng = np.random.default_rng([int(seed), 35, 2024])
    scale = min(shape) / 240
    sector_mask, depth, outline = _sector(shape)
    h, w = shape
    view = _clip_convex(_ccw(np.array([[0, 0], [w, 0], [w, h], [0, h]], float)), _ccw(outline))
    view = _ccw(view)
    frames = np.zeros((n_frames, *shape), np.uint8)
    labels = {organ: np.zeros((n_frames, *shape), np.uint16) for organ in US_ORGANS}
    instances: list[OrganInstance] = []
    litter = int(rng.integers(1, 5))
    echo = ECHO
    for f in range(n_frames):
        n_fetuses = int(rng.choice(np.arange(0, litter + 1), p=_visible_weights(litter)))
        placed: list = []
        layers: list[tuple[np.ndarray, float]] = []
        counts = dict.fromkeys(US_ORGANS, 0)
        for _ in range(n_fetuses):
            fetus = _fetus_layout(rng, shape, sector_mask, scale, placed)
            if fetus is None:
                continue
            layers += [(fill_polygon(fetus["placenta"], shape), echo["placenta"]),
                       (fill_polygon(fetus["sac"], shape), echo["sac"]),
                       (fill_polygon(fetus["body"], shape), echo["body"])]
            for organ in US_ORGANS:
                if organ != "placenta" and rng.random() < 0.12:
                    continue  # this probe angle misses the organ: not drawn, not annotated
                poly = _quantise(_clip_convex(_ccw(fetus[organ]), view))
                if len(poly) < 3:
                    continue
                mask = fill_polygon(poly, shape)
                if mask.sum() < _MIN_AREA * scale**2:
                    continue
                if organ != "placenta":
                    layers.append((mask, echo[organ]))
                counts[organ] += 1
                labels[organ][f][mask] = counts[organ]
                instances.append(OrganInstance(organ, f, counts[organ], poly))
        frames[f] = _render(rng, shape, sector_mask, depth, layers)
    return USSeries(frames, labels, instances, int(seed))


def _visible_weights(litter: int) -> np.ndarray:
    """How often 0..litter fetuses are in view: mostly several, sometimes none."""
    weights = np.ones(litter + 1)
    weights[0] = 0.35
    weights[-1] = 1.6
    return weights / weights.sum()


def write_us_series(folder: str | os.PathLike, series: USSeries, name: str | None = None) -> Path:
    """Write a series in the lab's layout (:func:`~napari_mousesegment.io.series.write_series`):
    the stack, the 5x7 montage and one RoiSet per organ and frame, each ROI on its frame."""
    rois = {organ: {frame: [polygon_roi(i.polygon, i.name, frame=frame) for i in series.organ_instances(organ, frame)]
                    for frame in range(len(series.frames))} for organ in US_ORGANS}
    return write_series(folder, series.frames, rois, name)
