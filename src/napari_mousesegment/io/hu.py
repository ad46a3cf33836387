"""Grey values to Hounsfield units, for scans that are not in HU (SkyScan, many TIFF exports).

A linear map is fixed by two materials. ``--hu AIR,WATER`` gives the raw values the user measured
in air and in water (or a water phantom): they become -1000 and 0 HU. ``--hu auto`` measures air
outside the body and the soft-tissue peak from the scan's own histogram and maps them to -1000 and
:data:`SOFT_TISSUE_HU`; it stops with an error when the histogram does not show both.

Two checks read a scan's HU: :func:`check_hu` refuses values that cannot be HU (for ``predict ct``
and anything else that takes a scan, e.g. ``queue add``), and :func:`guess_condition` tells a
native from a contrast-enhanced scan (``--condition auto``).
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


#: A scan in HU has air around the animal: at least this share of voxels below -500 HU.
AIR_HU, AIR_SHARE = -500.0, 0.001


def hu_problem(image: Any, calibrated: bool = False) -> str | None:
    """What makes ``image`` implausible as a micro-CT scan in HU, or None when nothing does.

    Refused: a (z, y, 3|4) array (a 2D RGB image read as a volume); without a calibration
    (``calibrated``: ``--hu`` mapped the values), an integer type that cannot hold HU (bool, 8-bit,
    unsigned: air is -1000 HU, bone over 1000); and on sampled slices, one value everywhere (an
    empty or blank scan) or no air (hardly a voxel below -500 HU: raw grey values, or not a scan).
    """
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4:
        return f"looks like an RGB image, not a scan (shape {shape}: {shape[-1]} colour channels)"
    # the values' own type, from one slice: a lazy array may announce its file's raw type (a NIfTI's
    # uint16) while its slices come out scaled to HU (float)
    dtype = np.dtype(load(image[0]).dtype) if shape[0] else np.dtype(image.dtype)
    if not calibrated:
        if dtype == bool:
            return "holds true/false values (a mask?), not HU"
        if dtype.kind in "iu" and dtype.itemsize == 1:
            return f"{dtype} values cannot hold HU (air is -1000 HU, bone over 1000)"
        if dtype.kind == "u":
            return f"{dtype} values cannot go below 0, so air cannot be -1000 HU: raw grey values, not HU"
    values = sample(image)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "holds no finite value"
    if values.min() == values.max():
        return f"every voxel is {values.min():g}" + (": an empty scan" if values.min() == 0 else "")
    air = float(np.mean(values < AIR_HU))
    if air < AIR_SHARE:
        return (f"has no air: {air:.2%} of the voxels lie below {AIR_HU:g} HU (air is -1000 HU; lowest value "
                f"{values.min():g}), so the values are not HU")
    return None


def check_hu(image: Any, source: str, calibrated: bool = False) -> None:
    """Refuse a scan whose values are not plausible HU (:func:`hu_problem`) with one line naming
    ``source`` and the way out: ``--hu`` to calibrate raw grey values, ``--force`` to predict anyway."""
    problem = hu_problem(image, calibrated)
    if problem is None:
        return
    if problem.startswith("looks like an RGB"):
        raise ValueError(f"{source}: {problem}; --force predicts anyway")
    way_out = ("check the calibration given to --hu" if calibrated else
               "if it holds raw grey values, calibrate them with --hu AIR,WATER or --hu auto")
    raise ValueError(f"{source}: not a plausible scan in HU: {problem}; {way_out}, or pass --force to predict anyway")


#: Soft tissue that contrast agents such as ExiTron nano (liver, spleen) make bright: 150-700 HU,
#: against 0-100 HU for native soft tissue (the conditions differ by ~250 HU in the liver).
BRIGHT_TISSUE_HU = (150.0, 700.0)
#: Share of the soft tissue (-100..900 HU) in bright regions above which a scan is called contrast.
#: Measured on ``mousesegment synth ct`` phantoms (docs/mosnet.md): native 0-2 %, contrast 12-17 %.
CONTRAST_SHARE = 0.05
#: Shares this close to the cut are called, but said to be uncertain.
UNSURE_BAND = (0.03, 0.08)
#: Coarsest in-plane voxel (mm) at which the rule is trusted: coarser, bone's partial volume looks
#: like enhanced tissue.
COARSEST_VOXEL_MM = 0.6
#: Radius (mm) of the opening that keeps bright regions: wider than bone rims and marrow, far
#: narrower than a liver.
BRIGHT_REGION_MM = 1.0


def bright_tissue_share(image: Any, spacing: tuple[float, float, float],
                        slices: int = SAMPLE_SLICES) -> tuple[float, float]:
    """Share of the soft tissue that lies in bright regions (:data:`BRIGHT_TISSUE_HU`, wider than
    :data:`BRIGHT_REGION_MM`), and their median HU (NaN when none), on sampled (y, x) slices.

    Each slice is median-filtered (noise), and the bright mask is opened with a disk, so the thin
    rims where bone meets soft tissue, and marrow, do not count; a contrast-enhanced liver does.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    pixel = float(np.mean(spacing[1:]))
    step = max(1, int(0.2 // pixel))  # block-average very fine slices to ~0.2 mm: same answer, faster
    radius = max(1, round(BRIGHT_REGION_MM / (pixel * step)))
    n = image.shape[0]
    picks = np.unique(np.linspace(0, n - 1, min(n, slices)).round().astype(int))
    soft = bright = 0
    bright_values = []
    for i in picks:
        plane = load(image[int(i)]).astype(np.float32)
        if step > 1:
            h, w = (plane.shape[0] // step) * step, (plane.shape[1] // step) * step
            plane = plane[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))
        plane = ndi.median_filter(plane, 3)
        soft += int(np.count_nonzero((plane >= -100) & (plane <= 900)))
        mask = ndi.binary_opening((plane >= BRIGHT_TISSUE_HU[0]) & (plane <= BRIGHT_TISSUE_HU[1]), disk(radius))
        bright += int(np.count_nonzero(mask))
        bright_values.append(plane[mask][::16])
    share = bright / soft if soft else 0.0
    values = np.concatenate(bright_values) if bright_values else np.zeros(0)
    return share, float(np.median(values)) if values.size else float("nan")


def guess_condition(image: Any, spacing: tuple[float, float, float], source: str = "scan") -> tuple[str, str]:
    """``"native"`` or ``"contrast"`` from the scan's own HU, with the reason as one phrase.

    Contrast-enhanced liver and spleen form large regions of 150-700 HU; native soft tissue has
    none (bone rims and marrow are too thin to survive the opening). Refuses scans whose voxels
    are coarser than :data:`COARSEST_VOXEL_MM` in-plane, or that hold no soft tissue.
    """
    pixel = float(np.mean(spacing[1:]))
    if pixel > COARSEST_VOXEL_MM:
        raise ValueError(f"{source}: --condition auto cannot tell native from contrast at {pixel:g} mm voxels "
                         f"(coarser than {COARSEST_VOXEL_MM:g} mm); give --condition native or contrast")
    share, median = bright_tissue_share(image, spacing)
    condition = "contrast" if share > CONTRAST_SHARE else "native"
    where = f" at a median {median:.0f} HU" if share > 0 and np.isfinite(median) else ""
    reason = (f"{share:.1%} of the soft tissue lies in bright regions of {BRIGHT_TISSUE_HU[0]:g}-"
              f"{BRIGHT_TISSUE_HU[1]:g} HU{where}; contrast-enhanced liver and spleen give over {CONTRAST_SHARE:.0%}")
    if UNSURE_BAND[0] <= share <= UNSURE_BAND[1]:
        reason += "; close to the cut, so check it or give --condition"
    return condition, reason
