"""Kept so that scripts written as ``from napari_mousesegment.layers import ct_layers`` still run.

The layer builders live in :mod:`napari_mousesegment.plugin.layers`; import them from there, or
from the package itself (``from napari_mousesegment import ct_layers``).
"""

from .plugin.layers import (
    LayerData,
    ct_labels_layer,
    ct_layers,
    organ_features,
    ultrasound_layers,
    us_labels_layer,
)

__all__ = ["LayerData", "ct_labels_layer", "ct_layers", "organ_features", "ultrasound_layers", "us_labels_layer"]
