"""NIfTI and Analyze 7.5 volumes, read with nibabel (imported only when such a file is read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img")


def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A (z, y, x) volume and its voxel size from a NIfTI or Analyze file (nibabel's (x, y, z) reversed)."""
    import nibabel

    path = Path(path)
    try:
        img = nibabel.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for bad headers and short files
        raise ValueError(f"{path}: not a readable NIfTI/Analyze volume ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {data.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.transpose(data, (2, 1, 0)), zooms[::-1]  # nibabel is (x, y, z); we are (z, y, x)
