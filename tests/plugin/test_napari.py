"""The plugin as napari sees it: manifest, discovery, sample data in a real viewer under Xvfb."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from npe2 import PluginManager, PluginManifest

PLUGIN = "napari-mousesegment"


def test_manifest_is_valid():
    manifest = PluginManifest.from_distribution(PLUGIN)
    assert manifest.name == PLUGIN
    keys = {s.key for s in manifest.contributions.sample_data}
    assert keys == {"ct_native", "ct_contrast", "ultrasound"}


def test_npe2_validate_command_passes():
    npe2 = shutil.which("npe2") or str(Path(sys.executable).with_name("npe2"))
    done = subprocess.run([npe2, "validate", "napari_mousesegment"], capture_output=True, text=True)
    assert done.returncode == 0 and "valid" in done.stdout, done.stdout + done.stderr


def test_hub_metadata_a_readable_name_icon_urls_and_a_menu_for_every_widget():
    """What the napari hub and the plugin manager show: the hub reads the manifest and the
    package's metadata (project URLs, classifiers)."""
    import importlib.metadata
    import importlib.resources

    from PIL import Image

    manifest = PluginManifest.from_distribution(PLUGIN)
    assert manifest.display_name == "Mouse organ segmentation"  # not the package name
    package, resource = manifest.icon.split(":")
    with importlib.resources.as_file(importlib.resources.files(package) / resource) as icon:
        assert Image.open(icon).size == (256, 256)
    in_menus = {item.command for items in manifest.contributions.menus.values() for item in items}
    assert {w.command for w in manifest.contributions.widgets} <= in_menus  # the active-learning widget too
    meta = importlib.metadata.metadata(PLUGIN)
    urls = dict(entry.split(", ", 1) for entry in meta.get_all("Project-URL"))
    assert {"Source Code", "Documentation", "Bug Tracker"} <= set(urls)
    versions = {c.rsplit(" :: ", 1)[1] for c in meta.get_all("Classifier") if c.startswith("Programming Language :: Python :: 3.")}
    lowest = meta["Requires-Python"].removeprefix(">=")
    assert min(versions, key=lambda v: tuple(map(int, v.split(".")))) == lowest  # classifiers match requires-python


def test_napari_discovers_the_plugin():
    pm = PluginManager.instance()
    pm.discover()
    assert PLUGIN in pm._manifests


@pytest.mark.parametrize("key, n_layers", [("ct_native", 3), ("ct_contrast", 3), ("ultrasound", 7)])
def test_sample_data_opens_with_the_shipped_models_predictions(make_napari_viewer, key, n_layers):
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders nothing to screenshot
    layers = viewer.open_sample(PLUGIN, key)
    assert len(layers) == n_layers
    image = layers[0]
    shown = [layer.name for layer in layers if layer.visible]
    if key.startswith("ct"):
        assert tuple(image.scale) == pytest.approx((0.28,) * 3)
        assert [str(u) for u in image.units] == ["millimeter"] * 3
        assert tuple(image.axis_labels) == ("z", "y", "x")
        truth, predicted = layers[1], layers[2]
        organs = predicted.features["organ"].tolist()
        assert "liver" in organs and "kidneys" in organs
        assert tuple(predicted.scale) == pytest.approx((0.28,) * 3)
        liver = organs.index("liver")
        pred_liver = predicted.data == predicted.features["index"][liver]
        true_liver = truth.data == truth.features["index"][truth.features["organ"].tolist().index("liver")]
        dice = 2 * (pred_liver & true_liver).sum() / (pred_liver.sum() + true_liver.sum())
        # the native liver is the shipped MOSnet's weakest big organ (docs/results-mosnet.md)
        assert dice > (0.7 if key == "ct_native" else 0.8), (key, dice)
        assert shown == [image.name, "organs (mosnet-synthetic)"]
    else:
        assert tuple(image.axis_labels) == ("frame", "y", "x") and image.data.shape[0] == 35
        assert shown == [image.name] + [f"{o} (unet-{o}-synthetic)" for o in ("heart", "liver", "placenta")]
        assert all(layer.data.max() > 0 for layer in layers[4:])
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 10  # not a blank canvas


def test_viewer_opens_an_imagej_roiset_and_saves_labels_back_as_one(make_napari_viewer, tmp_path):
    import numpy as np

    from napari_mousesegment.io.roi import read_rois

    from ..conftest import shared_file

    viewer = make_napari_viewer()
    source = shared_file("imagej_rois", "RoiSet_35frames.zip")
    [layer] = viewer.open(str(source), plugin=PLUGIN)
    assert layer.__class__.__name__ == "Labels" and layer.data.ndim == 3
    assert layer.features["roi"].tolist()[1:] == [r.name for r in read_rois(source)]
    saved = viewer.layers.save(str(tmp_path / "again.zip"), selected=False, plugin=PLUGIN)
    assert saved and len(read_rois(tmp_path / "again.zip")) == len(np.unique(layer.data)) - 1


def test_widgets_appear_under_layers_segment_and_annotate(make_napari_viewer):
    from app_model.types import MenuItem
    from napari._app_model import get_app_model

    make_napari_viewer()

    def titles(menu: str) -> list[str]:
        return [item.command.title for item in get_app_model().menus.get_menu(menu) if isinstance(item, MenuItem)]

    assert "Micro-CT segmentation (Mouse organ segmentation)" in titles("napari/layers/segment")
    assert "Fetal ultrasound (Mouse organ segmentation)" in titles("napari/layers/segment")
    annotate = titles("napari/layers/annotate")  # napari doubles "&" for Qt's menu mnemonics
    assert any(t.replace("&&", "&") == "Annotation & active learning (Mouse organ segmentation)" for t in annotate)
