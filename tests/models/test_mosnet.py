import json

import pytest
import torch

from napari_mousesegment.models.folder import ModelError, save_model
from napari_mousesegment.models.mosnet import VARIANTS, MOSnet, MOSnetConfig, count_parameters
from napari_mousesegment.organs import CT_ORGANS
from napari_mousesegment.store.load import load_mosnet

ORGANS = list(CT_ORGANS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shapes(variant):
    model = MOSnet(MOSnetConfig(organs=ORGANS, variant=variant, width=4, depth=3, image_size=32)).eval()
    with torch.no_grad():
        logits, recon = model(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))
    assert logits.shape == (2, 9, 32, 32)
    if variant in ("full", "bm_rb"):
        assert recon.shape == (2, 1, 32, 32) and 0 <= float(recon.min()) and float(recon.max()) <= 1
    else:
        assert recon is None


def test_default_width_is_near_the_papers_11_4m_parameters():
    n = count_parameters(MOSnet(MOSnetConfig(organs=ORGANS)))
    assert abs(n - 11.4e6) / 11.4e6 < 0.15, n


def test_control_module_makes_the_condition_matter():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 32, 32)
    full = MOSnet(MOSnetConfig(organs=ORGANS, width=4, depth=3, image_size=32)).eval()
    plain = MOSnet(MOSnetConfig(organs=ORGANS, variant="bm", width=4, depth=3, image_size=32)).eval()
    assert not torch.allclose(full(x, torch.tensor([0]))[0], full(x, torch.tensor([1]))[0])
    assert torch.allclose(plain(x, torch.tensor([0]))[0], plain(x, torch.tensor([1]))[0])


def test_a_2_5d_model_takes_its_neighbours_as_channels_and_reconstructs_them():
    config = MOSnetConfig(organs=ORGANS, width=4, depth=3, image_size=32, context=2, context_step=3)
    assert config.channels == 5 and config.slice_offsets() == [-6, -3, 0, 3, 6]
    model = MOSnet(config).eval()
    with torch.no_grad():
        logits, recon = model(torch.rand(2, 5, 32, 32), torch.tensor([0, 1]))
    assert logits.shape == (2, 9, 32, 32) and recon.shape == (2, 5, 32, 32)
    with pytest.raises(ValueError, match="expected 5 input channels"):  # a 2D slice alone is not what it was built for
        model(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))


def test_extra_windows_are_cut_from_the_input_window_as_more_channels():
    config = MOSnetConfig(organs=ORGANS, width=4, depth=3, image_size=32, context=1, window_level=0,
                          window_width=2000, extra_windows=[[40, 400]])
    assert config.network_channels == 6
    model = MOSnet(config).eval()
    hu = torch.tensor([-1000.0, -420, -160, 40, 58, 240, 1350])
    image = ((hu + 1000) / 2000).clamp(0, 1).view(1, 1, 1, -1).expand(1, 3, 1, -1)
    cut = model.windows(image)
    assert cut.shape == (1, 6, 1, 7) and torch.equal(cut[:, :3], image)
    # lungs and air stay apart on the wide channel; 18 HU between two soft organs is 0.045 on the cut
    assert torch.allclose(cut[0, 4, 0], torch.tensor([0, 0, 0, 0.5, 0.545, 1, 1]), atol=1e-4)
    with torch.no_grad():
        logits, recon = model(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
    assert logits.shape == (2, 9, 32, 32) and recon.shape == (2, 3, 32, 32)  # it rebuilds its input only
    one = image[:, :1]
    assert MOSnet(MOSnetConfig(organs=ORGANS, width=4, depth=3, image_size=32)).windows(one) is one


def test_a_smoothed_extra_window_lifts_a_few_hu_out_of_the_noise():
    """[level, width, sigma]: the window is cut from the slice blurred by a Gaussian of sigma pixels,
    so two soft tissues 13 HU apart under 38 HU of noise separate on that channel."""
    config = MOSnetConfig(organs=ORGANS, width=4, depth=3, image_size=64, window_level=0, window_width=2000,
                          extra_windows=[[40, 400], [45, 100, 2]])
    assert config.network_channels == 3
    model = MOSnet(config).eval()
    g = torch.Generator().manual_seed(0)
    hu = torch.full((1, 1, 64, 64), 45.0)
    hu[..., 32:] = 58.0  # muscle | liver
    hu = hu + 38 * torch.randn(hu.shape, generator=g)
    cut = model.windows(((hu + 1000) / 2000).clamp(0, 1))
    raw, smooth = cut[0, 1], cut[0, 2]
    assert torch.allclose(smooth[:, 24:40].mean(), torch.tensor((51.5 - (45 - 50)) / 100), atol=0.02)

    def separation(channel: torch.Tensor, width: float) -> float:  # liver - muscle over the noise, in HU
        left, right = channel[8:56, 4:28] * width, channel[8:56, 36:60] * width
        return float((right.mean() - left.mean()) / torch.cat([left.flatten(), right.flatten()]).std())

    assert separation(raw, 400) < 0.4 < 1.0 < separation(smooth, 100)
    flat = MOSnet(MOSnetConfig(organs=ORGANS, width=4, depth=3, image_size=64, window_level=0,
                               window_width=2000, extra_windows=[[45, 100, 2]])).eval()
    constant = torch.full((1, 1, 64, 64), (45.0 + 1000) / 2000)  # a blur keeps a flat slice flat, edges too
    assert torch.allclose(flat.windows(constant)[0, 1], torch.full((64, 64), 0.5), atol=1e-4)
    with torch.no_grad():
        assert model(torch.rand(2, 1, 64, 64), torch.tensor([0, 1]))[0].shape == (2, 9, 64, 64)


@pytest.mark.parametrize("kwargs", [{"variant": "unet"}, {"organs": []}, {"organs": ["a", "a"]},
                                    {"image_size": 100}, {"plane": "oblique"}, {"plane": "coronal+axial"},
                                    {"plane": "axial+axial"}, {"context": -1},
                                    {"context": 9}, {"context": 1, "context_step": 0},
                                    {"extra_windows": [[40, 5]]}, {"extra_windows": [[40]]},
                                    {"extra_windows": [[40, float("nan")]]}, {"extra_windows": [[0, 100]] * 5},
                                    {"extra_windows": [[40, 400, -1]]}, {"extra_windows": [[40, 400, 9]]},
                                    {"extra_windows": [[40, 400, 1, 1]]}])
def test_bad_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        MOSnetConfig(**({"organs": ORGANS} | kwargs))


def test_a_multi_planar_config_lists_its_planes_and_passes_the_schema():
    from napari_mousesegment.models.schema import PLANE_CHOICES
    from napari_mousesegment.models.mosnet import PLANE_CHOICES as standalone

    assert MOSnetConfig(organs=ORGANS, plane="axial+coronal").planes == ["axial", "coronal"]
    assert MOSnetConfig(organs=ORGANS).planes == ["axial"]
    assert standalone == PLANE_CHOICES  # models.mosnet stands alone in packages: its copy must not drift


def test_model_folder_round_trip_and_tamper_detection(tmp_path):
    config = MOSnetConfig(organs=ORGANS, width=4, depth=2, image_size=16)
    model = MOSnet(config)
    folder = save_model(tmp_path / "m", model, config, {"metrics": {"val_dice_mean": 0.5}})
    loaded, loaded_config, meta = load_mosnet(folder)
    assert loaded_config == config and meta["metrics"]["val_dice_mean"] == 0.5 and len(meta["sha256"]) == 64
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ModelError, match="sha256"):
        load_mosnet(folder)


