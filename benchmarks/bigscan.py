"""A scan of several GB through ``predict ct``: peak memory, time against size, and the time to read it once.

The scan is a phantom mouse upsampled 4x per axis (0.07 mm voxels), written page by page as an
uncompressed ImageJ TIFF of int16: 1000 slices of 1024 x 1024 (2 GiB) by default, so neither the
writer nor the predictor ever holds it whole. ``predict ct`` runs in a child process, as a user
runs it, and reports its own peak resident memory (``ru_maxrss``); a quarter-length scan is run the
same way, so the time ratio shows whether time grows linearly with size. The full scan is also written as an
uncompressed NIfTI, which takes the other path: a lazy nibabel read, and ``labels.nii.gz`` written
back in the file's geometry, slab by slab.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.io.tiff import write_tiff_slices

FACTOR = 4  #: upsampling per axis: 0.28 mm phantom voxels -> 0.07 mm
CHILD = """
import json, resource, sys, time
from napari_mousesegment.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_big_scan(path: Path, phantom: np.ndarray, slices: int, spacing: float) -> float:
    """Write ``slices`` slices of the phantom upsampled FACTOR times (nearest), page by page; GB written."""
    def pages():
        for z in range(slices):
            plane = phantom[(z // FACTOR) % len(phantom)]
            yield np.repeat(np.repeat(plane, FACTOR, axis=0), FACTOR, axis=1)

    shape = (slices, phantom.shape[1] * FACTOR, phantom.shape[2] * FACTOR)
    write_tiff_slices(path, pages(), shape, np.int16, (spacing,) * 3)
    return path.stat().st_size / 1e9


def write_big_nifti(path: Path, phantom: np.ndarray, slices: int, spacing: float) -> float:
    """The same scan as an uncompressed NIfTI (RAS, x fastest), written plane by plane; GB written."""
    import nibabel

    shape = (phantom.shape[2] * FACTOR, phantom.shape[1] * FACTOR, slices)  # (x, y, z)
    header = nibabel.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    header["vox_offset"] = 352
    with open(path, "wb") as out:
        out.write(header.binaryblock + b"\0" * 4)
        for z in range(slices):
            plane = phantom[(z // FACTOR) % len(phantom)]
            out.write(np.repeat(np.repeat(plane, FACTOR, axis=0), FACTOR, axis=1).astype("<i2").tobytes())
    return path.stat().st_size / 1e9


def read_once(path: Path) -> float:
    """Seconds to read the whole scan once, slab by slab, through the lazy reader predict uses."""
    from napari_mousesegment.io.arrays import load
    from napari_mousesegment.io.readers import read_scan

    start = time.perf_counter()
    image = read_scan(path, lazy=True).image
    for z in range(0, image.shape[0], 16):
        load(image[z:z + 16]).sum()
    return time.perf_counter() - start


def predict_child(path: Path, out: Path, device: str) -> dict:
    run = subprocess.run([sys.executable, "-c", CHILD, "predict", "ct", str(path), "--model", "mosnet-synthetic",
                          "--condition", "native", "--out", str(out), "--device", device],
                         capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"predict ct failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def bigscan(args, device, scratch: Path) -> dict:
    """Peak memory and time of ``predict ct`` on a multi-GB TIFF, at a quarter of its length, and as a NIfTI."""
    scratch.mkdir(parents=True, exist_ok=True)
    in_plane = (32, 40) if args.quick else (256, 256)  # x4 -> 128 or 1024 pixels
    slices = 64 if args.quick else 1000
    phantom = ct_phantom(seed=11, shape=(max(slices // FACTOR, 24), *in_plane)).image
    spacing = 0.28 / FACTOR
    out: dict = {"slices": slices, "height": in_plane[0] * FACTOR, "width": in_plane[1] * FACTOR}
    cpu = "cuda" if device.type == "cuda" else "cpu"
    for name, n in (("quarter", slices // 4), ("full", slices)):
        path = scratch / f"{name}.tif"
        out[f"{name}_gb"] = write_big_scan(path, phantom, n, spacing)
        out[f"{name}_read_seconds"] = read_once(path)
        result = predict_child(path, scratch / f"{name}-out", cpu)
        out[f"{name}_seconds"], out[f"{name}_peak_rss_mb"] = result["seconds"], result["peak_rss_mb"]
        labels = tifffile.memmap(scratch / f"{name}-out" / name / "labels.tif", mode="r")
        out[f"{name}_labelled_fraction"] = float(np.count_nonzero(labels[:: max(n // 16, 1)])) / labels[
            :: max(n // 16, 1)].size
        del labels
        path.unlink()
    # The NIfTI path: a lazy ArrayProxy read, and labels.nii.gz written back slab by slab
    path = scratch / "full.nii"
    out["nifti_gb"] = write_big_nifti(path, phantom, slices, spacing)
    result = predict_child(path, scratch / "nifti-out", cpu)
    out["nifti_seconds"], out["nifti_peak_rss_mb"] = result["seconds"], result["peak_rss_mb"]
    nifti_labels = np.asarray(tifffile.imread(scratch / "nifti-out" / "full" / "labels.tif", key=slices // 2))
    full_labels = np.asarray(tifffile.imread(scratch / "full-out" / "full" / "labels.tif", key=slices // 2))
    out["nifti_same_labels_mid_slice"] = bool(np.array_equal(nifti_labels, full_labels))
    out["nifti_wrote_labels_nii_gz"] = (scratch / "nifti-out" / "full" / "labels.nii.gz").is_file()
    path.unlink()
    out["time_ratio_full_vs_quarter"] = out["full_seconds"] / out["quarter_seconds"]
    out["size_ratio_full_vs_quarter"] = out["full_gb"] / out["quarter_gb"]
    out["predict_vs_read_full"] = out["full_seconds"] / out["full_read_seconds"]
    return out
