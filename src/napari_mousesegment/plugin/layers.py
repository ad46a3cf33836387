"""Layer data tuples for napari, built from core results without importing napari.

napari turns ``(data, kwargs, layer_type)`` tuples into layers; keeping their construction here
lets readers, sample data and scripts share one definition of names, scale, units and colours.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..organs import CT_COLORS, US_COLORS, US_ORGANS, hex_rgb

if TYPE_CHECKING:
    from ..data.phantom_ct import CTPhantom
    from ..data.phantom_us import USSeries

LayerData = tuple[Any, dict, str]


def organ_features(organs: dict[str, int]) -> dict[str, list]:
    """A Labels features table: one row per label value with its organ name (0 = background)."""
    values = [0, *organs.values()]
    return {"index": values, "organ": ["background", *organs]}


def ct_layers(scan: CTPhantom, truth_name: str = "organs (truth)") -> list[LayerData]:
    """An HU image layer and an organ labels layer, in mm, with organ names and colours."""
    image = (
        scan.image,
        {**_ct_axes(scan.spacing), "name": f"micro-CT {scan.condition} (synthetic, seed {scan.seed})",
         "colormap": "gray", "contrast_limits": (-500, 1200),
         "metadata": {"condition": scan.condition, "spacing_mm": scan.spacing, "seed": scan.seed}},
        "image",
    )
    return [image, ct_labels_layer(scan.labels, scan.organs, scan.spacing, truth_name)]


def _ct_axes(spacing) -> dict:
    return {"scale": tuple(spacing), "units": ("mm",) * 3, "axis_labels": ("z", "y", "x")}


def ct_labels_layer(labels: np.ndarray, organs: dict[str, int], spacing, name: str,
                    visible: bool = True) -> LayerData:
    """Organ labels in mm with the organ names in the features and each organ's colour."""
    colors = {None: "transparent", 0: "transparent"}
    colors.update({v: CT_COLORS[o] for o, v in organs.items() if o in CT_COLORS})
    return (labels, {**_ct_axes(spacing), "name": name, "features": organ_features(organs), "colormap": colors,
                     "opacity": 0.5, "visible": visible, "metadata": {"organs": dict(organs)}}, "labels")


def ultrasound_layers(series: USSeries) -> list[LayerData]:
    """The frame stack and one instance-labels layer per organ (ids restart on every frame)."""
    axes = {"axis_labels": ("frame", "y", "x")}
    layers: list[LayerData] = [
        (series.frames, {**axes, "name": f"ultrasound series (synthetic, seed {series.seed})",
                         "colormap": "gray", "contrast_limits": (0, 255)}, "image")
    ]
    for organ in US_ORGANS:
        layers.append(us_labels_layer(series.labels[organ], organ, f"{organ} (truth)"))
    return layers


def us_labels_layer(labels: np.ndarray, organ: str, name: str, visible: bool = True) -> LayerData:
    """One organ's instance labels over the frame stack, all instances in the organ's colour."""
    hex_color = US_COLORS.get(organ, "#f58231")
    color = np.array([c / 255 for c in hex_rgb(hex_color)] + [1.0])
    colormap = {None: color, 0: "transparent"}  # every instance, also ones painted later, in the organ's colour
    return (labels, {"axis_labels": ("frame", "y", "x"), "name": name, "colormap": colormap, "opacity": 0.6,
                     "visible": visible, "metadata": {"organ": organ}}, "labels")
