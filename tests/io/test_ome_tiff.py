"""OME-TIFF voxel sizes, lazy TIFF reads, and telling a micro-CT TIFF from a frame stack."""

import numpy as np
import pytest
import tifffile

from napari_mousesegment.io.tiff import read_tiff, tiff_kind, write_stack, write_tiff


def _volume(shape=(6, 5, 7), dtype=np.uint16):
    return np.arange(np.prod(shape), dtype=dtype).reshape(shape)


def _ome(path, volume, axes="ZYX", **sizes):
    tifffile.imwrite(path, volume, ome=True, photometric="minisblack", metadata={"axes": axes, **sizes})
    return path


def _one_line_naming(exc_info, name):
    message = str(exc_info.value)
    assert name in message and "\n" not in message, message


def test_ome_physical_sizes_come_back_in_mm(tmp_path):
    volume = _volume()
    path = _ome(tmp_path / "scan.ome.tif", volume, PhysicalSizeX=50, PhysicalSizeXUnit="µm",
                PhysicalSizeY=40, PhysicalSizeYUnit="µm", PhysicalSizeZ=0.1, PhysicalSizeZUnit="mm")
    image, spacing = read_tiff(path)
    assert np.array_equal(image, volume) and image.dtype == volume.dtype
    assert spacing == pytest.approx((0.1, 0.04, 0.05))


@pytest.mark.parametrize("unit, size, mm", [("nm", 20000, 0.02), ("mm", 0.035, 0.035), ("um", 35, 0.035),
                                            ("cm", 0.002, 0.02), ("\u03bcm", 35, 0.035)])
def test_ome_units(tmp_path, unit, size, mm):
    path = _ome(tmp_path / "u.ome.tif", _volume(), **{f"PhysicalSize{a}": size for a in "XYZ"},
                **{f"PhysicalSize{a}Unit": unit for a in "XYZ"})
    assert read_tiff(path)[1] == pytest.approx((mm,) * 3)


def test_ome_default_unit_is_micrometre(tmp_path):
    path = _ome(tmp_path / "d.ome.tif", _volume(), PhysicalSizeX=20, PhysicalSizeY=20, PhysicalSizeZ=40)
    assert read_tiff(path)[1] == pytest.approx((0.04, 0.02, 0.02))


def test_ome_without_all_sizes_has_no_spacing(tmp_path):
    assert read_tiff(_ome(tmp_path / "none.ome.tif", _volume()))[1] is None
    xy = _ome(tmp_path / "xy.ome.tif", _volume(), PhysicalSizeX=20, PhysicalSizeY=20)
    assert read_tiff(xy)[1] is None


@pytest.mark.parametrize("sizes, problem", [
    ({"PhysicalSizeX": 0, "PhysicalSizeY": 20, "PhysicalSizeZ": 20}, "PhysicalSizeX"),
    ({"PhysicalSizeX": 20, "PhysicalSizeY": -5, "PhysicalSizeZ": 20}, "PhysicalSizeY"),
    ({"PhysicalSizeX": 20, "PhysicalSizeY": 20, "PhysicalSizeZ": float("nan")}, "PhysicalSizeZ"),
    ({"PhysicalSizeX": 20, "PhysicalSizeY": 20, "PhysicalSizeZ": 20, "PhysicalSizeZUnit": "pixel"},
     "pixel"),
])
def test_bad_ome_sizes_name_the_file(tmp_path, sizes, problem):
    path = _ome(tmp_path / "bad.ome.tif", _volume(), **sizes)
    with pytest.raises(ValueError, match=problem) as exc_info:
        read_tiff(path)
    _one_line_naming(exc_info, "bad.ome.tif")
    assert tiff_kind(path) is None


def test_ome_channels_and_time_points_are_refused_single_ones_are_taken(tmp_path):
    many = _ome(tmp_path / "many.ome.tif", np.zeros((2, 3, 4, 5, 6), np.uint8), axes="TCZYX")
    with pytest.raises(ValueError, match="2 time points, 3 channels") as exc_info:
        read_tiff(many)
    _one_line_naming(exc_info, "many.ome.tif")
    volume = _volume((4, 5, 6), np.uint8)
    single = _ome(tmp_path / "single.ome.tif", volume[None, None], axes="TCZYX",
                  PhysicalSizeX=10, PhysicalSizeY=10, PhysicalSizeZ=10)
    image, spacing = read_tiff(single)
    assert np.array_equal(image, volume) and spacing == pytest.approx((0.01,) * 3)
    assert np.array_equal(read_tiff(single, lazy=True)[0].compute(), volume)


