import os
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import read_roi
import tifffile
from roifile import ROI_TYPE, ImagejRoi

from napari_mousesegment.io.roi import (
    RoiError,
    RoiSkipped,
    fill_polygon,
    labels_to_rois,
    mask_outlines,
    polygon_roi,
    read_rois,
    roi_frame,
    roi_mask,
    roi_polygon,
    rois_to_labels,
    write_roiset,
)
from napari_mousesegment.organs import (
    CT_ORGANS,
    GLASBEY,
    OTHER_ROI_GROUPS,
    US_ORGANS,
    hex_rgb,
    roi_style,
)

from ..conftest import shared_file
from .roi_shapes import in_roi_order, nasty_instances


def test_every_roi_type_matches_imagej_own_masks():
    rois = read_rois(shared_file("imagej_rois", "RoiSet_35frames.zip"))
    masks = tifffile.imread(shared_file("imagej_rois", "RoiSet_35frames_imagej_masks.tif"))
    types = set()
    for value, roi in enumerate(rois, start=1):
        expected = masks[roi_frame(roi)] == value
        assert np.array_equal(roi_mask(roi, masks.shape[1:]), expected), roi.name
        types.add(roi.roitype.name)
    assert types == {"OVAL", "RECT", "POLYGON", "FREEHAND", "TRACED"}
    labels = rois_to_labels(rois, masks.shape, source="RoiSet_35frames.zip")
    assert np.array_equal(labels, masks)


def test_polygon_fill_matches_imagej_for_polygon_rois():
    rois = read_rois(shared_file("imagej_rois", "RoiSet_35frames.zip"))
    masks = tifffile.imread(shared_file("imagej_rois", "RoiSet_35frames_imagej_masks.tif"))
    polygons = [(v, r) for v, r in enumerate(rois, start=1) if r.roitype.name in ("POLYGON", "FREEHAND", "TRACED")]
    for value, roi in polygons:
        assert np.array_equal(fill_polygon(roi_polygon(roi), masks.shape[1:]), masks[roi_frame(roi)] == value)
    assert len(polygons) == 5


def test_oval_and_rectangle_fill_by_their_bounds():
    oval = ImagejRoi(roitype=ROI_TYPE.OVAL, left=2, top=1, right=7, bottom=4, name="o")
    expected = np.array([[0, 0, 0, 0, 0, 0, 0, 0],
                         [0, 0, 0, 1, 1, 1, 0, 0],
                         [0, 0, 1, 1, 1, 1, 1, 0],
                         [0, 0, 0, 1, 1, 1, 0, 0],
                         [0, 0, 0, 0, 0, 0, 0, 0]], bool)
    assert np.array_equal(roi_mask(oval, (5, 8)), expected)
    rect = ImagejRoi(roitype=ROI_TYPE.RECT, left=-2, top=3, right=3, bottom=9, name="r")
    mask = roi_mask(rect, (5, 8))
    assert mask.sum() == 6 and mask[3:5, 0:3].all()


def test_lines_and_points_are_skipped_with_a_warning_never_filled():
    line = ImagejRoi(roitype=ROI_TYPE.LINE, x1=1, y1=1, x2=6, y2=6, name="cut", position=1)
    square = polygon_roi(np.array([[1, 1], [5, 1], [5, 5], [1, 5]]), "sq", frame=0)
    with pytest.warns(RoiSkipped, match="cut.*line"):
        labels = rois_to_labels([line, square], (1, 8, 8), source="mixed.zip")
    assert set(np.unique(labels).tolist()) == {0, 2}
    with pytest.raises(RoiError, match="encloses no area"):
        roi_mask(line, (8, 8))


def test_fill_square_covers_enclosed_pixels():
    mask = fill_polygon(np.array([[2, 1], [5, 1], [5, 4], [2, 4]]), (6, 8))
    assert mask.sum() == 9 and mask[1:4, 2:5].all()


def test_fill_clips_to_the_image():
    mask = fill_polygon(np.array([[-5.0, -5.0], [3.0, -5.0], [3.0, 3.0], [-5.0, 3.0]]), (10, 10))
    assert mask.sum() == 9 and mask[:3, :3].all()


@pytest.mark.parametrize("xy", [np.zeros((2, 2)), np.array([[0, 0], [1, np.nan], [2, 2]])])
def test_fill_refuses_degenerate_polygons(xy):
    with pytest.raises(RoiError):
        fill_polygon(xy, (4, 4))


