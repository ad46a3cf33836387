import nibabel
import numpy as np
import pytest

from napari_mousesegment.io.readers import read_scan
from napari_mousesegment.io.rosenhain import map_classes, parse_cls
from napari_mousesegment.io.tiff import read_tiff, write_tiff

from ..conftest import shared_file

CLS = ("ClassColors=0 0 0 255|1 1 1 255|2 2 2 255|3 3 3 255|4 4 4 255\n"
       "ClassIndices=0|5|7|2|9\nClassNames=unclassified|Heart|Trachea|Lung|Kidneys\n")


def test_cls_mapping_follows_names_not_numbers():
    classes = parse_cls(CLS)
    assert classes == {0: "unclassified", 5: "Heart", 7: "Trachea", 2: "Lung", 9: "Kidneys"}
    assert map_classes(classes) == {"heart": 5, "lungs": 2, "kidneys": 9}
    with pytest.raises(ValueError, match="ClassNames"):
        parse_cls("ClassColors=1|2")


def test_real_rosenhain_label_map_is_read_and_oriented_head_first():
    scan = read_scan(shared_file("rosenhain", "CT280_organs.segff"))
    assert scan.image is None and scan.labels.shape == (242, 121, 154)
    assert scan.spacing == pytest.approx((0.28, 0.28, 0.28))
    assert scan.organs == {"heart": 1, "bone": 3, "lungs": 4, "kidneys": 10, "liver": 11}
    z = {o: np.argwhere(scan.labels == v)[:, 0].mean() for o, v in scan.organs.items()}
    assert z["lungs"] < z["liver"] < z["kidneys"] and z["heart"] < z["liver"]


def _rosenhain_folder(root, hu, labels):
    """A scan folder as the database ships it: Analyze CT280, raw Organ_280.img, .cls."""
    root.mkdir()
    nibabel.save(nibabel.AnalyzeImage(np.transpose(hu, (2, 1, 0)), np.diag([0.28, 0.28, 0.28, 1])),
                 str(root / "CT280.hdr"))
    labels.astype(np.uint8).tofile(root / "Organ_280.img")  # raw bytes, x fastest, as on disk
    (root / "Organ_280.cls").write_text(CLS)
    return root


def test_rosenhain_folder_maps_classes_and_orients_tail_first_scans(tmp_path):
    z, y, x = 30, 12, 16
    labels = np.zeros((z, y, x), np.uint8)
    labels[3:8, 4:8, 4:12] = 2  # lungs at the head end ...
    labels[20:26, 2:5, 3:6] = 9  # ... kidneys further down
    hu = np.where(labels == 2, -400, 40).astype(np.int16)
    # stored tail first: the same mouse turned 180 degrees, so it comes back as stored head first
    folder = _rosenhain_folder(tmp_path / "M03_024h", hu[::-1, :, ::-1], labels[::-1, :, ::-1])
    scan = read_scan(folder)
    assert scan.organs == {"heart": 5, "lungs": 2, "kidneys": 9}  # listed classes, by name
    assert np.array_equal(scan.labels, labels) and np.array_equal(scan.image, hu)
    assert scan.spacing == pytest.approx((0.28, 0.28, 0.28))


def test_nifti_round_trip_keeps_axes_and_spacing(tmp_path):
    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nibabel.save(nibabel.Nifti1Image(np.transpose(volume, (2, 1, 0)), np.diag([0.1, 0.2, 0.3, 1])),
                 str(tmp_path / "scan.nii.gz"))
    scan = read_scan(tmp_path / "scan.nii.gz")
    assert np.array_equal(scan.image, volume) and scan.spacing == pytest.approx((0.3, 0.2, 0.1))


