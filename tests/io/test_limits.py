"""Non-regular files refused before opening, sizes refused before allocating, and voxel sizes a
file states unusably replaced by ``--spacing`` instead of stopping the read."""

from __future__ import annotations

import zipfile

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_mousesegment.io import limits
from napari_mousesegment.io.files import kind, regular_file
from napari_mousesegment.io.readers import read_label_map, read_scan
from napari_mousesegment.io.roi import read_rois
from napari_mousesegment.io.scan import Scan
from napari_mousesegment.io.tiff import read_array, read_tiff, tiff_kind

from ..fuzz.harness import time_limit


def test_every_reader_refuses_a_named_pipe_without_opening_it(fifo):
    assert kind(fifo) == "a named pipe" and tiff_kind(fifo) is None
    like = Scan(np.zeros((2, 3, 4)), (1.0, 1.0, 1.0))
    with time_limit(10):
        for read in (read_array, read_tiff, read_scan, read_rois, lambda p: read_label_map(p, like)):
            with pytest.raises(ValueError, match="pipe.tif: is a named pipe"):
                read(fifo)


def test_regular_file_says_what_a_path_is(tmp_path):
    (tmp_path / "f.tif").write_bytes(b"x")
    assert regular_file(tmp_path / "f.tif") == tmp_path / "f.tif"
    with pytest.raises(ValueError, match="missing.tif: no such file"):
        regular_file(tmp_path / "missing.tif")
    with pytest.raises(ValueError, match="is a folder"):
        regular_file(tmp_path)


def test_check_allocation_refuses_more_than_the_share_of_memory_and_says_how_much():
    assert limits.check_allocation(1 << 20, "a little") == 1 << 20
    with pytest.raises(limits.TooLarge, match=r"--shape 1e5: the labels would need 2\.0 PB of memory"):
        limits.check_allocation(limits.nbytes((100000,) * 3, 2), "--shape 1e5: the labels")
    assert limits.nbytes((10**9, 10**9, 10**9), 8) == 8 * 10**27  # exact, no overflow
    assert limits.human(1234) == "1.2 kB" and limits.human(12) == "12 B"


def test_zip_members_are_judged_by_their_declared_sizes(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("small.roi", b"\0" * 100)
    member = zipfile.ZipFile(tmp_path / "a.zip").infolist()[0]
    assert limits.check_zip_member("a.zip", member, 1000) == 100
    with pytest.raises(limits.TooLarge, match="a.zip: member 'small.roi' declares 100 B"):
        limits.check_zip_member("a.zip", member, 10)
    member.file_size = 3 << 30  # a header that lies: 3 GiB from a few stored bytes
    with pytest.raises(ValueError, match="more than its .* compressed bytes can hold"):
        limits.check_zip_member("a.zip", member, 4 << 30)


def test_a_tiff_with_resolution_zero_needs_spacing_and_takes_it(tmp_path):
    volume = np.full((3, 8, 8), -1000, np.int16)
    tifffile.imwrite(tmp_path / "xr.tif", volume, imagej=True, resolution=(0, 1),
                     metadata={"spacing": 0.1, "unit": "mm", "axes": "ZYX"})
    with pytest.raises(ValueError, match="xr.tif: has no usable voxel size .*XResolution.*give --spacing"):
        read_scan(tmp_path / "xr.tif")
    scan = read_scan(tmp_path / "xr.tif", spacing=(0.2, 0.2, 0.2))
    assert scan.spacing == (0.2, 0.2, 0.2) and scan.image.shape == (3, 8, 8)


def test_a_nifti_with_pixdim_zero_needs_spacing_and_takes_it(tmp_path, capfd):
    flat = nib.Nifti1Image(np.full((4, 5, 6), -1000, np.int16), None)
    flat.header.set_zooms((0.1, 0.0, 0.1))
    nib.save(flat, tmp_path / "flat.nii")
    capfd.readouterr()
    with pytest.raises(ValueError, match="flat.nii: .*no usable voxel size.*give --spacing"):
        read_scan(tmp_path / "flat.nii")
    scan = read_scan(tmp_path / "flat.nii", spacing=(0.3, 0.2, 0.1))
    assert scan.spacing == (0.3, 0.2, 0.1) and scan.image.shape == (6, 5, 4)
    assert capfd.readouterr().err == ""  # nibabel's own "setting 0 dims to 1" log is silenced


def test_a_resample_too_large_for_memory_is_refused_before_allocating():
    from napari_mousesegment.models.preprocess import resample

    with time_limit(10), pytest.raises(limits.TooLarge, match=r"1000.*mm .* would need .*TB of memory"):
        resample(np.zeros((10, 10, 10), np.float32), (1000.0, 1000.0, 1000.0), 0.28, 1)
