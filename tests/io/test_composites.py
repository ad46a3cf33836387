import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_mousesegment.io.composites import CompositeError, montage, read_composite, split_montage


@pytest.fixture()
def frames():
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 250, (35, 30, 40), dtype=np.uint8)
    stack[:, :3] = 0  # black rows across every frame, as above an ultrasound sector
    return stack


def test_montage_split_round_trip_detects_grid(frames):
    image = montage(frames, (5, 7))
    assert image.shape == (5 * 30 + 4 * 2, 7 * 40 + 6 * 2)
    out, grid = split_montage(image)
    assert grid == (5, 7) and np.array_equal(out, frames)


def test_split_with_given_grid_and_no_gutters(frames):
    image = np.concatenate([np.concatenate(list(frames[r * 7:(r + 1) * 7]), axis=1) for r in range(5)])
    with pytest.raises(CompositeError, match="RxC"):
        split_montage(image)
    out, grid = split_montage(image, grid=(5, 7))
    assert grid == (5, 7) and np.array_equal(out, frames)


def test_rgb_montage_png_and_folder_and_tiff_agree(tmp_path, frames):
    image = montage(frames, (5, 7))
    iio.imwrite(tmp_path / "m.png", np.repeat(image[..., None], 3, -1))
    tifffile.imwrite(tmp_path / "stack.tif", frames)
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, frame in enumerate(frames):
        iio.imwrite(folder / f"frame_{k + 1}.png", frame)  # natural order: 2 before 10
    results = [read_composite(tmp_path / "m.png"), read_composite(tmp_path / "stack.tif"), read_composite(folder)]
    for result in results:
        assert np.array_equal(result.frames, frames)
    assert results[0].grid == (5, 7) and results[0].sources[8].endswith("m.png[1,1]")
    assert results[2].sources[9].endswith("frame_10.png")


def test_other_frame_count_warns(tmp_path, frames):
    tifffile.imwrite(tmp_path / "short.tif", frames[:12])
    with pytest.warns(UserWarning, match="12 frames"):
        assert read_composite(tmp_path / "short.tif").frames.shape[0] == 12


def test_bad_composites_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(CompositeError, match="broken.png"):
        read_composite(bad)
    with pytest.raises(CompositeError, match="no such"):
        read_composite(tmp_path / "absent.tif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompositeError, match="no frame images"):
        read_composite(tmp_path / "empty")
    with pytest.raises(CompositeError, match="do not fill"):
        montage(np.zeros((34, 4, 4)), (5, 7))


@pytest.mark.parametrize("gap_value", [0, 255])
def test_black_gutters_do_not_crop_frames_with_black_edges(frames, gap_value):
    image = montage(frames, (5, 7), gap_value=gap_value)  # frames have 3 black top rows
    out, grid = split_montage(image)
    assert grid == (5, 7) and np.array_equal(out, frames)
    out, _ = split_montage(image, grid=(5, 7))
    assert np.array_equal(out, frames)


def test_given_grid_that_does_not_fit_is_refused(frames):
    with pytest.raises(CompositeError, match="does not fit"):
        split_montage(montage(frames, (5, 7))[:-1], grid=(4, 7))


def test_undetectable_grid_names_the_file_and_asks_for_grid(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (120, 160), dtype=np.uint8)
    path = tmp_path / "plain.png"
    iio.imwrite(path, noise)
    with pytest.raises(CompositeError, match="plain.png.*--grid"):
        read_composite(path)
