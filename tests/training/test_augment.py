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


def test_ct_slices_keep_every_organ_channel_with_its_tissue_and_never_flip():
    """MOSnet's default: each organ's mask moves with the slice; the animal's left stays left."""
    settings = AugmentSettings.for_ct()
    assert not settings.hflip and not settings.vflip and settings.noise == 0
    masks = torch.zeros(8, 3, 64, 64)
    masks[:, 0, 10:30, 8:24] = 1  # an organ on the image's left
    masks[:, 1, 34:54, 40:58] = 1  # one on its right
    masks[:, 2, 20:44, 28:36] = 1
    image = (masks * torch.tensor([0.3, 0.6, 0.9]).view(1, 3, 1, 1)).amax(1, keepdim=True)
    out_image, out_masks = augment(image, masks, settings, torch.Generator().manual_seed(3))
    assert not torch.equal(out_masks, masks)
    for k, level in enumerate((0.3, 0.6, 0.9)):
        tissue = (out_image - level).abs() < 0.1
        inside = out_masks[:, k : k + 1] > 0.5
        assert (tissue & inside).sum() > 0.75 * inside.sum()  # bilinear edges aside, the mask lies on its tissue
    columns = torch.arange(64.0)
    left = (out_masks[:, 0].sum(1) * columns).sum(1) / out_masks[:, 0].sum((1, 2))
    right = (out_masks[:, 1].sum(1) * columns).sum(1) / out_masks[:, 1].sum((1, 2))
    assert (left < right).all()
