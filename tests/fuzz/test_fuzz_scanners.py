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

from napari_mousesegment.io.arrays import load
from napari_mousesegment.io.omezarr import write_omezarr
from napari_mousesegment.io.readers import read_scan

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


def _fuzz(victim: Path, target: Path, reader: str, **kwargs) -> None:
    """Damage ``victim``'s bytes every way the harness knows and read ``target`` (the file itself, or
    the folder it belongs to) as predict does; the undamaged seed must read soundly."""
    def read(path):
        return _sound(path, **kwargs)

    assert classify(read, target, reader) == "ok"
    seed = victim.read_bytes()

    @given(mutations(seed))
    def run(data):
        victim.write_bytes(data)
        classify(read, target, reader)

    run()


def _file(src: Path, work: Path) -> Path:
    target = work / src.name
    shutil.copyfile(src, target)
    return target


def test_dicom_slice_in_a_series(scanners, work):
    series = _copy(scanners / "series", work, "series")
    _fuzz(sorted(series.iterdir())[1], series, "dicom series")


def test_dicom_enhanced_multiframe(scanners, work):
    path = _file(scanners / "enhanced.dcm", work)
    _fuzz(path, path, "dicom multi-frame")


@pytest.mark.parametrize("part", ["log", "slice"])
def test_skyscan(part, scanners, work):
    folder = _copy(scanners / "skyscan", work, "skyscan")
    victim = next(folder.glob("*_rec.log")) if part == "log" else sorted(folder.glob("*_rec0*"))[2]
    _fuzz(victim, folder, f"skyscan {part}", hu=(24.0, 1024.0))


def test_ome_tiff(scanners, work):
    path = _file(scanners / "scan.ome.tif", work)
    _fuzz(path, path, "ome-tiff")


def test_ome_zarr_metadata(scanners, work):
    folder = _copy(scanners / "scan.zarr", work, "scan.zarr")
    _fuzz(folder / ".zattrs", folder, "ome-zarr")
