"""Voxel order and orientation: every axis order and flip a NIfTI may use comes to one (z, y, x) RAS array."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from napari_mousesegment.io.geometry import to_file_order, to_zyx, write_labels_nifti
from napari_mousesegment.io.readers import read_label_map, read_scan
from napari_mousesegment.io.slicer import read_color_table, write_color_table

ORIENTATIONS = [(perm, flips) for perm in itertools.permutations(range(3))
                for flips in itertools.product((1, -1), repeat=3)]


def _file_image(ras: np.ndarray, sizes, perm, flips):
    """The RAS array stored with file axis i = RAS axis perm[i], flipped where flips[i] < 0, and its affine."""
    data = ras.transpose(perm)
    affine = np.eye(4)
    affine[:3, :3] = 0
    for i, (axis, flip) in enumerate(zip(perm, flips)):
        if flip < 0:
            data = np.flip(data, i)
        affine[axis, i] = flip * sizes[axis]
        affine[axis, 3] = (ras.shape[axis] - 1) * sizes[axis] if flip < 0 else 0.0
    return np.ascontiguousarray(data), affine


@pytest.mark.parametrize("perm,flips", ORIENTATIONS)
def test_every_orientation_gives_the_same_ras_volume_and_goes_back(perm, flips, tmp_path):
    ras = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)  # (x, y, z)
    sizes = (0.1, 0.2, 0.3)
    data, affine = _file_image(ras, sizes, perm, flips)
    zyx, spacing, geometry = to_zyx(data, affine)
    assert np.array_equal(zyx, ras.transpose(2, 1, 0))
    assert spacing == pytest.approx((0.3, 0.2, 0.1))
    assert np.array_equal(to_file_order(zyx, geometry), data)
    write_labels_nifti(tmp_path / "labels.nii.gz", zyx.astype(np.uint8), geometry, slab=2)  # streamed in slabs
    written = nib.load(tmp_path / "labels.nii.gz")
    assert np.array_equal(np.asarray(written.dataobj), data.astype(np.uint8)) and np.allclose(written.affine, affine)
    canonical = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(data, affine)).dataobj)
    assert np.array_equal(canonical, ras)  # nibabel agrees on what RAS is


def test_nifti_units_and_labels_written_back_with_the_input_affine(tmp_path):
    ras = np.random.default_rng(0).integers(-1000, 1000, (6, 7, 8)).astype(np.int16)
    data, affine = _file_image(ras, (50.0, 60.0, 70.0), (2, 0, 1), (-1, 1, -1))  # micrometres
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("micron")
    nib.save(image, tmp_path / "scan.nii")
    scan = read_scan(tmp_path / "scan.nii")
    assert scan.spacing == pytest.approx((0.07, 0.06, 0.05))
    labels = (scan.image > 0).astype(np.uint8)
    write_labels_nifti(tmp_path / "labels.nii.gz", labels, scan.geometry)
    back = nib.load(tmp_path / "labels.nii.gz")
    assert np.allclose(back.affine, affine) and back.header.get_xyzt_units()[0] == "micron"
    assert np.array_equal(np.asarray(back.dataobj), (data > 0).astype(np.uint8))
    # read back as a label map, it lies on the scan's grid again
    write_color_table(tmp_path / "labels.ctbl", {1: ("liver", "#9a6324")})
    again, organs = read_label_map(tmp_path / "labels.nii.gz", scan)
    assert np.array_equal(again, labels) and organs == {"liver": 1}


def test_lazy_nifti_reads_the_same_numbers(tmp_path):
    import dask.array as da

    ras = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    data, affine = _file_image(ras, (0.2, 0.2, 0.2), (1, 0, 2), (1, -1, 1))
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "scan.nii")
    lazy = read_scan(tmp_path / "scan.nii", lazy=True)
    assert isinstance(lazy.image, da.Array)
    assert np.array_equal(lazy.image.compute(), read_scan(tmp_path / "scan.nii").image)


def test_zero_voxel_size_and_absurd_spacing_are_refused(tmp_path):
    data = np.zeros((4, 4, 4), np.int16)
    flat = nib.Nifti1Image(data, None)
    flat.header.set_zooms((0.1, 0.0, 0.1))  # pixdim 0, no qform or sform: the voxel size is zero
    nib.save(flat, tmp_path / "flat.nii")
    with pytest.raises(ValueError, match="flat.nii: .*voxel"):
        read_scan(tmp_path / "flat.nii")
    nib.save(nib.Nifti1Image(data, np.diag([100.0, 100.0, 100.0, 1])), tmp_path / "huge.nii")  # 10 cm voxels
    with pytest.raises(ValueError, match="huge.nii: voxel size .* outside"):
        read_scan(tmp_path / "huge.nii")


def test_slicer_colour_table_format(tmp_path):
    write_color_table(tmp_path / "t.ctbl", {2: ("small intestine", "#3cb44b"), 1: ("heart", "#e6194b")})
    lines = (tmp_path / "t.ctbl").read_text().splitlines()
    assert lines[0].startswith("# Color table file") and lines[1] == "# 3 values"
    assert lines[2:] == ["0 background 0 0 0 0", "1 heart 230 25 75 255", "2 small_intestine 60 180 75 255"]
    assert read_color_table(tmp_path / "t.ctbl") == {0: "background", 1: "heart", 2: "small_intestine"}


def test_analyze_is_turned_by_its_own_affine_and_labels_go_back(tmp_path):
    """Analyze 7.5 stores x flipped by default (radiological); nibabel's affine says so, and we follow it."""
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nib.save(nib.AnalyzeImage(data, np.diag([0.2, 0.3, 0.4, 1.0])), tmp_path / "scan.hdr")
    scan = read_scan(tmp_path / "scan.hdr")
    affine = nib.load(tmp_path / "scan.hdr").affine
    assert affine[0, 0] < 0 and scan.spacing == pytest.approx((0.4, 0.3, 0.2))
    assert np.array_equal(scan.image, data[::-1].transpose(2, 1, 0))  # x mirrored into RAS
    write_labels_nifti(tmp_path / "labels.nii.gz", (scan.image % 3).astype(np.uint8), scan.geometry)
    back = nib.load(tmp_path / "labels.nii.gz")
    assert np.allclose(back.affine, affine) and np.array_equal(np.asarray(back.dataobj), data % 3)


def test_nifti_without_qform_or_sform_is_not_mirrored(tmp_path):
    """NIfTI's method 1 (both codes 0): voxel i, j, k at pixdim * (i, j, k), no flip (nibabel's fallback
    affine would mirror x, as for Analyze)."""
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = nib.Nifti1Image(data, None)
    image.header.set_zooms((0.2, 0.3, 0.4))
    nib.save(image, tmp_path / "plain.nii")
    assert int(nib.load(tmp_path / "plain.nii").header["sform_code"]) == 0
    scan = read_scan(tmp_path / "plain.nii")
    assert np.array_equal(scan.image, data.transpose(2, 1, 0)) and scan.spacing == pytest.approx((0.4, 0.3, 0.2))
