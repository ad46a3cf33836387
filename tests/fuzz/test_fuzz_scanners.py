"""Scanner formats on mutated bytes: DICOM files and series, SkyScan logs and slices, OME-TIFF, OME-Zarr
metadata. A scan that still reads must be sound (finite positive spacing, a 3D image); anything
else is one ValueError line naming the file or folder (see :mod:`.harness`)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given

from napari_mousesegment.io.omezarr import write_omezarr
from napari_mousesegment.io.readers import read_scan
from napari_mousesegment.io.arrays import load

from .harness import classify, mutations

pytest.importorskip("pydicom")
VOLUME = np.random.default_rng(1).integers(-1000, 1500, (4, 6, 8)).astype(np.int16)


def _sound(path: Path, **kwargs) -> None:
    """What predict does with a scan: read it lazily, check it, and read every slab."""
    scan = read_scan(path, lazy=True, **kwargs)
    assert all(math.isfinite(s) and s > 0 for s in scan.spacing), f"{path.name}: spacing {scan.spacing}"
    image = load(scan.image)
    assert image.ndim == 3 and image.size > 0 and np.isfinite(image).all(), f"{path.name}: {image.shape}"


@pytest.fixture(scope="module")
def scanners(tmp_path_factory) -> Path:
    from tests.dicom_series import write_dicom_series, write_multiframe_ct
    from tests.skyscan_folder import write_skyscan_folder

    folder = tmp_path_factory.mktemp("scanners")
    write_dicom_series(folder / "series", VOLUME, (0.5, 0.25, 0.25), slope=0.5, intercept=-1100.0, shuffle=False)
    write_multiframe_ct(folder / "enhanced.dcm", VOLUME, (0.5, 0.25, 0.25))
    write_skyscan_folder(folder / "skyscan", (VOLUME + 1024).astype(np.uint16), 35.0, fmt="tif")
    tifffile.imwrite(folder / "scan.ome.tif", VOLUME, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 250, "PhysicalSizeY": 250, "PhysicalSizeZ": 500})
    write_omezarr(folder / "scan.zarr", VOLUME, (0.5, 0.25, 0.25), levels=2)
    return folder


def _copy(src: Path, work: Path, name: str) -> Path:
    target = work / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(src, target)
    return target


def test_dicom_slice_in_a_series(scanners, work):
    series = _copy(scanners / "series", work, "series")
    assert classify(_sound, series, "dicom series") == "ok"  # the seed series reads
    victim = sorted(series.iterdir())[1]
    seed = victim.read_bytes()

    @given(mutations(seed))
    def run(data):
        victim.write_bytes(data)
        if classify(lambda p: _sound(p), series, "dicom series") == "ok":
            _sound(series)

    run()


def test_dicom_enhanced_multiframe(scanners, work):
    seed = (scanners / "enhanced.dcm").read_bytes()
    path = work / "enhanced.dcm"
    assert classify(_sound, scanners / "enhanced.dcm", "dicom multi-frame") == "ok"

    @given(mutations(seed))
    def run(data):
        path.write_bytes(data)
        classify(lambda p: _sound(p), path, "dicom multi-frame")

    run()


@pytest.mark.parametrize("part", ["log", "slice"])
def test_skyscan(part, scanners, work):
    folder = _copy(scanners / "skyscan", work, "skyscan")
    assert classify(lambda p: _sound(p, hu=(24.0, 1024.0)), folder, f"skyscan {part}") == "ok"
    victim = next(folder.glob("*_rec.log")) if part == "log" else sorted(folder.glob("*_rec0*"))[2]
    seed = victim.read_bytes()

    @given(mutations(seed))
    def run(data):
        victim.write_bytes(data)
        classify(lambda p: _sound(p, hu=(24.0, 1024.0)), folder, f"skyscan {part}")

    run()


def test_ome_tiff(scanners, work):
    seed = (scanners / "scan.ome.tif").read_bytes()
    path = work / "scan.ome.tif"
    assert classify(_sound, scanners / "scan.ome.tif", "ome-tiff") == "ok"

    @given(mutations(seed))
    def run(data):
        path.write_bytes(data)
        classify(lambda p: _sound(p), path, "ome-tiff")

    run()


def test_ome_zarr_metadata(scanners, work):
    folder = _copy(scanners / "scan.zarr", work, "scan.zarr")
    assert classify(_sound, folder, "ome-zarr") == "ok"
    victim = folder / ".zattrs"
    seed = victim.read_bytes()

    @given(mutations(seed))
    def run(data):
        victim.write_bytes(data)
        classify(lambda p: _sound(p), folder, "ome-zarr")

    run()
