"""The appearance swap: a lending condition's slices take the borrowing condition's organ intensities."""

import torch

from napari_mousesegment.models.mosnet import MOSnetConfig
from napari_mousesegment.training.appearance import Swap, appearance_shifts, describe, swap_appearance
from napari_mousesegment.training.slices import SliceSet

ORGANS = ["liver", "heart", "stomach"]


def _slices() -> tuple[SliceSet, MOSnetConfig]:
    """Native slices label liver and heart, contrast slices all three; the agent brightens the liver
    (0.15 → 0.45) and nothing else. Each organ is a square well inside the slice."""
    n, size = 8, 24
    images = torch.full((2 * n, 1, size, size), 0.1)
    masks = torch.zeros((2 * n, 3, size, size), dtype=torch.bool)
    masks[:, 0, 2:10, 2:10] = True
    masks[:, 1, 12:20, 2:10] = True
    masks[:, 2, 2:10, 12:20] = True
    images[:n, 0, 2:10, 2:10], images[n:, 0, 2:10, 2:10] = 0.15, 0.45
    images[:, 0, 12:20, 2:10] = 0.2
    images[:, 0, 2:10, 12:20] = 0.3
    annotated = torch.tensor([[True, True, False]] * n + [[True, True, True]] * n)
    condition = torch.tensor([0] * n + [1] * n)
    data = SliceSet(images.half(), masks, annotated, condition, [f"s{i}" for i in range(2 * n)])
    config = MOSnetConfig(organs=ORGANS, conditions=["native", "contrast"], width=4, depth=2, image_size=size,
                          annotated={"native": ["liver", "heart"], "contrast": ORGANS})
    return data, config


def test_only_the_organs_that_look_different_shift_and_only_on_the_lending_condition():
    data, config = _slices()
    shifts = appearance_shifts(data, config)
    assert shifts.shape == (2, 3)
    assert torch.allclose(shifts[1], torch.tensor([-0.3, 0.0, 0.0]), atol=2e-3)  # liver only; stomach unknown natively
    assert not shifts[0].any()  # native lends nothing
    assert describe(shifts, config) == ["contrast slices: liver -300 HU"]


def test_a_swapped_contrast_slice_has_the_native_liver_and_keeps_the_rest():
    data, config = _slices()
    shifts = appearance_shifts(data, config)
    image, masks, condition = data.images.float(), data.organ_masks, data.condition
    swapped = swap_appearance(image, masks, condition, Swap(shifts, 1.0))
    n = len(image) // 2
    assert torch.allclose(swapped[n:, 0, 4:8, 4:8], torch.tensor(0.15), atol=2e-3)  # liver interior, now native
    assert torch.equal(swapped[n:, 0, 12:20, :10], image[n:, 0, 12:20, :10])  # heart untouched
    assert torch.equal(swapped[n:, 0, 2:10, 12:20], image[n:, 0, 2:10, 12:20])  # stomach untouched
    assert torch.equal(swapped[:n], image[:n])  # native slices untouched
    assert torch.equal(swap_appearance(image, masks, condition, Swap(shifts, 0.0)), image)
    generator = torch.Generator().manual_seed(0)
    some = swap_appearance(image, masks, condition, Swap(shifts, 0.5), generator)
    changed = (some != image).flatten(1).any(1)
    assert 0 < int(changed[n:].sum()) < n and not changed[:n].any()


def test_no_lending_condition_means_no_shift():
    data, config = _slices()
    config = MOSnetConfig(organs=ORGANS, conditions=["native", "contrast"], width=4, depth=2, image_size=24,
                          annotated={"native": ORGANS, "contrast": ORGANS})
    shifts = appearance_shifts(data, config)
    assert not shifts.any() and describe(shifts, config) == []
