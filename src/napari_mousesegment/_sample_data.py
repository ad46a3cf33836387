"""npe2 sample data: the synthetic phantoms as napari layers (File > Open Sample)."""

from __future__ import annotations

from typing import Any

from .data.phantom_ct import ct_phantom
from .data.phantom_us import ultrasound_series
from .layers import ct_layers, ultrasound_layers


def ct_native() -> list[tuple[Any, dict, str]]:
    """Synthetic native micro-CT scan (seed 0) with its organ truth."""
    return ct_layers(ct_phantom(seed=0, condition="native"))


def ct_contrast() -> list[tuple[Any, dict, str]]:
    """Synthetic contrast-enhanced micro-CT scan (seed 0) with its organ truth."""
    return ct_layers(ct_phantom(seed=0, condition="contrast"))


def ultrasound() -> list[tuple[Any, dict, str]]:
    """Synthetic 35-frame fetal-ultrasound series (seed 0) with per-organ instance truth."""
    return ultrasound_layers(ultrasound_series(seed=0))
