"""Arrays that may be lazy: numpy, memory-mapped or dask, read slab by slab."""

from __future__ import annotations

from typing import Any

import numpy as np


def load(array: Any) -> np.ndarray:
    """A numpy array of ``array`` (numpy, memory-mapped or dask). A dask array is computed in this
    thread (the synchronous scheduler): inside a Dask worker, or a napari thread, nothing is sent to
    another scheduler, and file handles in the graph never need pickling."""
    if hasattr(array, "compute"):
        return np.asarray(array.compute(scheduler="synchronous"))
    return np.asarray(array)


def slabs_follow_chunks(array: Any, axis: int) -> bool:
    """Whether slabs along ``axis`` read ``array`` once over: True for numpy and memory-mapped arrays,
    and for dask arrays chunked along ``axis`` alone (a DICOM series, TIFF pages, NIfTI planes
    stored across it). A coronal series read in axial slabs would read every file for every slab."""
    chunks = getattr(array, "chunks", None)
    if chunks is None or isinstance(array, np.ndarray):
        return True
    return all(len(c) == 1 for i, c in enumerate(chunks) if i != axis)
