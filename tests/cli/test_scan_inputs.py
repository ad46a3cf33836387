"""`dataset ct` and `queue add --kind ct` take the scans `predict ct` takes, with label maps on their grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_mousesegment.cli import main
from napari_mousesegment.data.ct_dataset import load_case, read_ct_dataset
from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.io.geometry import write_labels_nifti
from napari_mousesegment.io.readers import read_scan
from tests.dicom_series import write_dicom_series
from tests.io.test_geometry import _file_image


@pytest.fixture(scope="module")
def phantom():
    return ct_phantom(seed=6, shape=(40, 32, 36))


def _labels_beside(folder, scan, labels, organs):
    """labels.nii.gz in the scan's own geometry with labels.json beside it, as predict ct writes them."""
    folder.mkdir()
    write_labels_nifti(folder / "labels.nii.gz", labels, scan.geometry)
    (folder / "labels.json").write_text(json.dumps({"organs": organs}))
    return folder / "labels.nii.gz"


def test_dataset_from_a_dicom_series_and_its_corrected_nifti_labels(phantom, tmp_path):
    write_dicom_series(tmp_path / "series", phantom.image, phantom.spacing, slope=0.5, intercept=-1100.0)
    scan = read_scan(tmp_path / "series")
    labels = _labels_beside(tmp_path / "pred", scan, phantom.labels, {"heart": 1, "liver": 3})
    out = tmp_path / "dataset"
    assert main(["dataset", "ct", str(tmp_path / "series"), "--labels", str(labels), "--out", str(out),
                 "--condition", "native"]) == 0
    dataset = read_ct_dataset(out)
    image, truth, spacing = load_case(dataset, "series")
    assert dataset.organs == {"heart": 1, "liver": 3} and spacing == pytest.approx(phantom.spacing)
    assert np.array_equal(image, phantom.image)
    assert np.array_equal(truth, np.where(np.isin(phantom.labels, [1, 3]), phantom.labels, 0))


def test_dataset_wants_one_labels_per_scan_and_organ_names(phantom, tmp_path, capsys):
    ras = phantom.image.transpose(2, 1, 0)
    data, affine = _file_image(ras, (0.28,) * 3, (2, 0, 1), (1, -1, 1))
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "scan.nii.gz")
    out = tmp_path / "dataset"
    assert main(["dataset", "ct", str(tmp_path / "scan.nii.gz"), "--labels", "a.tif", "--labels", "b.tif",
                 "--out", str(out), "--condition", "native"]) == 2
    assert "one --labels per scan" in capsys.readouterr().err
    nib.save(nib.Nifti1Image(np.zeros(data.shape, np.uint8), affine), tmp_path / "bare.nii.gz")
    assert main(["dataset", "ct", str(tmp_path / "scan.nii.gz"), "--labels", str(tmp_path / "bare.nii.gz"),
                 "--out", str(out), "--condition", "native"]) == 2
    assert "bare.nii.gz: no organ names" in capsys.readouterr().err


def test_queue_takes_a_nifti_scan_with_its_labels_nifti(phantom, tmp_path, capsys):
    ras = phantom.image.transpose(2, 1, 0)
    data, affine = _file_image(ras, (0.28,) * 3, (1, 2, 0), (-1, 1, 1))
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "scan.nii.gz")
    scan = read_scan(tmp_path / "scan.nii.gz")
    labels = _labels_beside(tmp_path / "pred", scan, phantom.labels, {"heart": 1})
    queue = tmp_path / "queue"
    assert main(["queue", "add", "--queue", str(queue), "--image", str(tmp_path / "scan.nii.gz"), "--labels",
                 str(labels), "--kind", "ct", "--condition", "native"]) == 0
    assert "added item" in capsys.readouterr().out
    assert main(["queue", "add", "--queue", str(queue), "--image", str(tmp_path / "scan.nii.gz"), "--labels",
                 str(tmp_path / "scan.nii.gz"), "--kind", "ct", "--condition", "native"]) == 2
    assert "labels must be whole numbers from 0 to 255" in capsys.readouterr().err  # HU is not a label map
