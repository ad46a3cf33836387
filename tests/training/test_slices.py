"""2.5D training slices: each slice with its neighbours, the same in training, rounds and prediction."""

import numpy as np
import pytest
import torch

from napari_mousesegment.models.mosnet import MOSnetConfig
from napari_mousesegment.models.preprocess import context_index
from napari_mousesegment.training.slices import SliceSet, corrected_slices, model_slices, organ_balanced_weights


def _ramp(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A volume whose slice z is -100 + 10·z HU everywhere (windowed: 0.01·z), labels 1 on every slice."""
    image = (-100.0 + 10.0 * np.arange(n, dtype=np.float32))[:, None, None] * np.ones((n, 12, 12), np.float32)
    return image, np.ones(image.shape, np.uint8)


def _channel_values(images) -> np.ndarray:
    return np.round(images[:, :, 6, 6].float().numpy() * 100).astype(int)  # back to slice numbers


def test_context_index_repeats_the_edge_slices():
    assert context_index(5, [-2, 0, 2]).tolist() == [[0, 0, 2], [0, 1, 3], [0, 2, 4], [1, 3, 4], [2, 4, 4]]
    assert context_index(5, [-1, 0, 1], 3, 5).tolist() == [[2, 3, 4], [3, 4, 4]]


@pytest.mark.parametrize("stride", [1, 3])
def test_training_slices_carry_their_neighbours_in_order(stride):
    config = MOSnetConfig(organs=["heart"], width=4, depth=2, image_size=12, context=1, context_step=2)
    image, labels = _ramp(10)
    images, masks = model_slices(image, labels, (0.28, 0.28, 0.28), config, stride)
    centres = np.arange(0, 10, stride)
    assert images.shape == (len(centres), 3, 12, 12) and masks.shape == (len(centres), 12, 12)
    assert _channel_values(images).tolist() == [[max(c - 2, 0), c, min(c + 2, 9)] for c in centres]


def test_corrected_slices_take_neighbours_at_the_model_s_distance_in_mm():
    """Slices 0.56 mm apart: a model whose neighbours are 2 voxels of 0.28 mm away reads the next slice."""
    config = MOSnetConfig(organs=["heart"], width=4, depth=2, image_size=12, context=1, context_step=2)
    image, labels = _ramp(8)
    images, masks = corrected_slices(image, labels, (0.56, 0.28, 0.28), [0, 4, 7], config)
    assert _channel_values(images).tolist() == [[0, 0, 1], [3, 4, 5], [6, 7, 7]]
    assert masks.shape == (3, 1, 12, 12) and bool(masks.all())
    flat, _ = corrected_slices(image, labels, (0.56, 0.28, 0.28), [0, 4, 7], MOSnetConfig(organs=["heart"],
                               width=4, depth=2, image_size=12))
    assert _channel_values(flat).tolist() == [[0], [4], [7]]


def test_corrected_slices_mix_neighbours_between_slices_as_prediction_does():
    """Slices 0.8 mm apart: the neighbour 0.56 mm away lies 0.7 of the way to the next slice."""
    config = MOSnetConfig(organs=["heart"], width=4, depth=2, image_size=12, context=1, context_step=2)
    image, labels = _ramp(8)
    images, _ = corrected_slices(image, labels, (0.8, 0.28, 0.28), [0, 4, 7], config)
    assert images[:, :, 6, 6].float().numpy() * 100 == pytest.approx(
        np.array([[0, 0, 0.7], [3.3, 4, 4.7], [6.3, 7, 7]]), abs=0.02)


def test_organ_balanced_weights_draw_each_organ_as_often_and_skip_unannotated_labels():
    """Ten slices: the liver on eight, the kidneys on one, nothing on one; the spleen is drawn on
    slice 9 but its dataset does not annotate it."""
    masks = torch.zeros(10, 3, 4, 4, dtype=torch.bool)
    masks[:8, 0, 1, 1] = True  # liver
    masks[8, 1, 2, 2] = True  # kidneys
    masks[9, 2, 0, 0] = True  # spleen, not annotated
    annotated = torch.tensor([True, True, False]).expand(10, -1)
    data = SliceSet(torch.zeros(10, 1, 4, 4), masks, annotated, torch.zeros(10, dtype=torch.long), ["s"] * 10)
    weights = organ_balanced_weights(data, share=0.5)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[:8].sum() - 0.05 * 8 == pytest.approx(0.25)  # the liver's half of the organ-by-organ draws
    assert weights[8] == pytest.approx(0.05 + 0.25)  # the one kidney slice: as often as all liver slices
    assert weights[9] == pytest.approx(0.05)  # only its uniform share
    empty = SliceSet(torch.zeros(3, 1, 4, 4), torch.zeros(3, 3, 4, 4, dtype=torch.bool), annotated[:3],
                     torch.zeros(3, dtype=torch.long), ["s"] * 3)
    assert organ_balanced_weights(empty).tolist() == pytest.approx([1 / 3] * 3)
