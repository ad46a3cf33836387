"""Optional clean-up of label volumes: off in evaluation, as in the paper."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Organs that are one connected piece; the others (kidneys, lungs, intestine, bone) may be several.
SINGLE_PIECE = ("heart", "liver", "spleen", "bladder", "stomach")


def clean_labels(labels: np.ndarray, organs: dict[str, int], spacing: tuple[float, float, float],
                 min_volume_mm3: float = 5.0) -> np.ndarray:
    """Keep the largest component of single-piece organs and drop components under ``min_volume_mm3``.

    Removed voxels become background; nothing is relabelled as another organ.
    """
    out = labels.copy()
    min_voxels = min_volume_mm3 / float(np.prod(spacing))
    structure = ndi.generate_binary_structure(3, 1)
    for organ, value in organs.items():
        components, n = ndi.label(labels == value, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        keep = sizes >= min_voxels
        if organ in SINGLE_PIECE:
            keep = np.zeros(n, bool)
            keep[int(np.argmax(sizes))] = True
        out[np.isin(components, np.flatnonzero(~keep) + 1)] = 0
    return out
