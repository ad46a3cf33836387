"""Round trips through the real ImageJ 1.53t, not only through our own reader."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_mousesegment.io.roi import polygon_roi, write_roiset
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
