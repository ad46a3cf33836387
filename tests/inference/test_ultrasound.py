import numpy as np
import pytest
import torch

from napari_mousesegment.inference.ultrasound import instances, predict_probabilities, to_unit
from napari_mousesegment.models.unet import UNet, UNetConfig


def disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_touching_organs_become_separate_instances():
    prob = np.zeros((60, 90), np.float32)
    prob[disc(prob.shape, (30, 28), 14) | disc(prob.shape, (30, 54), 14)] = 0.9
    prob[5:7, 80:82] = 0.9  # a 4-pixel speck: dropped
    labels = instances(prob, threshold=0.5, min_size=30)
    assert labels.max() == 2
    assert labels[30, 20] != labels[30, 62] and labels[30, 20] > 0 and labels[30, 62] > 0
    assert labels[6, 81] == 0


def test_holes_are_filled_and_nothing_found_is_empty():
    prob = np.zeros((2, 40, 40), np.float32)
    prob[0][disc((40, 40), (20, 20), 12)] = 0.8
    prob[0][18:22, 18:22] = 0.1  # a hole in the organ
    labels = instances(prob, 0.5, 10)
    assert labels[0, 20, 20] == 1 and not labels[1].any()


def test_whole_frames_of_any_size_are_predicted():
    model = UNet(UNetConfig(arch="deep", width=2, image_size=32))
    frames = np.random.default_rng(0).integers(0, 255, (3, 50, 70), dtype=np.uint8)
    prob = predict_probabilities(model, frames, batch_size=2)
    assert prob.shape == (3, 50, 70) and prob.min() >= 0 and prob.max() <= 1


def test_nan_frames_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        to_unit(np.full((1, 4, 4), np.nan, np.float32))
    assert to_unit(np.full((1, 4, 4), 255, np.uint8)).max() == 1.0
    assert torch.from_numpy(to_unit(np.arange(8, dtype=np.uint16).reshape(2, 2, 2))).max() == 1


def test_a_long_organ_stays_one_instance():
    yy, xx = np.mgrid[:100, :300]
    for a, b in ((120, 20), (120, 12)):  # a placenta-like band: a flat distance ridge, many local maxima
        prob = ((((yy - 50) / b) ** 2 + ((xx - 150) / a) ** 2) <= 1).astype(np.float32)
        assert instances(prob, 0.5, 30).max() == 1


def test_a_curved_thin_organ_stays_one_instance():
    yy, xx = np.mgrid[:200, :300]
    r = np.hypot(yy - 180, xx - 150)
    crescent = (r > 80) & (r < 80 + 4 + 4 * np.clip(1 - np.abs(xx - 150) / 90, 0, 1)) & (yy < 170)  # thick middle
    assert instances(crescent.astype(np.float32), 0.5, 30).max() == 1
