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


def test_napari_discovers_the_plugin():
    pm = PluginManager.instance()
    pm.discover()
    assert PLUGIN in pm._manifests


@pytest.mark.parametrize("key, n_layers", [("ct_native", 2), ("ct_contrast", 2), ("ultrasound", 4)])
def test_sample_data_opens_and_renders(make_napari_viewer, key, n_layers):
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders nothing to screenshot
    layers = viewer.open_sample(PLUGIN, key)
    assert len(layers) == n_layers
    image = layers[0]
    if key.startswith("ct"):
        assert tuple(image.scale) == pytest.approx((0.28,) * 3)
        assert [str(u) for u in image.units] == ["millimeter"] * 3
        assert tuple(image.axis_labels) == ("z", "y", "x")
        organs = layers[1].features["organ"].tolist()
        assert "liver" in organs and "kidneys" in organs
    else:
        assert tuple(image.axis_labels) == ("frame", "y", "x") and image.data.shape[0] == 35
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 10  # not a blank canvas
