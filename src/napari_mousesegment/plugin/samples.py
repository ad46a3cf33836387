"""npe2 sample data: the synthetic phantoms as napari layers (File > Open Sample).

Each sample comes with the segmentation of the built-in models trained on synthetic data
(``mosnet-synthetic``, ``unet-<organ>-synthetic``), so a new user sees real predictions at
once; the truth layers are there too, hidden, to compare with. When a built-in model cannot be
loaded the sample still opens, with a warning that says why.
"""

from __future__ import annotations

import warnings

from ..data.phantom_ct import ct_phantom
from ..data.phantom_us import ultrasound_series
from ..models.folder import ModelError
from ..store.registry import SHIPPED_CT, SHIPPED_US
from .layers import LayerData, ct_labels_layer, ct_layers, ultrasound_layers, us_labels_layer


def _hide(layer: LayerData) -> LayerData:
    return layer[0], {**layer[1], "visible": False}, layer[2]


def _ct_sample(condition: str) -> list[LayerData]:
    scan = ct_phantom(seed=0, condition=condition)
    image, truth = ct_layers(scan)
    try:
        from ..inference.ct import predict_volume
        from ..store.load import load_mosnet

        model, _, _ = load_mosnet(SHIPPED_CT)
        pred = predict_volume(model, scan.image, scan.spacing, condition)
    except (ModelError, OSError) as exc:
        warnings.warn(f"sample without prediction: {exc}", stacklevel=2)
        return [image, truth]
    return [image, _hide(truth), ct_labels_layer(pred.labels, pred.organs, scan.spacing, f"organs ({SHIPPED_CT})")]


def ct_native() -> list[LayerData]:
    """Synthetic native micro-CT scan (seed 0), its MOSnet segmentation and its organ truth."""
    return _ct_sample("native")


def ct_contrast() -> list[LayerData]:
    """Synthetic contrast-enhanced micro-CT scan (seed 0), its MOSnet segmentation and its organ truth."""
    return _ct_sample("contrast")


def ultrasound() -> list[LayerData]:
    """Synthetic 35-frame fetal-ultrasound series (seed 0), the U-Nets' instances and the truth."""
    series = ultrasound_series(seed=0)
    layers = ultrasound_layers(series)
    predicted = []
    try:
        from ..inference.ultrasound import segment_frames
        from ..store.load import load_unets

        for organ, model in load_unets(SHIPPED_US, list(SHIPPED_US), device="cpu").items():
            _, labels = segment_frames(model, series.frames)
            predicted.append(us_labels_layer(labels, organ, f"{organ} ({SHIPPED_US[organ]})"))
    except (ModelError, OSError) as exc:
        warnings.warn(f"sample without prediction: {exc}", stacklevel=2)
        return layers
    return [layers[0], *map(_hide, layers[1:]), *predicted]
