"""What a corrected Labels layer is a correction of, read from the metadata the segmentation widgets
record: ultrasound (one organ's instances over a frame stack) or micro-CT (a scan's organ labels,
with its voxel size in mm and its condition).

The ultrasound widget writes ``organ`` and ``model`` into its layers' metadata; the micro-CT widget
writes ``organs``, ``model``, ``condition`` and ``spacing_mm`` (and the layer's scale in mm). Both
keep the ``prediction`` they started from, so only the frames or slices the user changed count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...active.queue import QueueError, touched_planes
from ...organs import US_ORGANS

#: The kinds the widget offers, as shown and as the queue names them.
KINDS = {"ultrasound": "ultrasound", "micro-CT": "ct"}


@dataclass(frozen=True)
class Correction:
    """One correction ready for :meth:`Queue.add <...active.queue.Queue.add>` or ``Client.add``."""

    image: Any  #: the image layer's array as it is (a lazy one is read where the correction is written)
    labels: np.ndarray
    kind: str  #: "ultrasound" or "ct"
    organ: str | None = None
    condition: str | None = None
    model: str | None = None
    model_version: str | None = None  #: the version of ``model`` here, which made the prediction
    prediction: np.ndarray | None = None
    spacing: tuple[float, float, float] | None = None
    source: str | None = None

    def fields(self) -> dict[str, Any]:
        """The keyword arguments after ``image, labels, kind`` that both queues take."""
        return {"organ": self.organ, "condition": self.condition, "model": self.model,
                "model_version": self.model_version, "prediction": self.prediction, "source": self.source,
                "spacing": self.spacing}

    @property
    def what(self) -> str:
        """"heart" or "micro-CT contrast", for messages."""
        return self.organ if self.kind == "ultrasound" else f"micro-CT {self.condition}"


def _meta(layer: Any) -> dict:
    return getattr(layer, "metadata", None) or {}


def layer_kind(labels: Any, image: Any = None) -> str | None:
    """"ultrasound" or "ct" when the layers say which (None: they do not; the user chooses).

    A layer the ultrasound widget made names one organ; one the micro-CT widget made (or the
    reader's organ labels) carries a mapping of organs, a condition or a voxel size in mm.
    """
    meta = _meta(labels)
    if meta.get("organ") in US_ORGANS:
        return "ultrasound"
    if isinstance(meta.get("organs"), dict) or meta.get("condition") or meta.get("spacing_mm"):
        return "ct"
    if image is not None and (_meta(image).get("spacing_mm") or _meta(image).get("condition")):
        return "ct"
    return None


def layer_condition(labels: Any, image: Any = None) -> str | None:
    """The scan's condition as the micro-CT widget (labels) or the sample data (image) recorded it."""
    return _meta(labels).get("condition") or _meta(image).get("condition") or None


def layer_spacing(labels: Any, image: Any = None) -> tuple[float, float, float] | None:
    """The voxel size (z, y, x) in mm: the recorded ``spacing_mm``, else a 3D scale in mm."""
    for layer in (labels, image):
        recorded = _meta(layer).get("spacing_mm")
        if recorded is not None and len(recorded) == 3:
            return tuple(float(s) for s in recorded)
    for layer in (labels, image):
        units = [str(u) for u in getattr(layer, "units", ())]
        scale = tuple(getattr(layer, "scale", ()))
        if len(scale) == 3 and units and all(u in ("mm", "millimeter") for u in units):
            return tuple(float(s) for s in scale)
    return None


def _volume(layer: Any) -> Any:
    """The layer's full-resolution array (the first level of a multiscale layer), not read here."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def correction(image: Any, labels: Any, kind: str, *, organ: str | None = None, condition: str | None = None,
               model: str | None = None) -> Correction:
    """The correction in ``labels`` over ``image``, checked before it goes anywhere.

    The labels are copied (the user may paint on while an upload runs); the image is left as the
    layer holds it, so a lazy scan is read in the thread that sends it, not here. A refused
    correction raises :class:`QueueError` naming the layer and the problem, so nothing bad waits
    in an outbox.
    """
    if image is None or labels is None:
        raise QueueError("choose the image and the corrected labels layer")
    if kind not in KINDS.values():
        raise QueueError(f"kind must be one of {list(KINDS.values())}, got {kind!r}")
    if getattr(image, "rgb", False):
        raise QueueError(f"{image.name}: convert the RGB image to gray first (the ultrasound widget does)")
    data, painted = _volume(image), np.array(_volume(labels), copy=True)
    if data.ndim != 3:
        raise QueueError(f"{image.name}: expected a (frames or slices, y, x) stack, got shape {tuple(data.shape)}")
    prediction = _meta(labels).get("prediction")
    spacing = None
    if kind == "ct":
        organ, condition = None, condition or layer_condition(labels, image)
        if not condition:
            raise QueueError(f"{labels.name}: the layer does not say the scan's condition; choose one")
        spacing = layer_spacing(labels, image)
        if spacing is None:
            raise QueueError(f"{labels.name}: no voxel size in mm; open the scan with this plugin's reader, "
                             "or set the layer's scale in mm and its units to 'mm'")
    else:
        condition = None
        if not organ:
            raise QueueError(f"{labels.name}: choose the organ the labels are of")
    if painted.shape != tuple(data.shape):
        raise QueueError(f"{labels.name}: labels of shape {painted.shape} do not match {image.name}'s "
                         f"{tuple(data.shape)}")
    if not np.issubdtype(painted.dtype, np.integer):
        raise QueueError(f"{labels.name}: labels must be integers, got {painted.dtype}")
    if prediction is not None and np.shape(prediction) != painted.shape:
        prediction = None  # recorded for another image: every labelled plane counts
    if not painted.any() or not touched_planes(painted, prediction, instances=kind == "ultrasound"):
        raise QueueError(f"{labels.name}: the correction is empty (no labels, or identical to the prediction): "
                         "nothing to learn")
    return Correction(data, painted, kind, organ=organ, condition=condition, model=model or None,
                      model_version=_version(model), spacing=spacing, source=f"napari layer {labels.name!r}",
                      prediction=None if prediction is None else np.asarray(prediction))


def _version(model: str | None) -> str | None:
    """The version of a model installed here (None otherwise: a published model is never downloaded
    for this)."""
    from ...models.folder import ModelError
    from ...store.registry import list_models, model_config

    if not model or model not in {m.name for m in list_models() if m.source != "registry"}:
        return None
    try:
        return str(model_config(model).get("version", "")) or None
    except (ModelError, OSError):
        return None