def test_polygon_roi_position_is_one_based_and_read_roi_agrees(tmp_path):
    xy = np.array([[10.5, 10.25], [30.0, 12.0], [25.125, 40.0]])
    path = write_roiset(tmp_path / "set.zip", [polygon_roi(xy, "heart_f07_1", frame=6)])
    (roi,) = read_rois(path)
    assert roi.position == 7 and roi_frame(roi) == 6
    assert np.allclose(roi_polygon(roi), xy)
    independent = read_roi.read_roi_zip(str(path))["heart_f07_1"]  # a second, independent parser
    assert independent["type"] == "polygon"
    position = independent["position"]
    assert (position if isinstance(position, int) else position.get("slice")) == 7
    assert np.allclose(independent["x"], xy[:, 0]) and np.allclose(independent["y"], xy[:, 1])


def test_write_roiset_overwrites_instead_of_appending(tmp_path):
    square = np.array([[1, 1], [5, 1], [5, 5], [1, 5]])
    path = tmp_path / "set.zip"
    write_roiset(path, [polygon_roi(square, "a", 0), polygon_roi(square + 2, "b", 1)])
    write_roiset(path, [polygon_roi(square, "c", 0)])
    assert [r.name for r in read_rois(path)] == ["c"]
    assert not list(tmp_path.glob("*.partial"))


def test_write_roiset_refuses_duplicates_and_empty(tmp_path):
    square = np.array([[1, 1], [5, 1], [5, 5]])
    with pytest.raises(RoiError, match="unique"):
        write_roiset(tmp_path / "a.zip", [polygon_roi(square, "x", 0), polygon_roi(square, "x", 1)])
    with pytest.raises(RoiError, match="empty"):
        write_roiset(tmp_path / "b.zip", [])


def test_read_rois_names_the_file_on_bad_input(tmp_path):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(shared_file("imagej_rois", "RoiSet_35frames.zip").read_bytes()[:300])
    with pytest.raises(RoiError, match="truncated.zip"):
        read_rois(truncated)
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(RoiError, match="not ImageJ ROIs"):
        read_rois(foreign)
    with pytest.raises(RoiError, match="no such"):
        read_rois(tmp_path / "missing.roi")


def test_rois_to_labels_refuses_roi_off_the_stack_or_outside_the_image():
    roi = polygon_roi(np.array([[1, 1], [5, 1], [5, 5]]), "late", frame=9)
    with pytest.raises(RoiError, match="set.zip.*'late'.*frame 10"):
        rois_to_labels([roi], (3, 8, 8), source="set.zip")
    far = polygon_roi(np.array([[50, 50], [60, 50], [60, 60]]), "far", frame=0)
    with pytest.raises(RoiError, match="set.zip.*'far'.*outside"):
        rois_to_labels([far], (3, 8, 8), source="set.zip")
    unplaced = polygon_roi(np.array([[1, 1], [5, 1], [5, 5]]), "unplaced")
    assert rois_to_labels([unplaced], (3, 8, 8), default_frame=2)[2].any()


def test_single_imagej_roi_files_read(tmp_path):
    (roi,) = read_rois(shared_file("imagej_rois", "polygon_integer.roi"))
    assert roi_polygon(roi).shape[1] == 2


def test_duplicate_names_in_a_zip_are_read_with_a_warning(tmp_path):
    square = np.array([[1, 1], [5, 1], [5, 5], [1, 5]])
    path = tmp_path / "dup.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:  # as appending to a RoiSet leaves it
        warnings.simplefilter("ignore")  # zipfile may warn about the duplicate member name
        for k in (0, 1):
            archive.writestr("same.roi", polygon_roi(square + k, "same", k).tobytes())
        archive.writestr("__MACOSX/._same.roi", b"resource fork")
    with pytest.warns(UserWarning, match="dup.zip.*more than once.*same"):
        rois = read_rois(path)
    assert [roi_frame(r) for r in rois] == [0, 1]  # both members, not the last one twice


def test_damaged_roi_members_name_the_file(tmp_path):
    good = polygon_roi(np.array([[1, 1], [9, 1], [9, 9], [1, 9]]), "a", 0).tobytes()
    path = tmp_path / "cut.roi"
    path.write_bytes(good[:70])
    with pytest.raises(RoiError, match="cut.roi"):
        read_rois(path)


