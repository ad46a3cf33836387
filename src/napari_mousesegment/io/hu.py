"""Grey values to Hounsfield units, for scans that are not in HU (SkyScan, many TIFF exports).

A linear map is fixed by two materials. ``--hu AIR,WATER`` gives the raw values the user measured
in air and in water (or a water phantom): they become -1000 and 0 HU. ``--hu auto`` measures air
outside the body and the soft-tissue peak from the scan's own histogram and maps them to -1000 and
:data:`SOFT_TISSUE_HU`; it stops with an error when the histogram does not show both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .arrays import load

#: HU given to the soft-tissue peak by ``--hu auto``: mouse muscle and parenchyma sit at 30-60 HU
#: (native), so the body's most common value is mapped to their middle rather than to water.
SOFT_TISSUE_HU = 40.0
#: Slices sampled for ``--hu auto`` (evenly spaced): enough for a stable histogram, cheap on lazy scans.
SAMPLE_SLICES = 48


@dataclass(frozen=True)
class HUMap:
    """raw -> HU as ``(raw - air) * scale - 1000``."""

    air: float  #: raw value of air (-1000 HU)
    scale: float  #: HU per raw unit
    how: str  #: what was measured, for messages and the output's record

    def apply(self, image: Any) -> Any:
        """The image in HU, float32; a dask array stays lazy."""
        return (image.astype(np.float32) - np.float32(self.air)) * np.float32(self.scale) - np.float32(1000.0)

    def describe(self) -> str:
        return f"{self.how}: raw {self.air:g} -> -1000 HU, {self.scale:.4g} HU per grey level"


def parse_hu(text: str) -> str | tuple[float, float]:
    """``--hu``'s value: ``auto``, or ``AIR,WATER`` raw values (finite, AIR below WATER)."""
    if text.strip().lower() == "auto":
        return "auto"
    parts = text.split(",")
    try:
        air, water = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--hu must be auto or AIR,WATER (two raw grey values), got {text!r}") from None
    if not (np.isfinite(air) and np.isfinite(water)) or water <= air:
        raise ValueError(f"--hu AIR,WATER needs two finite raw values with air below water, got {text!r}")
    return air, water


def sample(image: Any, slices: int = SAMPLE_SLICES) -> np.ndarray:
    """Values of up to ``slices`` evenly spaced slices along the first axis, as float64 (reads only those)."""
    n = image.shape[0]
    picks = np.unique(np.linspace(0, n - 1, min(n, slices)).round().astype(int))
    return np.concatenate([load(image[int(i)]).astype(np.float64).ravel() for i in picks])


def auto_hu(image: Any, source: str = "scan") -> HUMap:
    """Find air and the soft-tissue peak in the histogram (Otsu splits air from body), or refuse."""
    from skimage.filters import threshold_otsu

    values = sample(image)
    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() == values.max():
        raise ValueError(f"{source}: --hu auto cannot calibrate a scan whose values are all one value")
    low, high = np.percentile(values, [0.1, 99.9])
    if high <= low:
        raise ValueError(f"{source}: --hu auto found no spread of grey values; give --hu AIR,WATER")
    values = np.clip(values, low, high)
    cut = threshold_otsu(values)
    air_side, body_side = values[values <= cut], values[values > cut]
    if len(air_side) < 0.05 * len(values) or len(body_side) < 0.05 * len(values):
        raise ValueError(f"{source}: --hu auto cannot find both air and body in the histogram "
                         f"({len(air_side) / len(values):.0%} below Otsu's cut); give --hu AIR,WATER")
    air, tissue = _mode(air_side), _mode(body_side)
    spread = high - low
    if tissue - air < 0.2 * spread:
        raise ValueError(f"{source}: --hu auto found no clear air and soft-tissue peaks (air {air:g}, "
                         f"tissue {tissue:g}); give --hu AIR,WATER")
    return HUMap(air, (SOFT_TISSUE_HU + 1000.0) / (tissue - air),
                 f"--hu auto (air {air:g}, soft tissue {tissue:g} -> {SOFT_TISSUE_HU:g} HU)")


def _mode(values: np.ndarray, bins: int = 256) -> float:
    """The most common value, from a lightly smoothed histogram."""
    from scipy.ndimage import gaussian_filter1d

    counts, edges = np.histogram(values, bins=bins)
    peak = int(np.argmax(gaussian_filter1d(counts.astype(float), 1.5)))
    return float((edges[peak] + edges[peak + 1]) / 2)


def hu_map(image: Any, hu: str | tuple[float, float], source: str = "scan") -> HUMap:
    """The map ``--hu`` asks for: measured air and water, or ``auto``."""
    if hu == "auto":
        return auto_hu(image, source)
    air, water = hu
    return HUMap(air, 1000.0 / (water - air), f"--hu {air:g},{water:g}")
