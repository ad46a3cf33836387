"""The DICOM reader: slice order from positions, HU from each slice's rescale, LPS -> RAS geometry,
multi-frame files, and a one-line error naming the file for every broken input."""

import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from napari_mousesegment.io.dicom import is_dicom_folder, looks_like_dicom, read_dicom

from ..dicom_series import write_dicom_series, write_multiframe_ct

SPACING = (0.3, 0.2, 0.1)  # (z, y, x) mm, all different so that a swapped axis shows


@pytest.fixture(scope="module")
def volume():
    """A 12 x 20 x 24 volume of distinct HU values: any flip or transpose changes it."""
    return (np.arange(12 * 20 * 24, dtype=np.float32).reshape(12, 20, 24) * 0.5 - 1000).astype(np.float32)


def _rewrite(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path)


def _refused(path, match, **kwargs) -> str:
    with pytest.raises(ValueError, match=match) as info:
        read_dicom(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_real_ct_slice_is_a_one_slice_volume_in_hu():
    file = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(file)
    scan = read_dicom(file)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert scan.image.shape == (1, 128, 128) and scan.calibrated
    assert scan.image.min() == -896 and scan.image.max() == 1167
    # axial LPS: columns run to the Left and rows to Posterior, so RAS x and y are both reversed
    np.testing.assert_array_equal(scan.image[0], hu[::-1, ::-1])
    assert scan.spacing == pytest.approx((5.0, 0.661468, 0.661468))  # z from SliceThickness
    assert scan.geometry.affine[:3, 3] == pytest.approx([158.135803, 179.035797, -75.699997])  # RAS origin
    assert looks_like_dicom(Path(file))


def test_shuffled_series_reads_back_the_volume(tmp_path, volume):
    paths = write_dicom_series(tmp_path, volume, SPACING, slope=0.5, intercept=-1000)
    assert sorted(paths) != paths  # the names do not give the order
    (tmp_path / "README.txt").write_text("scanned on Tuesday")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    assert is_dicom_folder(tmp_path) and not is_dicom_folder(tmp_path / "nothing")
    scan = read_dicom(tmp_path)
    assert scan.image.dtype == np.float32 and scan.calibrated
    np.testing.assert_array_equal(scan.image, volume)
    assert scan.spacing == pytest.approx(SPACING)
    lazy = read_dicom(tmp_path, lazy=True)
    assert isinstance(lazy.image, da.Array) and lazy.image.numblocks[0] == len(volume)
    np.testing.assert_array_equal(lazy.image.compute(), volume)


def test_per_slice_rescale_and_int16_when_exact(tmp_path, volume):
    small = np.round(volume[:, :4, :5] / 10) * 10  # within 12 bits of stored range
    intercepts = -1024.0 - np.arange(len(small))  # each slice its own intercept
    write_dicom_series(tmp_path, small, SPACING, slope=1.0, intercept=intercepts)
    scan = read_dicom(tmp_path)
    assert scan.image.dtype == np.int16
    np.testing.assert_array_equal(scan.image, small)


@pytest.mark.parametrize("orientation", [(0, 1, 0, 0, 0, -1), (1, 0, 0, 0, -1, 0), (-1, 0, 0, 0, 1, 0),
                                         (0, 0, 1, 1, 0, 0)])
def test_any_orientation_gives_the_same_world_image(tmp_path, volume, orientation):
    paths = write_dicom_series(tmp_path, volume, SPACING, slope=0.5, intercept=-1000, orientation=orientation)
    scan = read_dicom(tmp_path)
    np.testing.assert_array_equal(scan.image, volume)
    assert scan.spacing == pytest.approx(SPACING)
    # the file-order affine agrees with nibabel's own reading of the first slice (rows, columns swapped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel calls its DICOM readers experimental
        from nibabel.nicom.dicomwrappers import wrapper_from_file

        nib_lps = wrapper_from_file(str(paths[0])).affine
    ours_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ scan.geometry.affine
    np.testing.assert_allclose(ours_lps[:3, [1, 0, 3]], nib_lps[:3, [0, 1, 3]], atol=1e-9)


@pytest.mark.parametrize("per_frame", [False, True])
def test_enhanced_multiframe_file_reads_back_the_volume(tmp_path, volume, per_frame):
    n = 24 if per_frame else 12  # the sagittal file has one frame per x
    intercept = -1000.0 - np.arange(n) if per_frame else -1000.0
    file = write_multiframe_ct(tmp_path / "ct.dcm", volume, SPACING, slope=0.5, intercept=intercept,
                               per_frame_rescale=per_frame, orientation=(0, 1, 0, 0, 0, -1) if per_frame else None)
    for lazy in (False, True):
        scan = read_dicom(file, lazy=lazy)
        np.testing.assert_array_equal(np.asarray(scan.image), volume)
        assert scan.spacing == pytest.approx(SPACING)


def test_two_series_need_a_choice(tmp_path, volume):
    write_dicom_series(tmp_path, volume[:3], SPACING, slope=0.5, series_uid="1.2.826.0.1.1")
    write_dicom_series(tmp_path, volume[:5] + 7, SPACING, slope=0.5, series_uid="1.2.826.0.1.2")
    message = _refused(tmp_path, "--series")
    assert str(tmp_path) in message and "1.2.826.0.1.1" in message and "1.2.826.0.1.2" in message
    np.testing.assert_array_equal(read_dicom(tmp_path, series="1.2.826.0.1.2").image, volume[:5] + 7)
    assert "1.2.826.0.1.1" in _refused(tmp_path, "no series 9.9", series="9.9")


def test_missing_slice_is_refused(tmp_path, volume):
    paths = write_dicom_series(tmp_path, volume[:4], SPACING)
    paths[1].unlink()  # steps 0.6, 0.3 mm: their median, 0.45, would hide the gap
    assert str(tmp_path) in _refused(tmp_path, "missing slice between positions")


def test_duplicated_slice_is_refused(tmp_path, volume):
    paths = write_dicom_series(tmp_path, volume[:5], SPACING)
    (tmp_path / "copy.dcm").write_bytes(paths[2].read_bytes())
    assert "copy.dcm" in _refused(tmp_path, "same slice position")


def test_mixed_orientations_are_refused(tmp_path, volume):
    paths = write_dicom_series(tmp_path, volume[:5], SPACING)
    _rewrite(paths[3], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    assert paths[3].name in _refused(tmp_path, "mixed orientations")


def test_mr_is_refused(tmp_path, volume):
    write_dicom_series(tmp_path, volume[:3], SPACING, modality="MR")
    assert str(tmp_path) in _refused(tmp_path, "modality MR, not CT")


def test_zero_pixel_spacing_is_refused(tmp_path, volume):
    paths = write_dicom_series(tmp_path, volume[:3], SPACING)
    _rewrite(paths[1], PixelSpacing=[0, 0.2])
    assert paths[1].name in _refused(tmp_path, "PixelSpacing .* not positive")


@pytest.mark.parametrize("keep", [slice(0, 300), slice(0, -7)], ids=["header", "pixels"])
def test_truncated_file_is_named(tmp_path, volume, keep):
    paths = write_dicom_series(tmp_path, volume[:3], SPACING)
    paths[1].write_bytes(paths[1].read_bytes()[keep])
    assert paths[1].name in _refused(tmp_path, "truncated|pixel data cannot be read")


def test_folder_without_dicom_and_non_dicom_file(tmp_path):
    (tmp_path / "README.txt").write_text("no scan here")
    assert not is_dicom_folder(tmp_path)
    assert str(tmp_path) in _refused(tmp_path, "no DICOM files")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a DICOM file at all " * 20)
    assert "junk.dcm" in _refused(junk, "not a whole DICOM image|not a readable DICOM")


def test_lazy_read_names_a_broken_slice_when_it_is_read(tmp_path, volume):
    paths = write_dicom_series(tmp_path, volume[:3], SPACING)
    paths[1].write_bytes(paths[1].read_bytes()[:-7])
    image = read_dicom(tmp_path, lazy=True).image  # headers are whole: the damage shows on reading
    with pytest.raises(ValueError, match=f"{paths[1].name}: pixel data cannot be read"):
        image.compute()


def test_gantry_tilt_is_refused_not_sheared(tmp_path, volume):
    paths = write_dicom_series(tmp_path, volume[:5], SPACING, shuffle=False)
    for k, path in enumerate(paths):  # each slice 0.1 mm further along y: an 18° tilt of 0.3 mm slices
        position = [float(v) for v in pydicom.dcmread(path).ImagePositionPatient]
        _rewrite(path, ImagePositionPatient=[position[0], position[1] + 0.1 * k, position[2]])
    assert str(tmp_path) in _refused(tmp_path, "gantry tilt")


def test_one_slice_without_thickness_has_no_voxel_size(tmp_path, volume):
    from napari_mousesegment.io.readers import read_scan

    [path] = write_dicom_series(tmp_path, volume[:1], SPACING)
    ds = pydicom.dcmread(path)
    del ds.SliceThickness
    ds.save_as(path)
    assert read_dicom(path).spacing is None  # not a made-up 1 mm
    with pytest.raises(ValueError, match="no voxel size; give the spacing"):
        read_scan(path)
    assert read_scan(path, (0.3, 0.2, 0.1)).spacing == (0.3, 0.2, 0.1)