def test_hyperstack_rois_take_their_frame_from_z_or_t():
    square = np.array([[1, 1], [5, 1], [5, 5]])
    roi = polygon_roi(square, "t")
    roi.c_position, roi.z_position, roi.t_position = 1, 1, 12
    assert roi_frame(roi) == 11
    roi.z_position = 3
    with pytest.raises(RoiError, match="ambiguous"):
        roi_frame(roi)


def test_instance_outlines_fill_back_to_the_instance_exactly(us_series):
    blob = np.zeros((20, 20), bool)
    blob[3:9, 4:15] = True
    blob[8:16, 9:12] = True  # an L shape: concave corners
    (outline,) = mask_outlines(blob)
    assert np.array_equal(fill_polygon(outline, blob.shape), blob)
    assert not np.any(np.isclose(outline % 1, 0.5))  # no vertex on a pixel centre: no ties
    blob[5, 6] = False  # a hole: a second outline, running the other way
    outer, hole = mask_outlines(blob)
    assert np.array_equal(fill_polygon(outer, blob.shape) ^ fill_polygon(hole, blob.shape), blob)
    assert np.sign(_area(outer)) == -np.sign(_area(hole))  # non-zero winding fills the same
    labels = us_series.labels["liver"][:6]
    rois = labels_to_rois(labels, "liver")
    assert len({r.name for r in rois}) == len(rois) and all(r.name.startswith("liver_f0") for r in rois)
    back = rois_to_labels(rois, labels.shape)
    assert np.array_equal(back > 0, labels > 0)


def _area(xy: np.ndarray) -> float:
    """Signed (shoelace) area of a closed outline: its sign is the outline's direction."""
    x, y = xy[:, 0], xy[:, 1]
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) / 2)


def test_pieces_and_holes_round_trip_as_composite_rois(tmp_path):
    """Several pieces, holes, islands and corner contacts: one composite ROI per instance, which our
    reader (even-odd) fills back to exactly that instance; one-piece instances stay polygons."""
    labels = nasty_instances()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is lost, so nothing is warned about
        rois = labels_to_rois(labels, "placenta")
    composite = [1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0]  # see nasty_instances: plain ones are squares, dots, a line
    assert [int(r.composite) for r in rois] == composite
    assert all(r.roitype == ROI_TYPE.POLYGON for r in rois if not r.composite)
    assert [r.name for r in rois][:3] == ["placenta_f01_1", "placenta_f01_2", "placenta_f02_1"]
    back = read_rois(write_roiset(tmp_path / "nasty.zip", rois))
    assert [r.position for r in back] == [int(r.name.split("_f")[1][:2]) for r in rois]
    assert np.array_equal(rois_to_labels(back, labels.shape), in_roi_order(labels))
    single = labels_to_rois(labels[0])  # a 2D image: no stack position
    assert single[0].composite and single[0].position == 0
    assert np.array_equal(rois_to_labels(single, (1, *labels.shape[1:]))[0], in_roi_order(labels[:1])[0])


def test_rois_carry_their_organs_group_and_colour_through_a_roiset(tmp_path):
    labels = nasty_instances()[:1]  # a composite and a polygon
    for organ in ("heart", "liver", "vitelline duct"):
        group, rgb = roi_style(organ)
        back = read_rois(write_roiset(tmp_path / f"{organ}.zip", labels_to_rois(labels, organ)))
        assert [r.composite for r in back] == [True, False]
        assert [(r.group, r.stroke_color) for r in back] == [(group, bytes((255, *rgb)))] * 2  # ARGB, opaque
    assert roi_style("Heart ") == roi_style("heart") == (2, (255, 0, 0))


def test_roi_styles_are_fixed_distinct_and_the_same_in_every_process():
    known = {organ: roi_style(organ) for organ in (*US_ORGANS, *CT_ORGANS)}
    assert known["heart"] == (2, (255, 0, 0)) and known["placenta"] == (8, (0, 159, 255))
    assert len({g for g, _ in known.values()}) == len({c for _, c in known.values()}) == len(known)
    others = ["yolk_sac", "umbilical cord", "brain", "x"]
    here = [roi_style(o) for o in others]
    assert all(g in OTHER_ROI_GROUPS and c == hex_rgb(GLASBEY[g]) for g, c in here)
    script = f"from napari_mousesegment.organs import roi_style; print([roi_style(o) for o in {others!r}])"
    for seed in ("1", "2"):  # Python's own str hash differs per process with PYTHONHASHSEED
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed})
        assert done.stdout.strip() == str(here)