def test_config_that_does_not_match_weights_is_refused(tmp_path):
    config = MOSnetConfig(organs=ORGANS, width=4, depth=2, image_size=16)
    folder = save_model(tmp_path / "m", MOSnet(config), config)
    meta = json.loads((folder / "config.json").read_text())
    meta["width"] = 8
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="do not match"):
        load_mosnet(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelError, match="no config.json"):
        load_mosnet(folder)


def _partial_config(**kwargs):
    annotated = {"native": ["heart", "liver"], "contrast": ["heart", "kidneys", "liver"]}
    return MOSnetConfig(organs=["heart", "liver", "kidneys", "bone"], width=4, depth=2, image_size=32,
                        annotated=annotated, **kwargs)


def test_borrowed_organs_are_those_the_condition_never_annotated():
    config = _partial_config()
    assert config.borrowed_organs("native") == [(1, [2])]  # kidneys from contrast; bone annotated nowhere
    assert config.borrowed_organs("contrast") == []
    assert _partial_config(variant="bm_rb").borrowed_organs("native") == []  # the condition changes nothing
    assert MOSnetConfig(organs=ORGANS).borrowed_organs("native") == []  # annotations unknown


def test_segment_reads_borrowed_organs_under_the_donor_condition():
    torch.manual_seed(0)
    model = MOSnet(_partial_config()).eval()
    x = torch.rand(2, 1, 32, 32)
    native, contrast = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)
    with torch.no_grad():
        own, other = model.segment(x, native), model.segment(x, contrast)
        mixed = model.segment(x, native, model.config.borrowed_organs("native"))
    assert torch.equal(mixed[:, [0, 1, 3]], own[:, [0, 1, 3]])
    assert torch.equal(mixed[:, 2], other[:, 2]) and not torch.allclose(own[:, 2], other[:, 2])


def test_annotations_are_derived_for_configs_saved_before_they_were_recorded():
    old = {"organs": ["heart", "kidneys"], "width": 4, "training": {"datasets": [
        {"name": "a", "condition": "native", "organs": ["heart"]},
        {"name": "b", "condition": "native", "organs": ["heart", "kidneys"]},
        {"name": "c", "condition": "contrast", "organs": ["heart"]}]}}
    config = MOSnetConfig.from_dict(old)
    assert config.annotated == {"native": ["heart", "kidneys"], "contrast": ["heart"]}
    assert config.borrowed_organs("contrast") == [(0, [1])]
    assert MOSnetConfig.from_dict({**old, "annotated": {"native": ["heart"]}}).annotated == {"native": ["heart"]}
