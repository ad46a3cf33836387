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
from napari_mousesegment.organs import US_ORGANS

MACRO = Path(__file__).parent / "imagej" / "fill_rois.ijm"


def run_imagej_masks(jar, rois_zip, shape, out_tif):
    """ImageJ's own fill of every ROI in a zip: ROI i gets value i+1 on its slice."""
    n, h, w = shape
    done = subprocess.run(
        ["xvfb-run", "-a", "java", "-Djava.awt.headless=false", "-jar", str(jar), "-batch", str(MACRO),
         f"{rois_zip},{w},{h},{n},{out_tif}"],
        capture_output=True, text=True, timeout=180,
    )
    assert out_tif.exists(), done.stdout + done.stderr
    slices = [int(line.rsplit("slice=", 1)[1]) for line in done.stdout.splitlines() if line.startswith("roi ")]
    return tifffile.imread(out_tif), slices


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
    macro = Path(__file__).parent / "imagej" / "make_rois.ijm"
    done = subprocess.run(
        ["xvfb-run", "-a", "java", "-Djava.awt.headless=false", "-jar", str(imagej_jar), "-batch", str(macro),
         str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )
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
    """labels -> our RoiSet -> ImageJ's own masks: every instance back on its frame (IoU >= 0.98)."""
    from napari_mousesegment.inference.ultrasound import instances

    labels = instances((us_series.labels["placenta"] > 0).astype(np.float32), 0.5, 30)  # touching ones split
    rois = labels_to_rois(labels, "placenta")
    zip_path = write_roiset(tmp_path / "placenta.zip", rois)
    masks, slices = run_imagej_masks(imagej_jar, zip_path, labels.shape, tmp_path / "ij.tif")
    assert len(slices) == len(rois) > 30
    value = 0
    for frame in range(len(labels)):
        for instance in np.unique(labels[frame][labels[frame] > 0]):
            value += 1
            assert slices[value - 1] == frame + 1
            ours, theirs = labels[frame] == instance, masks[frame] == value
            iou = np.sum(ours & theirs) / np.sum(ours | theirs)
            assert iou >= 0.98, (frame, instance, iou)


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
