import numpy as np
import pytest

from napari_mousesegment.data.phantom_us import ultrasound_series
from napari_mousesegment.io.roi import fill_polygon
from napari_mousesegment.organs import US_ORGANS


def test_shapes_and_dtypes(us_series):
    assert us_series.frames.shape == (35, 240, 320) and us_series.frames.dtype == np.uint8
    for organ in US_ORGANS:
        assert us_series.labels[organ].shape == (35, 240, 320)
        assert us_series.labels[organ].dtype == np.uint16


def test_zero_to_four_fetuses_per_frame():
    counts = []
    for seed in range(4):
        series = ultrasound_series(seed, n_frames=12, frame_shape=(120, 160))
        counts += [int(series.labels["placenta"][f].max()) for f in range(12)]
    assert min(counts) == 0 and max(counts) <= 4 and len(set(counts)) >= 3


def test_some_organs_out_of_view(us_series):
    # Organs missed by the probe: a fetus's placenta is visible but its heart or liver is not.
    per_frame = [(int(us_series.labels["heart"][f].max()), int(us_series.labels["placenta"][f].max()))
                 for f in range(35)]
    assert any(hearts < placentas for hearts, placentas in per_frame)
    # Organs cut by the edge of the view: polygons with vertices on the image border.
    h, w = us_series.frames.shape[1:]
    on_edge = [i for i in us_series.instances
               if np.any((i.polygon[:, 0] <= 0.01) | (i.polygon[:, 0] >= w - 0.01) | (i.polygon[:, 1] >= h - 0.01))]
    assert on_edge


def test_labels_are_imagej_fill_of_instance_polygons(us_series):
    for inst in us_series.instances:
        mask = fill_polygon(inst.polygon, us_series.frames.shape[1:])
        assert np.array_equal(us_series.labels[inst.organ][inst.frame] == inst.index, mask), inst.name


def test_instance_names_are_unique_and_not_imagej_coordinates(us_series):
    names = [i.name for i in us_series.instances]
    assert len(names) == len(set(names))
    assert all(not n.replace("-", "").isdigit() for n in names)


def test_b_mode_appearance(us_series):
    frames = us_series.frames.astype(float)
    placenta = frames[us_series.labels["placenta"] > 0].mean()
    heart = frames[us_series.labels["heart"] > 0].mean()
    assert placenta > heart + 40  # bright placenta, dark blood-filled heart
    assert np.all(us_series.frames[:, 0, :20] == 0) and np.all(us_series.frames[:, 0, -20:] == 0)  # sector
    empty = [f for f in range(35) if all(us_series.labels[o][f].max() == 0 for o in US_ORGANS)]
    tissue = frames[empty or [0]][:, 40:200, 150:170]
    assert tissue[:, :40].mean() > tissue[:, -40:].mean()  # depth attenuation
    speckle = frames[:, 60:120, 140:180]
    assert speckle.std() > 15


def test_deterministic_by_seed():
    a = ultrasound_series(5, n_frames=4, frame_shape=(96, 128))
    b = ultrasound_series(5, n_frames=4, frame_shape=(96, 128))
    c = ultrasound_series(6, n_frames=4, frame_shape=(96, 128))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.labels["heart"], b.labels["heart"])
    assert not np.array_equal(a.frames, c.frames)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"seed": -3}, "seed"), ({"n_frames": 0}, "n_frames"), ({"n_frames": 2.5}, "n_frames"),
     ({"frame_shape": (240,)}, "two integers"), ({"frame_shape": (20, 20)}, "between")],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ultrasound_series(**kwargs)
