"""Bruker SkyScan (NRecon) reconstruction folders: slices in section order, voxel size from the log."""

import numpy as np
import pytest

from napari_mousesegment.io.skyscan import is_skyscan_folder, parse_log, read_skyscan

from ..skyscan_folder import write_log, write_skyscan_folder, write_slice


def _volume(shape=(5, 9, 11), dtype=np.uint8):
    volume = np.random.default_rng(1).integers(0, np.iinfo(dtype).max, shape, endpoint=True)
    return volume.astype(dtype)


def _fails(folder, name, match=None, **kwargs):
    """read_skyscan's error: one line that names ``name``."""
    with pytest.raises(ValueError, match=match) as exc_info:
        read_skyscan(folder, **kwargs)
    message = str(exc_info.value)
    assert name in message and "\n" not in message, message
    return message


@pytest.mark.parametrize("fmt", ["bmp", "png", "tif"])
def test_round_trip_with_spacing_from_the_reconstruction_section(tmp_path, fmt):
    volume = _volume()
    folder = write_skyscan_folder(tmp_path / "M01_Rec", volume, 35.0, fmt=fmt)
    assert is_skyscan_folder(folder)
    scan = read_skyscan(folder)
    assert scan.image.dtype == np.uint8 and np.array_equal(scan.image, volume)
    assert scan.spacing == pytest.approx((0.035, 0.035, 0.035))  # not the acquisition's 17.5 um
    assert scan.calibrated is False and scan.geometry is None and scan.labels is None
    assert scan.source == str(folder)


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16_bit_slices_keep_their_values(tmp_path, fmt):
    volume = _volume(dtype=np.uint16)
    scan = read_skyscan(write_skyscan_folder(tmp_path / "r", volume, 9.0, fmt=fmt))
    assert scan.image.dtype == np.uint16 and np.array_equal(scan.image, volume)


def test_slices_stack_by_their_number_not_as_text(tmp_path):
    volume = _volume((4, 6, 7))
    folder = tmp_path / "rec"
    write_skyscan_folder(folder, volume[:2], 20.0, first=998, digits=3)  # mouse_rec998, mouse_rec999
    for z in (2, 3):  # mouse_rec1000, mouse_rec1001: first as text, last as numbers
        write_slice(folder / f"mouse_rec{998 + z}.bmp", volume[z])
    assert min(p.name for p in folder.glob("*.bmp")) == "mouse_rec1000.bmp"
    assert np.array_equal(read_skyscan(folder).image, volume)
    assert np.array_equal(read_skyscan(folder, lazy=True).image.compute(), volume)


def test_lazy_equals_eager_and_reads_slices_when_computed(tmp_path):
    volume = _volume((6, 8, 10))
    folder = write_skyscan_folder(tmp_path / "r", volume, 35.0, fmt="png")
    eager, lazy = read_skyscan(folder), read_skyscan(folder, lazy=True)
    assert not isinstance(lazy.image, np.ndarray) and lazy.image.chunks[0] == (1,) * 6
    assert lazy.image.shape == eager.image.shape and lazy.image.dtype == eager.image.dtype
    assert lazy.spacing == eager.spacing and lazy.calibrated is False
    assert np.array_equal(lazy.image[2:5].compute(), eager.image[2:5])
    assert np.array_equal(lazy.image[:, 3:6, 1:9].compute(), eager.image[:, 3:6, 1:9])
    assert np.array_equal(lazy.image[4].compute(), volume[4])
    write_slice(folder / "mouse_rec00000005.png", np.full((8, 10), 7, np.uint8))  # after the open
    assert np.array_equal(lazy.image[5].compute(), np.full((8, 10), 7))


def test_the_acquisition_pixel_size_serves_only_when_the_reconstruction_has_none(tmp_path):
    folder = write_skyscan_folder(tmp_path / "r", _volume(), None)
    assert read_skyscan(folder).spacing == pytest.approx((0.0175,) * 3)
    log = folder / "mouse_rec.log"
    log.write_text(log.read_text().replace("Image Pixel Size (um)", "Detector Pixel"))
    _fails(folder, "mouse_rec.log", "has no 'Pixel Size \\(um\\)'; give --spacing")
    assert read_skyscan(folder, spacing=(0.1, 0.05, 0.05)).spacing == (0.1, 0.05, 0.05)
    _fails(folder, "r", "three positive numbers", spacing=(0.1, 0.0, 0.05))


def test_decimal_comma_and_section_step(tmp_path):
    volume = _volume()
    folder = write_skyscan_folder(tmp_path / "r", volume, "35,5")
    assert read_skyscan(folder).spacing == pytest.approx((0.0355,) * 3)
    log = folder / "mouse_rec.log"
    log.write_text(log.read_text().replace("Section to Section Step=1", "Section to Section Step=2"))
    assert read_skyscan(folder).spacing == pytest.approx((0.071, 0.0355, 0.0355))
    for z, path in reversed(list(enumerate(sorted(folder.glob("*.bmp"))))):  # numbered 0, 2, 4, ...
        path.rename(folder / f"mouse_rec{2 * z:08d}.bmp")
    scan = read_skyscan(folder)
    assert np.array_equal(scan.image, volume) and scan.spacing[0] == pytest.approx(0.071)
    log.write_text(log.read_text().replace("Section to Section Step=2", "Section to Section Step=0.5"))
    _fails(folder, "mouse_rec.log", "Section to Section Step")


