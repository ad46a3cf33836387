"""`predict ct` on what scanners write: the same world image in several containers gives the same labels.

A small native phantom is written as a TIFF (with --spacing), a DICOM series with shuffled names
and a non-trivial rescale, a NIfTI with permuted and flipped axes, a SkyScan folder of raw grey
values, and an OME-Zarr; each is segmented by the built-in MOSnet through the CLI.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_mousesegment.cli import main
from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.io.omezarr import write_omezarr
from napari_mousesegment.io.slicer import read_color_table
from napari_mousesegment.io.tiff import read_tiff, write_tiff
from tests.dicom_series import write_dicom_series
from tests.io.test_geometry import _file_image
from tests.skyscan_folder import write_skyscan_folder

pytest.importorskip("pydicom")
MODEL = ["--model", "mosnet-synthetic", "--condition", "native", "--device", "cpu"]


@pytest.fixture(scope="module")
def phantom():
    return ct_phantom(seed=4, shape=(96, 56, 72))


@pytest.fixture(scope="module")
def reference(phantom, tmp_path_factory):
    """Labels of the plain TIFF, given its spacing on the command line."""
    folder = tmp_path_factory.mktemp("tiff")
    import tifffile

    tifffile.imwrite(folder / "scan.tif", phantom.image)  # no voxel size in the file
    assert main(["predict", "ct", str(folder / "scan.tif"), "--spacing", "0.28", "--out", str(folder / "out"),
                 *MODEL]) == 0
    labels, spacing = read_tiff(folder / "out" / "scan" / "labels.tif")
    assert spacing == pytest.approx((0.28,) * 3) and len(np.unique(labels)) > 5
    return labels


def _labels(out, case):
    return read_tiff(out / case / "labels.tif")[0]


def test_dicom_series_with_shuffled_names_and_rescale_gives_the_tiff_labels(phantom, reference, tmp_path):
    write_dicom_series(tmp_path / "series", phantom.image, (0.28,) * 3, slope=0.5, intercept=-1100.0)
    assert main(["predict", "ct", str(tmp_path / "series"), "--out", str(tmp_path / "out"), *MODEL]) == 0
    assert np.array_equal(_labels(tmp_path / "out", "series"), reference)
    nifti = nib.load(tmp_path / "out" / "series" / "labels.nii.gz")
    assert nifti.shape == (72, 56, 96)  # (column, row, slice) of the series
    names = read_color_table(tmp_path / "out" / "series" / "labels.ctbl")
    assert names[1] == "heart" and json.loads((tmp_path / "out" / "series" / "labels.json").read_text())["organs"]


def test_nifti_with_permuted_flipped_axes_keeps_its_affine(phantom, reference, tmp_path):
    ras = phantom.image.transpose(2, 1, 0)
    data, affine = _file_image(ras, (0.28,) * 3, (1, 2, 0), (-1, 1, -1))
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "scan.nii.gz")
    assert main(["predict", "ct", str(tmp_path / "scan.nii.gz"), "--out", str(tmp_path / "out"), *MODEL]) == 0
    assert np.array_equal(_labels(tmp_path / "out", "scan"), reference)
    written = nib.load(tmp_path / "out" / "scan" / "labels.nii.gz")
    assert np.allclose(written.affine, affine) and written.shape == data.shape
    expected, _ = _file_image(reference.transpose(2, 1, 0), (0.28,) * 3, (1, 2, 0), (-1, 1, -1))
    assert np.array_equal(np.asarray(written.dataobj), expected)  # back in the file's own voxel order


def test_skyscan_grey_values_need_hu_and_then_match(phantom, reference, tmp_path, capsys):
    raw = (phantom.image.astype(np.int32) + 1024).astype(np.uint16)  # air -> 24, water -> 1024
    write_skyscan_folder(tmp_path / "mouse", raw, 280.0, fmt="tif")
    out = tmp_path / "out"
    assert main(["predict", "ct", str(tmp_path / "mouse"), "--out", str(out), *MODEL]) == 2
    assert "not HU" in capsys.readouterr().err
    assert main(["predict", "ct", str(tmp_path / "mouse"), "--hu", "24,1024", "--out", str(out), *MODEL]) == 0
    assert np.array_equal(_labels(out, "mouse"), reference)
    assert not (out / "mouse" / "labels.nii.gz").exists()  # no geometry of its own: TIFF-like
    assert main(["predict", "ct", str(tmp_path / "mouse"), "--hu", "auto", "--out", str(tmp_path / "auto"),
                 *MODEL]) == 0
    assert (_labels(tmp_path / "auto", "mouse") == reference).mean() > 0.98


def test_ome_zarr_is_read_lazily_and_gets_a_nifti(phantom, reference, tmp_path):
    write_omezarr(tmp_path / "scan.zarr", phantom.image, (0.28,) * 3, levels=2)
    assert main(["predict", "ct", str(tmp_path / "scan.zarr"), "--out", str(tmp_path / "out"), *MODEL]) == 0
    assert np.array_equal(_labels(tmp_path / "out", "scan"), reference)
    assert nib.load(tmp_path / "out" / "scan" / "labels.nii.gz").shape == (72, 56, 96)


def test_a_folder_of_two_series_asks_which(phantom, tmp_path, capsys):
    small = phantom.image[40:44]
    write_dicom_series(tmp_path / "study", small, (0.28,) * 3, series_uid="1.2.3.4")
    write_dicom_series(tmp_path / "study", small, (0.28,) * 3, series_uid="1.2.3.5")
    out = tmp_path / "out"
    assert main(["predict", "ct", str(tmp_path / "study"), "--out", str(out), *MODEL]) == 2
    err = capsys.readouterr().err
    assert "1.2.3.4" in err and "1.2.3.5" in err and "--series" in err and err.count("\n") == 1
    assert main(["predict", "ct", str(tmp_path / "study"), "--series", "1.2.3.5", "--out", str(out), *MODEL]) == 0
    assert _labels(out, "study").shape == small.shape


def test_nan_in_a_lazy_scan_is_named_and_nothing_is_left(phantom, tmp_path, capsys):
    image = phantom.image[:20].astype(np.float32)
    image[12, 5, 5] = np.nan
    write_tiff(tmp_path / "nan.tif", image, (0.28,) * 3)
    assert main(["predict", "ct", str(tmp_path / "nan.tif"), "--out", str(tmp_path / "out"), *MODEL]) == 2
    assert "nan.tif" in capsys.readouterr().err
    assert not (tmp_path / "out" / "nan").exists() or not any((tmp_path / "out" / "nan").iterdir())
