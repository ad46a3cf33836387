"""Round trips through the real ImageJ 1.53t, not only through our own reader."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_mousesegment.io.roi import (
    RoiSkipped,
    fill_polygon,
    labels_to_rois,
    polygon_roi,
    read_rois,
    rois_to_labels,
    write_roiset,
)
from napari_mousesegment.organs import GLASBEY, US_ORGANS, hex_rgb, roi_style

from .roi_shapes import in_roi_order, nasty_instances

MACRO = Path(__file__).parent / "imagej" / "fill_rois.ijm"


def run_macro(jar, macro: str, argument: str, cwd=None) -> subprocess.CompletedProcess:
    """Run one of tests/io/imagej/*.ijm in ImageJ's batch mode under Xvfb (``cwd``: its ImageJ folder)."""
    return subprocess.run(
        ["xvfb-run", "-a", "java", "-Djava.awt.headless=false", "-jar", str(jar), "-batch",
         str(MACRO.with_name(macro)), argument],
        check=False, capture_output=True, text=True, timeout=180, cwd=cwd,
    )


def run_imagej(jar, rois_zip, shape, out_tif, cwd=None):
    """ImageJ's own fill of every ROI in a zip (ROI i gets value i+1 on its slice), and what ImageJ
    says of each ROI: {"slice", "group", "rgb" (stroke colour or None), "name", "type"}."""
    n, h, w = shape
    done = run_macro(jar, MACRO.name, f"{rois_zip},{w},{h},{n},{out_tif}", cwd)
    assert out_tif.exists(), done.stdout + done.stderr
    rois = []
    for line in done.stdout.splitlines():
        if line.startswith("roi "):
            head, name = line.split(" name=", 1)
            fields = dict(field.split("=", 1) for field in head.split()[2:])
            rgb = None if fields["rgb"] == "none" else tuple(int(c) for c in fields["rgb"].split(","))
            rois.append({"slice": int(fields["slice"]), "group": int(fields["group"]), "rgb": rgb, "name": name,
                         "type": int(fields["type"])})
    return tifffile.imread(out_tif), rois


def run_imagej_masks(jar, rois_zip, shape, out_tif):
    """ImageJ's own fill of every ROI in a zip, and the slice ImageJ put each ROI on."""
    masks, rois = run_imagej(jar, rois_zip, shape, out_tif)
    return masks, [r["slice"] for r in rois]


@pytest.mark.imagej
@pytest.mark.parametrize("organ", US_ORGANS)
def test_imagej_fills_our_roisets_exactly_on_their_frames(tmp_path, imagej_jar, us_series, organ):
    instances = us_series.organ_instances(organ)
    rois = [polygon_roi(i.polygon, i.name, frame=i.frame) for i in instances]
    zip_path = write_roiset(tmp_path / f"{organ}.zip", rois)
    masks, slices = run_imagej_masks(imagej_jar, zip_path, us_series.frames.shape, tmp_path / "ij.tif")
    assert slices == [i.frame + 1 for i in instances]  # every ROI on its frame in ImageJ
    expected = np.zeros_like(masks)
    for value, inst in enumerate(instances, start=1):
        expected[inst.frame][us_series.labels[organ][inst.frame] == inst.index] = value
    assert np.array_equal(masks, expected)  # ImageJ's fill == our masks, pixel for pixel


@pytest.mark.imagej
def test_rois_written_by_imagej_read_as_imagej_fills_them(tmp_path, imagej_jar):
    """ImageJ draws every area type it has (ovals, sub-pixel and rounded rectangles, rotated
    ellipses and rectangles, composites with holes and pieces) and a line; we read its zip."""
    done = run_macro(imagej_jar, "make_rois.ijm", str(tmp_path))
    assert (tmp_path / "masks.tif").exists(), done.stdout + done.stderr
    masks = tifffile.imread(tmp_path / "masks.tif")
    rois = read_rois(tmp_path / "RoiSet.zip")
    assert len(rois) == 12 and sum(r.composite for r in rois) == 3
    with pytest.warns(RoiSkipped, match="line"):
        labels = rois_to_labels(rois, masks.shape, source="RoiSet.zip")
    assert np.array_equal(labels[:11], masks[:11])  # ImageJ's masks, pixel for pixel
    assert not labels[11].any()  # the line is reported, not filled


@pytest.mark.imagej
def test_exported_instance_labels_open_in_imagej_on_their_frames(tmp_path, imagej_jar, us_series):
    """labels -> our RoiSet -> ImageJ's own masks: every instance back on its frame, exactly."""
    from napari_mousesegment.inference.ultrasound import instances

    labels = instances((us_series.labels["placenta"] > 0).astype(np.float32), 0.5, 30)  # touching ones split
    rois = labels_to_rois(labels, "placenta")
    zip_path = write_roiset(tmp_path / "placenta.zip", rois)
    masks, slices = run_imagej_masks(imagej_jar, zip_path, labels.shape, tmp_path / "ij.tif")
    assert len(slices) == len(rois) > 30
    assert slices == [r.position for r in rois]
    assert np.array_equal(masks, in_roi_order(labels))


@pytest.mark.imagej
def test_polygons_with_vertices_on_pixel_centres_fill_as_imagej_1_53t(tmp_path, imagej_jar):
    """Half-integer vertices put pixel centres exactly on edges: ImageJ's tie rule decides."""
    rng = np.random.default_rng(1)
    rois, polygons = [], []
    for k in range(60):
        n = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(5, 14, n)
        centre = rng.uniform(15, 45, 2)
        xy = np.round(np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1) * 2) / 2
        rois.append(polygon_roi(xy, f"tie{k}", frame=k))
        polygons.append(xy)
    zip_path = write_roiset(tmp_path / "ties.zip", rois)
    masks, _ = run_imagej_masks(imagej_jar, zip_path, (60, 60, 60), tmp_path / "ij.tif")
    for k, xy in enumerate(polygons):
        assert np.array_equal(fill_polygon(xy, (60, 60)), masks[k] == k + 1), k


@pytest.mark.imagej
def test_imagej_fills_pieces_holes_and_corner_contacts_exactly(tmp_path, imagej_jar):
    """Instances in several pieces, with holes, islands in holes and pieces meeting only at corners:
    one composite ROI each, which ImageJ fills back to exactly that instance."""
    labels = nasty_instances()
    rois = labels_to_rois(labels, "heart")
    assert sum(r.composite for r in rois) == 10 and len(rois) == 15
    zip_path = write_roiset(tmp_path / "nasty.zip", rois)
    masks, seen = run_imagej(imagej_jar, zip_path, labels.shape, tmp_path / "ij.tif")
    assert np.array_equal(masks, in_roi_order(labels))  # ImageJ's fill == the instances, pixel for pixel
    assert [r["name"] for r in seen] == [r.name for r in rois]
    assert [r["type"] for r in seen] == [9 if r.composite else 2 for r in rois]  # composite, polygon
    assert [r["slice"] for r in seen] == [r.position for r in rois]


def write_glasbey_lut(imagej_dir: Path) -> None:
    """Fiji's group colours, as far as :data:`GLASBEY` has them, where ImageJ looks for them."""
    rgb = np.zeros((3, 256), np.uint8)
    rgb[:, :len(GLASBEY)] = np.array([hex_rgb(c) for c in GLASBEY]).T
    (imagej_dir / "luts").mkdir()
    (imagej_dir / "luts" / "Glasbey.lut").write_bytes(rgb.tobytes())  # raw LUT: 256 reds, greens, blues


@pytest.mark.imagej
def test_imagej_reports_each_organs_group_and_colour(tmp_path, imagej_jar):
    """Every organ's ROIs, plain and composite, in ImageJ: the organ's group, and the colour that
    ImageJ draws that group in (which replaces any stored stroke colour on reading)."""
    organs = ["heart", "liver", "placenta", "yolk_sac"]
    labels = nasty_instances()[:1]  # a composite and a polygon
    rois = [roi for organ in organs for roi in labels_to_rois(labels, organ)]
    zip_path = write_roiset(tmp_path / "organs.zip", rois)
    write_glasbey_lut(tmp_path)
    _, seen = run_imagej(imagej_jar, zip_path, labels.shape, tmp_path / "ij.tif", cwd=tmp_path)
    expected = [roi_style(organ) for organ in organs for _ in range(2)]
    assert [(r["group"], r["rgb"]) for r in seen] == expected
    assert len({group for group, _ in expected}) == len({rgb for _, rgb in expected}) == len(organs)
    assert [r.group for r in rois] == [group for group, _ in expected]  # the stored group and stroke colour
    assert [tuple(r.stroke_color[1:]) for r in rois] == [rgb for _, rgb in expected]


@pytest.mark.imagej
def test_imagej_opens_frames_tif_as_a_stack_with_the_rois_on_their_slices(tmp_path, imagej_jar, us_series):
    """A prediction folder as the README says to use it: frames.tif, then a RoiSet on top."""
    from napari_mousesegment.jobs.rois import write_fiji_files, write_rois

    labels = us_series.labels["heart"]
    write_rois(tmp_path / "heart_RoiSet.zip", labels, "heart")
    write_fiji_files(tmp_path, us_series.frames, ["heart"])
    done = run_macro(imagej_jar, "open_frames.ijm", f"{tmp_path / 'frames.tif'},{tmp_path / 'heart_RoiSet.zip'}")
    lines = done.stdout.splitlines()
    assert "stack slices=35 width=320 height=240 bits=8" in lines, done.stdout + done.stderr
    slices = [int(line.rsplit("=", 1)[1]) for line in lines if line.startswith("roi ")]
    assert slices == [r.position for r in read_rois(tmp_path / "heart_RoiSet.zip")]
    assert sorted(set(slices)) == [k + 1 for k in range(35) if labels[k].any()]
