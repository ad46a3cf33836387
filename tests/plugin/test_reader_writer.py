"""npe2 readers and writers, called as napari calls them, and round trips through real files."""

import zipfile

import numpy as np
import pytest
import tifffile

from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.io.composites import montage
from napari_mousesegment.io.roi import RoiError, read_rois, roi_frame
from napari_mousesegment.io.tiff import read_tiff
from napari_mousesegment.plugin.reader import get_composite_reader, get_roi_reader, get_scan_reader
from napari_mousesegment.plugin.writer import write_labels_rois, write_labels_tiff

from ..conftest import shared_file


def test_readers_decline_files_they_do_not_own(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    for path in (tmp_path / "notes.txt", tmp_path / "scan.tif", tmp_path / "plain", [str(tmp_path / "a.zip")] * 2):
        assert get_roi_reader(path) is None and get_scan_reader(path) is None
    assert get_composite_reader(tmp_path / "plain") is None  # a folder without frame images


def test_imagej_roiset_reads_as_labels_equal_to_imagejs_own_masks():
    path = shared_file("imagej_rois", "RoiSet_35frames.zip")
    [(labels, kwargs, kind)] = get_roi_reader(str(path))(str(path))
    masks = tifffile.imread(shared_file("imagej_rois", "RoiSet_35frames_imagej_masks.tif"))
    assert kind == "labels" and kwargs["axis_labels"] == ("frame", "y", "x")
    frames = min(len(labels), len(masks))
    h, w = min(labels.shape[1], masks.shape[1]), min(labels.shape[2], masks.shape[2])
    assert np.array_equal(labels[:frames, :h, :w], masks[:frames, :h, :w])
    assert labels[frames:].max(initial=0) == 0 and masks[frames:].max(initial=0) == 0
    names = kwargs["features"]["roi"]
    assert names[0] == "background" and names[1:] == [r.name for r in read_rois(path)]


def test_a_damaged_roi_zip_raises_an_error_naming_it(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(RoiError, match="bad.zip"):
        get_roi_reader(str(bad))(str(bad))


def test_labels_written_as_roiset_read_back_identical(tmp_path):
    labels = np.zeros((3, 40, 50), np.uint16)
    labels[0, 5:15, 5:20] = 1
    labels[0, 20:30, 25:45] = 2
    labels[2, 10:35, 10:30] = 1
    [written] = write_labels_rois(str(tmp_path / "heart.zip"), labels, {"name": "heart (unet-heart-synthetic)"})
    rois = read_rois(written)
    assert [roi_frame(r) for r in rois] == [0, 0, 2] and rois[0].name == "heart_f01_1"
    [(back, _, _)] = get_roi_reader(written)(written)
    assert np.array_equal(back > 0, labels[:, : back.shape[1], : back.shape[2]] > 0)
    assert back.shape[0] == 3


def test_ct_labels_tiff_keeps_the_voxel_size(tmp_path):
    labels = np.zeros((4, 6, 8), np.uint8)
    labels[1:3, 2:4, 2:6] = 3
    [path] = write_labels_tiff(str(tmp_path / "organs.tif"), labels,
                               {"scale": (0.28, 0.28, 0.28), "units": ("millimeter",) * 3})
    data, spacing = read_tiff(path)
    assert np.array_equal(data, labels) and spacing == pytest.approx((0.28,) * 3)
    with pytest.raises(ValueError, match="integers"):
        write_labels_tiff(str(tmp_path / "x.tif"), labels.astype(float), {})


def test_montage_png_reads_as_a_35_frame_stack(tmp_path, us_series):
    import imageio.v3 as iio

    path = tmp_path / "series.png"
    iio.imwrite(path, montage(us_series.frames))
    [(frames, kwargs, kind)] = get_composite_reader(str(path))(str(path))
    assert kind == "image" and frames.shape == (35, 240, 320) and np.array_equal(frames, us_series.frames)
    assert kwargs["axis_labels"] == ("frame", "y", "x") and kwargs["metadata"]["grid"] == (5, 7)


def test_nifti_scan_reads_in_hu_with_its_scale(tmp_path):
    import nibabel as nib

    image = ct_phantom(seed=1, shape=(40, 24, 32)).image.astype(np.int16)
    affine = np.diag([0.28, 0.28, 0.28, 1.0])
    nib.save(nib.Nifti1Image(np.transpose(image, (2, 1, 0)), affine), tmp_path / "scan.nii.gz")
    reader = get_scan_reader(str(tmp_path / "scan.nii.gz"))
    [(data, kwargs, kind)] = reader(str(tmp_path / "scan.nii.gz"))
    assert kind == "image" and kwargs["scale"] == pytest.approx((0.28,) * 3) and kwargs["units"] == ("mm",) * 3
    assert data.shape == image.shape and np.array_equal(np.asarray(data, np.int16), image)


def test_rosenhain_label_map_reads_as_named_organs():
    path = shared_file("rosenhain", "CT280_organs.segff")
    layers = get_scan_reader(str(path))(str(path))
    labels = [layer for layer in layers if layer[2] == "labels"]
    assert len(labels) == 1
    organs = labels[0][1]["features"]["organ"]
    assert {"liver", "heart", "lungs"} <= set(organs)
    assert labels[0][1]["units"] == ("mm",) * 3


def test_a_zip_that_is_not_rois_is_refused_by_name(tmp_path):
    foreign = tmp_path / "photos.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("a.txt", "x")
    with pytest.raises(RoiError, match="photos.zip"):
        get_roi_reader(str(foreign))(str(foreign))
