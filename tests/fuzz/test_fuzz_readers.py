"""Every reader on mutated files: a result, or one ValueError line naming the file; never a
traceback, a hang or a silently wrong result (see :mod:`.harness`)."""

from __future__ import annotations

import gzip
import io
import math
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from napari_mousesegment.io.composites import read_composite
from napari_mousesegment.io.readers import read_scan
from napari_mousesegment.io.roi import read_rois, rois_to_labels

from ..conftest import shared_file
from .harness import classify, mutations

ROI_FILES = ("float_point.roi", "freehand_circle.roi", "freehand_integer.roi", "int_point.roi",
             "integer_rectangle.roi", "polygon_circle.roi", "polygon_integer.roi", "subpixel_rectangle.roi",
             "unit_rectangle.roi")
ROISET = "RoiSet_35frames.zip"
#: The NIfTI-1 / Analyze 7.5 header: 348 bytes, where dimensions, data type and voxel size live.
HEADER = (0, 348)
#: Byte offset of pixdim[0] in a NIfTI-1 / Analyze header (8 float32: qfac, then dx, dy, dz, ...).
PIXDIM = 76


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _roi_labels(path: Path, shape=(1, 48, 64)) -> np.ndarray:
    """What ``roi import`` does with a file: read it and fill its ROIs into a label stack."""
    return rois_to_labels(read_rois(path), shape, source=str(path))


@pytest.mark.parametrize("name", ROI_FILES)
def test_single_roi_files(name, work):
    seed = shared_file("imagej_rois", name).read_bytes()
    assert classify(_roi_labels, _write(work / name, seed), "roi") == "ok"

    @given(mutations(seed, focus=(0, 64)))
    def run(data):
        classify(_roi_labels, _write(work / name, data), "roi")

    run()


def test_roiset_zip_bytes(work):
    seed = shared_file("imagej_rois", ROISET).read_bytes()
    assert classify(lambda p: _roi_labels(p, (35, 240, 320)), _write(work / ROISET, seed), "roiset zip") == "ok"

    @given(mutations(seed))
    def run(data):
        classify(lambda p: _roi_labels(p, (35, 240, 320)), _write(work / ROISET, data), "roiset zip")

    run()


