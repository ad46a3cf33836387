"""The rule that keeps a user's work: a Labels layer the user has edited is never removed or
overwritten by a widget.

A widget records the prediction it wrote in the layer's metadata (``metadata["prediction"]``, which
the active-learning widget also uses to send only the frames the user changed). A layer whose
data still equals that prediction is the widget's to replace; any paint, fill or erase makes it
the user's.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def is_edited(layer: Any) -> bool:
    """Whether the user changed the layer since a widget wrote it (a layer without a recorded
    prediction counts as the user's)."""
    prediction = (layer.metadata or {}).get("prediction")
    data = np.asarray(layer.data)
    return prediction is None or np.shape(prediction) != data.shape or not np.array_equal(data, prediction)


def set_labels(layer: Any, labels: np.ndarray) -> None:
    """Change the layer's data to ``labels`` through ``data_setitem``, as one step Ctrl+Z undoes,
    and record them as the layer's prediction."""
    data = np.asarray(layer.data)
    changed = np.nonzero(data != labels)
    if len(changed[0]):
        with layer.block_history():
            layer.data_setitem(changed, labels[changed].astype(data.dtype, copy=False))
    layer.metadata["prediction"] = np.array(labels, copy=True)


def show_result(viewer: Any, old: Any, data: np.ndarray, kwargs: dict) -> Any:
    """A widget's new Labels result: it replaces ``old`` (the widget's previous result) only when
    that was made from the same image (``metadata["source"]``) and the user has not edited it;
    otherwise it arrives as a new layer and ``old`` stays as it is."""
    kwargs["metadata"]["prediction"] = np.array(data, copy=True)
    if (old is not None and old in viewer.layers and not is_edited(old)
            and (old.metadata or {}).get("source") == kwargs["metadata"].get("source")):
        viewer.layers.remove(old)
    return viewer.add_labels(data, **kwargs)
