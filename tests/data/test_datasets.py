import json

import numpy as np
import pytest

from napari_mousesegment.data.ct_dataset import write_ct_case
from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.data.phantom_us import write_us_series
from napari_mousesegment.io.composites import read_composite
from napari_mousesegment.io.roi import read_rois, roi_frame, rois_to_labels
from napari_mousesegment.io.tiff import read_tiff
from napari_mousesegment.organs import CT_ORGANS, US_FOLDERS, US_ORGANS


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory, us_series):
    return write_us_series(tmp_path_factory.mktemp("lab") / "series_007", us_series)


def test_lab_layout(series_dir):
    assert (series_dir / "series_007.tif").is_file()
    assert (series_dir / "series_007_montage.png").is_file()
    for organ in US_ORGANS:
        assert (series_dir / US_FOLDERS[organ]).is_dir()


def test_montage_and_stack_give_the_same_frames(series_dir, us_series):
    stack = read_composite(series_dir / "series_007.tif")
    tiled = read_composite(series_dir / "series_007_montage.png")
    assert tiled.grid == (5, 7)
    assert np.array_equal(stack.frames, us_series.frames)
    assert np.array_equal(tiled.frames, stack.frames)


def test_every_roi_lands_on_its_frame(series_dir, us_series):
    for organ in US_ORGANS:
        files = sorted((series_dir / US_FOLDERS[organ]).glob("frame_*.zip"))
        assert files
        rois = []
        for path in files:
            frame = int(path.stem.split("_")[1]) - 1
            found = read_rois(path)
            assert all(roi_frame(r) == frame for r in found), path
            assert all(r.name.startswith(f"{organ}_f{frame + 1:02d}_") for r in found)
            rois += found
        labels = rois_to_labels(rois, us_series.frames.shape)
        assert np.array_equal(labels > 0, us_series.labels[organ] > 0)
        assert len(rois) == len(us_series.organ_instances(organ))


def test_ct_dataset_contract_keeps_only_annotated_organs(tmp_path):
    scan = ct_phantom(1, "native", shape=(40, 32, 40))
    root = write_ct_case(tmp_path / "native_set", "m01", scan)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["condition"] == "native" and meta["spacing_mm"] == [0.28] * 3
    assert "stomach" not in meta["organs"] and meta["organs"]["liver"] == CT_ORGANS["liver"]
    image, spacing = read_tiff(root / "images" / "m01.tif")
    labels, _ = read_tiff(root / "labels" / "m01.tif")
    assert np.array_equal(image, scan.image) and spacing == pytest.approx((0.28, 0.28, 0.28))
    assert set(np.unique(labels)) <= {0, *meta["organs"].values()}
    with pytest.raises(ValueError, match="cannot add a 'contrast' scan"):
        write_ct_case(root, "m02", ct_phantom(1, "contrast", shape=(40, 32, 40)))
