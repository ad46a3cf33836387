"""config.json is checked against its kind's schema before a model is built or used."""

from __future__ import annotations

import json
import math

import pytest

from napari_mousesegment.models.folder import ModelError, read_config
from napari_mousesegment.models.schema import ConfigError, check_config
from napari_mousesegment.store.registry import BUILTIN


@pytest.mark.parametrize("name", sorted(p.name for p in BUILTIN.iterdir() if (p / "config.json").is_file()))
def test_every_built_in_config_fits_the_schema(name):
    assert read_config(BUILTIN / name)["kind"] in ("mosnet", "unet")


UNET = {"kind": "unet", "organ": "heart", "arch": "standard", "width": 16, "threshold": 0.5, "sha256": "ab"}
MOSNET = {"kind": "mosnet", "organs": ["heart", "liver"], "conditions": ["native"], "width": 8, "depth": 2,
          "image_size": 32, "thresholds": {"heart": 0.4}}


@pytest.mark.parametrize("meta, problem", [
    ([UNET], "holds a list"),
    ("config", "holds a str"),
    (UNET | {"width": 100000}, "'width' must be from 1 to 512"),
    (UNET | {"width": 0}, "'width' must be from 1 to 512"),
    (UNET | {"width": 16.5}, "'width' must be a whole number"),
    (UNET | {"width": True}, "'width' must be a whole number"),
    (UNET | {"threshold": math.nan}, "'threshold' must be a finite number"),
    (UNET | {"threshold": -0.1}, "'threshold' must be from 0 to 1"),
    (UNET | {"dropout": 1.0}, "'dropout' must be from 0 to 1 \\(exclusive\\)"),
    (UNET | {"organ": ""}, "'organ' must be a non-empty name"),
    (UNET | {"organ": " heart"}, "'organ' must be a name without surrounding spaces"),
    ({k: v for k, v in UNET.items() if k != "organ"}, "a unet config needs 'organ'"),
    (UNET | {"arch": "wide"}, "'arch' must be one of standard, deep, residual"),
    (UNET | {"kind": "resnet"}, "unknown kind 'resnet'"),
    ({k: v for k, v in UNET.items() if k != "threshold"} | {"treshold": 0.3}, "unknown key 'treshold'"),
    (MOSNET | {"organs": []}, "'organs' must be a non-empty list"),
    (MOSNET | {"organs": ["heart", "heart"]}, "'organs' names each entry once"),
    (MOSNET | {"conditions": []}, "'conditions' must be a non-empty list"),
    (MOSNET | {"depth": 9}, "'depth' must be from 1 to 8"),
    (MOSNET | {"image_size": 30}, "divisible by 2\\*\\*depth"),
    (MOSNET | {"thresholds": {"heart": math.nan}}, "'thresholds' entry 'heart' must be a finite number"),
    (MOSNET | {"thresholds": {"lungs": 0.5}}, "organs the model does not have"),
    (MOSNET | {"spacing_mm": 1000.0}, "'spacing_mm' must be from 0.001 to 10"),
    ({k: v for k, v in MOSNET.items() if k not in ("organs", "kind")}, "a mosnet config needs 'organs'"),
])
def test_configs_that_break_the_schema_are_refused_with_the_key(meta, problem):
    with pytest.raises(ConfigError, match=problem):
        check_config(meta)


def test_good_configs_and_extra_keys_pass():
    assert check_config(UNET | {"metrics": {"dice": 0.9}, "created": "today", "threshold_choice": {}})
    assert check_config(MOSNET | {"training": {"datasets": []}, "annotated": {"native": []}})
    assert check_config({"organs": ["heart"]})  # no kind: a MOSnet, as configs before kinds existed


def test_read_config_names_the_file_and_the_problem(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(UNET | {"threshold": 2}))
    with pytest.raises(ModelError, match=r"config.json: 'threshold' must be from 0 to 1"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps([UNET]))
    with pytest.raises(ModelError, match=r"config.json: holds a list"):
        read_config(tmp_path)


def test_the_config_classes_check_their_dicts_too():
    from napari_mousesegment.models.mosnet import MOSnetConfig
    from napari_mousesegment.models.unet import UNetConfig

    with pytest.raises(ValueError, match="width must be from 1 to 512"):
        UNetConfig.from_dict(UNET | {"width": 100000})
    with pytest.raises(ValueError, match="threshold must be from 0 to 1"):
        UNetConfig.from_dict(UNET | {"threshold": math.nan})
    with pytest.raises(ValueError, match="thresholds must be from 0 to 1"):
        MOSnetConfig.from_dict(MOSNET | {"thresholds": {"heart": math.inf}})
    assert UNetConfig.from_dict({"organ": "liver", "width": 4, "image_size": 32}).organ == "liver"


def test_the_schema_knows_the_same_variants_and_architectures_as_the_networks():
    """mosnet.py and unet.py stand alone in bioimage.io packages, so they keep their own lists."""
    from napari_mousesegment.models import mosnet, schema, unet

    assert schema.VARIANTS == mosnet.VARIANTS and schema.UNET_ARCHS == tuple(unet.ARCHS)