def _zip_with(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def test_roiset_members(work):
    """A valid zip (right CRCs) whose members are damaged ROIs, so the ROI parser is reached."""
    with zipfile.ZipFile(shared_file("imagej_rois", ROISET)) as archive:
        members = [(m.filename, archive.read(m)) for m in archive.infolist()]
    valid = _write(work / "members.zip", _zip_with(members))
    assert classify(lambda p: _roi_labels(p, (35, 240, 320)), valid, "roiset members") == "ok"

    def damaged(index):
        return mutations(members[index][1], focus=(0, 64)).map(
            lambda data: _zip_with([*members[:index], (members[index][0], data), *members[index + 1:]]))

    @given(st.integers(0, len(members) - 1).flatmap(damaged))
    def run(data):
        classify(lambda p: _roi_labels(p, (35, 240, 320)), _write(work / "members.zip", data), "roiset members")

    run()


@pytest.mark.parametrize("name", ["montage.png", "montage.jpg"])
def test_composite_montages(name, seeds, work):
    seed = (seeds / name).read_bytes()
    assert read_composite(_write(work / name, seed)).frames.shape == (6, 16, 16)

    @given(mutations(seed, focus=(0, 64)), st.sampled_from([None, (2, 3)]))
    def run(data, grid):
        path = _write(work / name, data)
        if classify(lambda p: read_composite(p, grid=grid), path, name.replace("montage.", "montage ")) == "ok":
            frames = read_composite(path, grid=grid).frames
            assert frames.ndim == 3 and min(frames.shape) >= 1, frames.shape

    run()


def test_tiff_volumes(seeds, work):
    seed = (seeds / "volume.tif").read_bytes()
    _scan_is_sound(_write(work / "volume.tif", seed))

    @given(mutations(seed))
    def run(data):
        path = _write(work / "volume.tif", data)
        if classify(read_scan, path, "tiff volume") == "ok":
            spacing = read_scan(path).spacing
            assert all(math.isfinite(s) and s > 0 for s in spacing), f"{path}: spacing {spacing}"

    run()


def _scan_is_sound(path: Path) -> None:
    """A scan that reads must have a positive finite spacing and a non-empty 3D image."""
    scan = read_scan(path)
    assert all(math.isfinite(s) and s > 0 for s in scan.spacing), f"{path.name}: spacing {scan.spacing}"
    assert scan.image.ndim == 3 and scan.image.size > 0, scan.image.shape


def test_nifti(seeds, work):
    seed = (seeds / "volume.nii").read_bytes()
    assert classify(_scan_is_sound, _write(work / "volume.nii", seed), "nifti .nii") == "ok"  # the seed reads

    @given(mutations(seed, focus=HEADER))
    def run(data):
        path = _write(work / "volume.nii", data)
        if classify(read_scan, path, "nifti .nii") == "ok":
            _scan_is_sound(path)

    run()


def test_nifti_gz_content(seeds, work):
    """Mutated NIfTI bytes, well compressed, so the header parser is reached through gzip."""
    seed = (seeds / "volume.nii").read_bytes()
    assert classify(_scan_is_sound, _write(work / "volume.nii.gz", gzip.compress(seed, compresslevel=1)),
                    "nifti .nii.gz") == "ok"

    @given(mutations(seed, focus=HEADER))
    def run(data):
        path = _write(work / "volume.nii.gz", gzip.compress(data, compresslevel=1))
        if classify(read_scan, path, "nifti .nii.gz") == "ok":
            _scan_is_sound(path)

    run()


def test_nifti_gz_bytes(seeds, work):
    seed = (seeds / "volume.nii.gz").read_bytes()
    assert classify(_scan_is_sound, _write(work / "raw.nii.gz", seed), "nifti .nii.gz bytes") == "ok"

    @given(mutations(seed))
    def run(data):
        path = _write(work / "raw.nii.gz", data)
        if classify(read_scan, path, "nifti .nii.gz bytes") == "ok":
            _scan_is_sound(path)

    run()


@pytest.mark.parametrize("part", ["hdr", "img"])
def test_analyze_pairs(part, seeds, work):
    hdr, img = (seeds / "volume.hdr").read_bytes(), (seeds / "volume.img").read_bytes()
    folder = work / f"analyze_{part}"
    folder.mkdir(exist_ok=True)
    (folder / "volume.hdr").write_bytes(hdr)
    (folder / "volume.img").write_bytes(img)
    assert classify(_scan_is_sound, folder / "volume.hdr", f"analyze .{part}") == "ok"

    @given(mutations(hdr if part == "hdr" else img, focus=HEADER if part == "hdr" else None))
    def run(data):
        (folder / "volume.hdr").write_bytes(data if part == "hdr" else hdr)
        (folder / "volume.img").write_bytes(data if part == "img" else img)
        path = folder / "volume.hdr"
        if classify(read_scan, path, f"analyze .{part}") == "ok":
            _scan_is_sound(path)

    run()


def _header_seed(name: str, seeds: Path, folder: Path) -> tuple[bytearray, Path]:
    """The bytes of a seed NIfTI or Analyze header, checked to read soundly in ``folder`` (with its
    .img beside it for Analyze), to be damaged there."""
    folder.mkdir(exist_ok=True)
    if name == "volume.hdr":
        (folder / "volume.img").write_bytes((seeds / "volume.img").read_bytes())
    seed = bytearray((seeds / name).read_bytes())
    _scan_is_sound(_write(folder / name, bytes(seed)))
    return seed, folder


@pytest.mark.parametrize("name", ["volume.nii", "volume.hdr"])
def test_broken_voxel_size_is_refused(name, seeds, work):
    """A voxel size of 0, below 0 or not finite is refused, never read as some other spacing."""
    seed, folder = _header_seed(name, seeds, work / "pixdim")

    @given(st.integers(1, 3), st.sampled_from([0.0, -0.25, -1.0, math.nan, math.inf, -math.inf]))
    def run(axis, value):
        data = bytearray(seed)
        data[PIXDIM + 4 * axis: PIXDIM + 4 * axis + 4] = struct.pack("<f", value)
        assert classify(read_scan, _write(folder / name, bytes(data)), "nifti pixdim") == "error"

    run()


@pytest.mark.parametrize("name", ["volume.nii", "volume.hdr"])
def test_dimensions_that_do_not_match_the_data_are_refused(name, seeds, work):
    """A header whose dimensions disagree with the data's size is refused, not read as a wrong volume."""
    seed, folder = _header_seed(name, seeds, work / "dims")

    @given(st.integers(1, 3), st.integers(1, 16))
    def run(axis, value):
        data = bytearray(seed)
        at = 40 + 2 * axis  # dim[0..7] are int16 from byte 40
        if struct.unpack("<h", data[at:at + 2])[0] == value:
            return
        data[at:at + 2] = struct.pack("<h", value)
        assert classify(read_scan, _write(folder / name, bytes(data)), "nifti dims") == "error"

    run()


@pytest.mark.parametrize("name", ["image", "labels"])
def test_queue_item_arrays(name, seeds, tmp_path_factory):
    """What the worker reads back from a queue item: the arrays, as they were queued, or a clean error."""
    from napari_mousesegment.active.queue import Queue
    from napari_mousesegment.io.tiff import read_array

    queue = Queue(tmp_path_factory.mktemp("queue"))
    item = queue.add(read_array(seeds / "image.tif"), read_array(seeds / "labels.tif"), "ultrasound", organ="heart")
    target = item.folder / f"{name}.tif"
    seed = target.read_bytes()
    assert classify(lambda p: getattr(item, name)(), target, f"queue item {name}") == "ok"

    @given(mutations(seed))
    def run(data):
        _write(target, data)
        if classify(lambda p: getattr(item, name)(), target, f"queue item {name}") == "ok":
            array = getattr(item, name)()
            assert array.shape == item.shape, f"{target}: shape {array.shape}, item says {item.shape}"

    run()


@given(st.one_of(mutations(b'{"kind": "unet", "organ": "heart", "version": "3", "epochs": [1, 2.5e-3, null]}'),
                 st.sampled_from([b"[" * 100000, b"1" * 5000, b'{"a": 1e999999}', b"\xff\xfe{}", b""])))
def test_json_objects(work, data):
    """Model configs, version indexes and dataset.json go through one reader."""
    from napari_mousesegment.io.jsonfile import read_object

    path = _write(work / "config.json", data)
    if classify(read_object, path, "json object") == "ok":
        assert isinstance(read_object(path), dict)
