import shutil

import numpy as np
import pytest

from napari_mousesegment.data.phantom_us import ultrasound_series, write_us_series
from napari_mousesegment.io.roi import RoiError, polygon_roi, write_roiset
from napari_mousesegment.io.series import (
    find_composite,
    organ_roi_files,
    read_series,
    series_folders,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*not the usual 35:UserWarning")


@pytest.fixture(scope="module")
def small_series():
    return ultrasound_series(seed=4, n_frames=6, frame_shape=(64, 80))


def test_lab_layout_reads_back_the_truth(tmp_path, small_series):
    folder = write_us_series(tmp_path / "S1", small_series)
    series = read_series(folder, ["heart", "liver", "placenta", "head"])
    assert series.frames.shape == (6, 64, 80)
    assert set(series.labels) == {o for o in ("heart", "liver", "placenta") if small_series.organ_instances(o)}
    for organ, labels in series.labels.items():
        assert np.array_equal(labels, small_series.labels[organ]), organ
    assert "head" not in series.labels  # no ROIs: unannotated, not empty


def test_organ_folders_in_any_case_and_flat_keyword_files(tmp_path, small_series):
    folder = write_us_series(tmp_path / "S2", small_series)
    (folder / "hearts").rename(folder / "Heart")
    organ_dir = folder / "livers"
    for k, path in enumerate(sorted(organ_dir.glob("*.zip"))):
        shutil.move(path, folder / f"RoiSet_liver_{path.stem.split('_')[-1]}.zip")
    organ_dir.rmdir()
    assert all("liver" in p.name for p in organ_roi_files(folder, "liver"))
    series = read_series(folder, ["heart", "liver"])
    assert np.array_equal(series.labels["heart"], small_series.labels["heart"])
    assert np.array_equal(series.labels["liver"], small_series.labels["liver"])


def test_frame_from_the_file_name_when_the_roi_has_no_position(tmp_path, small_series):
    folder = tmp_path / "S3"
    folder.mkdir()
    (folder / "S3.tif").write_bytes((write_us_series(tmp_path / "src", small_series) / "src.tif").read_bytes())
    (folder / "heads").mkdir()
    square = np.array([[10, 10], [20, 10], [20, 20], [10, 20]])
    write_roiset(folder / "heads" / "head_04.zip", [polygon_roi(square, "a")])  # no position stored
    series = read_series(folder, ["head"])
    assert series.labels["head"][3].sum() == 100 and series.labels["head"].sum() == 100


def test_roi_on_a_missing_frame_names_file_and_frame(tmp_path, small_series):
    folder = write_us_series(tmp_path / "S4", small_series)
    square = np.array([[10, 10], [20, 10], [20, 20], [10, 20]])
    write_roiset(folder / "hearts" / "frame_40.zip", [polygon_roi(square, "late", frame=39)])
    with pytest.raises(RoiError, match="frame_40.zip.*'late'.*frame 40"):
        read_series(folder, ["heart"])


def test_series_folders_and_composite_discovery(tmp_path, small_series):
    write_us_series(tmp_path / "all" / "A", small_series)
    write_us_series(tmp_path / "all" / "B", small_series)
    assert [p.name for p in series_folders([tmp_path / "all"])] == ["A", "B"]
    assert find_composite(tmp_path / "all" / "A").name == "A.tif"
    with pytest.raises(FileNotFoundError, match="neither a series folder"):
        series_folders([tmp_path])


def test_frame_numbers_in_file_names():
    from pathlib import Path

    from napari_mousesegment.io.series import _frame_from_name

    cases = {"frame_07.zip": 6, "heart_f07_2.roi": 6, "0007-0123-0456.roi": 6, "07.roi": 6,
             "RoiSet_liver_f12.zip": 11, "s01_liver_12.zip": None}
    assert {name: _frame_from_name(Path(name)) for name in cases} == cases
