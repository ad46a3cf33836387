import torch

from napari_mousesegment.training.augment import AugmentSettings, augment


def test_off_is_the_identity():
    image = torch.rand(3, 1, 32, 40)
    mask = (torch.rand(3, 1, 32, 40) > 0.5).float()
    out_image, out_mask = augment(image, mask, AugmentSettings.off())
    assert torch.allclose(out_image, image, atol=1e-5) and torch.equal(out_mask, mask)


def test_geometry_moves_image_and_mask_together():
    settings = AugmentSettings(noise=0, brightness=0, contrast=0, crop=0.2)
    mask = torch.zeros(8, 1, 48, 48)
    mask[:, :, 12:36, 16:30] = 1
    image = mask.clone()
    g = torch.Generator().manual_seed(0)
    out_image, out_mask = augment(image, mask, settings, g)
    assert not torch.equal(out_mask, mask)  # something moved
    agree = ((out_image > 0.5) == (out_mask > 0.5)).float().mean()
    assert agree > 0.98  # the mask follows the image (bilinear vs nearest differ at edges only)
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}


def test_intensity_changes_leave_masks_alone():
    settings = AugmentSettings(rotation=0, scale=0, translation=0, hflip=False, elastic=0, crop=0)
    image, mask = torch.rand(4, 1, 16, 16), (torch.rand(4, 1, 16, 16) > 0.5).float()
    out_image, out_mask = augment(image, mask, settings, torch.Generator().manual_seed(1))
    assert torch.equal(out_mask, mask) and not torch.allclose(out_image, image)
    assert out_image.min() >= 0 and out_image.max() <= 1


def test_flips_with_rotation_keep_areas():
    settings = AugmentSettings(rotation=20, scale=0, translation=0, hflip=True, vflip=True, noise=0, brightness=0,
                               contrast=0, elastic=0, crop=0)
    mask = torch.zeros(16, 1, 64, 64)
    mask[:, :, 24:40, 24:40] = 1
    _, out = augment(mask.clone(), mask, settings, torch.Generator().manual_seed(2))
    areas = out.sum(dim=(1, 2, 3))
    assert torch.all((areas - 256).abs() < 256 * 0.08)  # a rotation or mirror, never a shear