def test_ome_z_stored_after_channel_comes_back_zyx(tmp_path):
    volume = _volume((4, 5, 6), np.uint8)
    path = _ome(tmp_path / "cz.ome.tif", volume[None], axes="CZYX", PhysicalSizeZ=30)
    image, spacing = read_tiff(path)
    assert np.array_equal(image, volume) and spacing is None


def test_imagej_zero_or_bad_resolution_names_the_file(tmp_path):
    volume = np.zeros((3, 4, 5), np.int16)
    for name, resolution, spacing in (("xres0.tif", ((0, 1), (2, 1)), 0.5), ("zero.tif", (2, 2), 0.0),
                                      ("neg.tif", (2, 2), -1.0), ("nan.tif", (2, 2), float("nan"))):
        tifffile.imwrite(tmp_path / name, volume, imagej=True, resolution=resolution,
                         metadata={"axes": "ZYX", "spacing": spacing, "unit": "mm"})
        with pytest.raises(ValueError) as exc_info:
            read_tiff(tmp_path / name)
        _one_line_naming(exc_info, name)
        assert tiff_kind(tmp_path / name) is None


def test_lazy_reads_equal_eager_ones_and_read_only_their_slab(tmp_path):
    volume = np.random.default_rng(0).integers(0, 4000, (12, 33, 41)).astype(np.int16)
    imagej = write_tiff(tmp_path / "ij.tif", volume, (0.05, 0.04, 0.03))
    ome = _ome(tmp_path / "o.ome.tif", volume, PhysicalSizeX=30, PhysicalSizeY=40, PhysicalSizeZ=50)
    for path in (imagej, ome):
        eager, spacing = read_tiff(path)
        lazy, lazy_spacing = read_tiff(path, lazy=True)
        assert not isinstance(lazy, np.ndarray) and hasattr(lazy, "compute")
        assert lazy.shape == eager.shape and lazy.dtype == eager.dtype and lazy_spacing == spacing
        assert max(lazy.chunks[0]) == 1  # one page per chunk: a slab reads only its pages
        assert np.array_equal(lazy[3:7].compute(), eager[3:7])
        assert np.array_equal(lazy[:, 5:9, 2:30].compute(), eager[:, 5:9, 2:30])
        assert np.array_equal(np.asarray(lazy), volume)


def test_lazy_array_reads_pixels_when_computed_not_when_opened(tmp_path):
    volume = np.zeros((5, 4, 6), np.uint8)
    path = write_tiff(tmp_path / "late.tif", volume, (0.1, 0.1, 0.1))
    lazy, _ = read_tiff(path, lazy=True)
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[4].dataoffsets[0]
    raw[offset:offset + 24] = bytes([7]) * 24  # the last slice changes after the lazy open
    path.write_bytes(bytes(raw))
    assert lazy[4].compute().max() == 7 and lazy[:4].compute().max() == 0


def test_unreadable_tiff_names_the_file(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError) as exc_info:
        read_tiff(tmp_path / "junk.tif", lazy=True)
    _one_line_naming(exc_info, "junk.tif")
    assert tiff_kind(tmp_path / "junk.tif") is None
    assert tiff_kind(tmp_path / "missing.tif") is None


def test_tiff_kind_claims_volumes_with_a_voxel_size_only(tmp_path):
    volume = _volume((4, 5, 6), np.uint8)
    assert tiff_kind(write_tiff(tmp_path / "ct.tif", volume, (0.1, 0.1, 0.1))) == "scan"
    assert tiff_kind(_ome(tmp_path / "ct.ome.tif", volume, PhysicalSizeX=9, PhysicalSizeY=9,
                          PhysicalSizeZ=9)) == "scan"
    assert tiff_kind(write_stack(tmp_path / "us.tif", volume)) is None
    assert tiff_kind(write_stack(tmp_path / "labels.tif", volume, compress=True)) is None
    assert tiff_kind(_ome(tmp_path / "nosize.ome.tif", volume)) is None
    tifffile.imwrite(tmp_path / "photo.tif", volume[0], imagej=True, resolution=(10, 10),
                     metadata={"axes": "YX", "spacing": 0.1, "unit": "mm"})
    assert tiff_kind(tmp_path / "photo.tif") is None
    assert tiff_kind(_ome(tmp_path / "photo.ome.tif", volume[0], axes="YX", PhysicalSizeX=9,
                          PhysicalSizeY=9, PhysicalSizeZ=9)) is None
    tifffile.imwrite(tmp_path / "plain.tif", volume, photometric="minisblack")
    assert tiff_kind(tmp_path / "plain.tif") is None