def test_tiff_without_spacing_needs_one(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "bare.tif", np.zeros((4, 5, 6), np.int16), photometric="minisblack")
    with pytest.raises(ValueError, match="no voxel size"):
        read_scan(tmp_path / "bare.tif")
    assert read_scan(tmp_path / "bare.tif", (0.5, 0.5, 0.5)).spacing == (0.5, 0.5, 0.5)
    write_tiff(tmp_path / "with.tif", np.zeros((4, 5, 6), np.int16), (0.5, 0.25, 0.25))
    assert read_tiff(tmp_path / "with.tif")[1] == pytest.approx((0.5, 0.25, 0.25))


def test_bad_scans_name_the_file(tmp_path):
    broken = tmp_path / "broken.nii"
    broken.write_bytes(b"not a nifti header at all")
    with pytest.raises(ValueError, match="broken.nii"):
        read_scan(broken)
    nan = np.zeros((4, 5, 6), np.float32)
    nan[1, 1, 1] = np.nan
    write_tiff(tmp_path / "nan.tif", nan, (0.28,) * 3)
    with pytest.raises(ValueError, match="NaN"):
        read_scan(tmp_path / "nan.tif")
    (tmp_path / "x.mha").write_text("x")
    with pytest.raises(ValueError, match="x.mha: unsupported"):
        read_scan(tmp_path / "x.mha")
    (tmp_path / "x.dcm").write_text("x")
    with pytest.raises(ValueError, match="x.dcm: .*DICOM"):
        read_scan(tmp_path / "x.dcm")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty: not a scan folder"):
        read_scan(empty)


def test_gff_spacing_comes_back_in_zyx_order(tmp_path):
    pygff = pytest.importorskip("pygff")
    data = pygff.GFF(np.zeros((1, 1, 8, 5, 6), np.int16))
    data.info.voxel_sizes = np.array([0.1, 0.2, 0.5])  # GFF stores (x, y, z)
    pygff.save(str(tmp_path / "scan.gff"), data)
    scan = read_scan(tmp_path / "scan.gff")
    assert scan.image.shape == (8, 5, 6) and scan.spacing == pytest.approx((0.5, 0.2, 0.1))


def test_orientation_never_mirrors():
    from napari_mousesegment.io.scan import Scan, orient_body

    labels = np.zeros((12, 30, 10), np.uint8)  # body axis stored second, tail first
    labels[6, 25, 5] = 1  # lungs, far along the stored body axis
    labels[6, 4, 5] = 2  # kidneys, near its start
    labels[0, 10, 0], labels[1, 10, 0], labels[0, 11, 0], labels[0, 10, 1] = 3, 4, 5, 6  # a right-handed triad
    scan = orient_body(Scan(None, (1.0, 1.0, 1.0), labels, {"lungs": 1, "kidneys": 2}))
    at = {v: np.argwhere(scan.labels == v)[0].astype(float) for v in range(1, 7)}
    assert scan.labels.shape == (30, 12, 10) and at[1][0] < at[2][0]  # head first
    triad = np.array([at[4] - at[3], at[5] - at[3], at[6] - at[3]])
    assert np.linalg.det(triad) > 0  # a rotation, not a mirror image


def test_tiff_spacing_units(tmp_path):
    import tifffile

    for unit, expected in (("micron", 0.5e-3), ("\\u00B5m", 0.5e-3), ("cm", 5.0)):
        tifffile.imwrite(tmp_path / "v.tif", np.zeros((3, 4, 5), np.int16), imagej=True, resolution=(2, 2),
                         metadata={"axes": "ZYX", "spacing": 0.5, "unit": unit})
        assert read_tiff(tmp_path / "v.tif")[1] == pytest.approx((expected,) * 3)
    tifffile.imwrite(tmp_path / "v.tif", np.zeros((3, 4, 5), np.int16), imagej=True, resolution=(2, 2),
                     metadata={"axes": "ZYX", "spacing": 0.5, "unit": "pixel"})
    with pytest.raises(ValueError, match="v.tif.*pixel"):
        read_tiff(tmp_path / "v.tif")
