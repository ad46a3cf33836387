import pytest
import torch

from napari_mousesegment.models.folder import ModelError, save_model
from napari_mousesegment.models.mosnet import count_parameters
from napari_mousesegment.models.unet import UNet, UNetConfig
from napari_mousesegment.store.load import load_mosnet, load_unet


@pytest.mark.parametrize("arch", ["standard", "deep", "residual"])
def test_unet_maps_frames_to_one_logit_channel(arch):
    model = UNet(UNetConfig(arch=arch, width=4, image_size=64)).eval()
    out = model(torch.rand(2, 1, 64, 96))
    assert out.shape == (2, 1, 64, 96)


def test_architectures_differ_as_the_report_says():
    standard, deep, residual = (UNet(UNetConfig(arch=a, width=8, image_size=64)) for a in ("standard", "deep", "residual"))
    assert len(standard.down) == 4 and len(deep.down) == 5 and len(residual.down) == 4
    assert count_parameters(deep) > 3 * count_parameters(standard)
    assert count_parameters(residual) > count_parameters(standard)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="arch"):
        UNetConfig(arch="wide")
    with pytest.raises(ValueError, match="multiple of 16"):
        UNetConfig(arch="deep", image_size=72)


def test_store_round_trip_and_kind_check(tmp_path):
    config = UNetConfig(organ="head", width=4, image_size=32, threshold=0.65)
    model = UNet(config)
    save_model(tmp_path / "m", model, config)
    loaded, cfg, meta = load_unet(tmp_path / "m")
    assert cfg == config and meta["kind"] == "unet"
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(loaded(x), model.eval()(x))
    with pytest.raises(ModelError, match="is a unet model, not a mosnet"):
        load_mosnet(tmp_path / "m")