def test_parse_log_keeps_sections_apart():
    sections = parse_log("[Acquisition]\r\nImage Pixel Size (um)=  17.5\r\n[Reconstruction]\r\n"
                         "Pixel  Size (um)= 35.0\r\n; a comment=1\r\n")
    assert sections["acquisition"] == {"image pixel size (um)": "17.5"}
    assert sections["reconstruction"] == {"pixel size (um)": "35.0"}


def test_missing_log_needs_a_spacing(tmp_path):
    volume = _volume()
    folder = write_skyscan_folder(tmp_path / "r", volume, 35.0)
    (folder / "mouse_rec.log").unlink()
    assert is_skyscan_folder(folder)
    _fails(folder, "mouse_rec.log", "no SkyScan log.*--spacing")
    scan = read_skyscan(folder, spacing=(0.035, 0.035, 0.035))
    assert np.array_equal(scan.image, volume) and scan.spacing == (0.035, 0.035, 0.035)


@pytest.mark.parametrize("value", ["0", "-12.5", "n/a", "", "nan", "inf"])
def test_bad_pixel_size_names_the_log(tmp_path, value):
    folder = write_skyscan_folder(tmp_path / "r", _volume(), value)
    _fails(folder, "mouse_rec.log", "Pixel Size")


def test_no_slices_names_the_folder(tmp_path):
    folder = tmp_path / "empty_Rec"
    folder.mkdir()
    write_log(folder / "mouse_rec.log", "mouse", 35.0, 4, 4)
    assert is_skyscan_folder(folder)
    _fails(folder, "empty_Rec", "no SkyScan slice images")
    assert not is_skyscan_folder(tmp_path / "nowhere")
    (tmp_path / "frames").mkdir()
    write_slice(tmp_path / "frames" / "frame0001.png", np.zeros((4, 4), np.uint8))
    assert not is_skyscan_folder(tmp_path / "frames")
    _fails(tmp_path / "nowhere", "nowhere", "no such folder")


def test_a_gap_in_the_slice_numbers_names_the_missing_slice(tmp_path):
    folder = write_skyscan_folder(tmp_path / "r", _volume((6, 4, 4)), 35.0)
    (folder / "mouse_rec00000003.bmp").unlink()
    _fails(folder, "mouse_rec00000003.bmp", "slice 3 is missing")
    _fails(folder, "mouse_rec00000003.bmp", "slice 3 is missing", lazy=True)


@pytest.mark.parametrize("lazy", [False, True])
def test_odd_slices_are_named(tmp_path, lazy):
    folder = write_skyscan_folder(tmp_path / "size", _volume((4, 6, 6)), 35.0, fmt="png")
    write_slice(folder / "mouse_rec00000002.png", np.zeros((6, 7), np.uint8))
    _fails(folder, "mouse_rec00000002.png", "shape", lazy=lazy)
    folder = write_skyscan_folder(tmp_path / "dtype", _volume((4, 6, 6)), 35.0, fmt="png")
    write_slice(folder / "mouse_rec00000001.png", np.zeros((6, 6), np.uint16))
    _fails(folder, "mouse_rec00000001.png", "uint16", lazy=lazy)
    folder = write_skyscan_folder(tmp_path / "corrupt", _volume((4, 6, 6)), 35.0)
    (folder / "mouse_rec00000003.bmp").write_bytes(b"BM not really a bitmap")
    _fails(folder, "mouse_rec00000003.bmp", "unreadable slice image", lazy=lazy)


def test_rgb_slices_only_when_grey(tmp_path):
    volume = _volume((3, 5, 6))
    folder = write_skyscan_folder(tmp_path / "grey", np.repeat(volume[..., None], 3, axis=-1), 35.0)
    scan = read_skyscan(folder)
    assert np.array_equal(scan.image, volume)
    assert np.array_equal(read_skyscan(folder, lazy=True).image.compute(), volume)
    colour = np.repeat(volume[..., None], 3, axis=-1)
    colour[1, 2, 3, 0] ^= 1
    folder = write_skyscan_folder(tmp_path / "colour", colour, 35.0)
    _fails(folder, "mouse_rec00000001.bmp", "colour")
    with pytest.raises(ValueError, match="mouse_rec00000001.bmp.*colour"):
        read_skyscan(folder, lazy=True).image.compute()


def test_two_reconstructions_in_one_folder_are_refused_unless_one_has_the_log(tmp_path):
    folder = write_skyscan_folder(tmp_path / "r", _volume((3, 4, 4)), 35.0)
    write_slice(folder / "other_rec00000000.bmp", np.zeros((4, 4), np.uint8))
    assert read_skyscan(folder).image.shape == (3, 4, 4)  # the one with its mouse_rec.log
    (folder / "mouse_rec.log").unlink()
    _fails(folder, "r", "several reconstructions", spacing=(1.0, 1.0, 1.0))
