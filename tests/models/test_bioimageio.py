"""bioimage.io packages: every shipped model exports a package that bioimageio.core's own test
passes; our packages import back exactly; other labs' packages import when we can run them, run
with their own preprocessing, and are refused with the reason when we cannot."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest

pytest.importorskip("bioimageio.core")

from napari_mousesegment.cli import main
from napari_mousesegment.data.phantom_us import ultrasound_series
from napari_mousesegment.inference.ultrasound import organ_probabilities, predict_probabilities
from napari_mousesegment.jobs.bioimageio import export_bioimageio
from napari_mousesegment.models.folder import ModelError
from napari_mousesegment.store.load import load_model, load_organ_model, load_unet
from napari_mousesegment.store.registry import SHIPPED_CT, SHIPPED_US
from napari_mousesegment.store.transfer import import_model
from tests.bioimageio_packages import expected, foreign_package

SHIPPED = [SHIPPED_CT, *SHIPPED_US.values()]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "models"


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """Every shipped model exported once for the module: name -> its zips."""
    out = tmp_path_factory.mktemp("bioimageio")
    return {name: export_bioimageio(name, out / name) for name in SHIPPED}


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_model_passes_bioimageio_test(packages, name):
    from bioimageio.core import test_model

    zips = packages[name]
    assert [z.name for z in zips] == ([f"{name}-native.zip", f"{name}-contrast.zip"] if name == SHIPPED_CT
                                      else [f"{name}.zip"])
    for package in zips:
        summary = test_model(package)
        failed = [d.name for d in summary.details if d.status == "failed"]
        assert summary.status == "passed", failed
        names = set(zipfile.ZipFile(package).namelist())
        # both weight formats, test tensors, cover, README, and our own folder for an exact import
        assert {"weights.pt", "weights_torchscript.pt", "test_input.npy", "test_output.npy", "cover.png",
                "README.md", "config.json", "weights.safetensors", "rdf.yaml"} <= names


@pytest.mark.slow
def test_bioimageio_cli_test_command_passes_an_exported_package(packages):
    """The `bioimageio test` command itself, as a model zoo reviewer would run it."""
    package = packages[SHIPPED_US["heart"]][0]
    done = subprocess.run([sys.executable, "-m", "bioimageio.core", "test", str(package)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_package_readme_names_what_the_format_cannot_express(packages):
    readme = zipfile.ZipFile(packages[SHIPPED_US["liver"]][0]).read("README.md").decode()
    assert "What this package does not do" in readme and "watershed" in readme and "RoiSet" in readme
    mosnet = zipfile.ZipFile(packages[SHIPPED_CT][0]).read("README.md").decode()
    assert "resampling" in mosnet and "0.28 mm" in mosnet and "10.1515/bmt-2024-0451" in mosnet
    rdf = zipfile.ZipFile(packages[SHIPPED_CT][0]).read("rdf.yaml").decode()
    assert "10.1515/bmt-2024-0451" in rdf and "clip" in rdf and "scale_linear" in rdf and "sigmoid" in rdf


def test_our_unet_package_imports_back_and_predicts_the_same(packages, home):
    frames = ultrasound_series(seed=4, n_frames=3).frames[:, :232, :304]
    original, _, _ = load_unet(SHIPPED_US["heart"])
    before = predict_probabilities(original, frames)
    import_model(packages[SHIPPED_US["heart"]][0], name="heart-from-zoo")
    restored, config, _ = load_unet("heart-from-zoo")
    assert config.organ == "heart" and (home / "heart-from-zoo" / "weights.safetensors").is_file()
    assert np.abs(predict_probabilities(restored, frames) - before).max() <= 1e-4


def test_our_package_run_as_a_consumer_would_matches_our_predictor(packages):
    """The package's TorchScript with its own preprocessing (what deepImageJ or bioimageio.core run)
    gives our U-Net's probabilities, to within 1e-4, on frames whose size needs no padding."""
    from napari_mousesegment.models.packaged import PackagedConfig, PackagedModel

    frames = ultrasound_series(seed=5, n_frames=2).frames[:, :224, :304]
    consumer = PackagedModel(packages[SHIPPED_US["placenta"]][0], PackagedConfig(organ="placenta"))
    original, _, _ = load_unet(SHIPPED_US["placenta"])
    assert np.abs(consumer.probabilities(frames) - predict_probabilities(original, frames)).max() <= 1e-4


def test_our_mosnet_package_imports_back_and_predicts_the_same(packages, home):
    from napari_mousesegment.data.phantom_ct import ct_phantom
    from napari_mousesegment.inference.ct import predict_volume

    scan = ct_phantom(seed=2, condition="contrast", shape=(40, 48, 64), spacing=0.28)
    original, _, _ = load_model(SHIPPED_CT, kind="mosnet")
    import_model(packages[SHIPPED_CT][1], name="mosnet-from-zoo")
    restored, _, _ = load_model("mosnet-from-zoo", kind="mosnet")
    a = predict_volume(original, scan.image, (0.28,) * 3, "contrast", keep_probabilities=True)
    b = predict_volume(restored, scan.image, (0.28,) * 3, "contrast", keep_probabilities=True)
    assert np.array_equal(a.labels, b.labels)
    assert np.abs(a.probabilities.astype(np.float32) - b.probabilities.astype(np.float32)).max() <= 1e-4


def _mosnet_round_trip(tmp_path, name: str, **fields):
    """A random width-4 MOSnet with ``fields`` exported, its native package imported back as
    NAME-from-zoo; both must give the same probabilities on a native phantom. (package, restored)"""
    from napari_mousesegment.data.phantom_ct import ct_phantom
    from napari_mousesegment.inference.ct import predict_volume
    from napari_mousesegment.models.folder import save_model
    from napari_mousesegment.models.mosnet import MOSnet, MOSnetConfig
    from napari_mousesegment.organs import CT_ORGANS

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = MOSnetConfig(organs=list(CT_ORGANS), width=4, depth=2, image_size=32,
                          annotated={"native": list(CT_ORGANS)}, **fields)
    folder = save_model(tmp_path / name, MOSnet(config).eval(), config)
    assert main(["models", "export", str(folder), str(tmp_path / "zoo"), "--format", "bioimageio"]) == 0
    package = sorted((tmp_path / "zoo").glob("*native*.zip"))[0]
    import_model(package, name=f"{name}-from-zoo")
    restored, _, _ = load_model(f"{name}-from-zoo", kind="mosnet")
    scan = ct_phantom(seed=2, condition="native", shape=(24, 32, 40), spacing=0.28)
    original, _, _ = load_model(str(folder), kind="mosnet")
    a = predict_volume(original, scan.image, (0.28,) * 3, "native", keep_probabilities=True)
    b = predict_volume(restored, scan.image, (0.28,) * 3, "native", keep_probabilities=True)
    assert np.abs(a.probabilities.astype(np.float32) - b.probabilities.astype(np.float32)).max() <= 1e-4
    return package, restored


def test_a_mosnet_with_extra_windows_exports_and_imports_back_the_same(tmp_path, home):
    """The extra windows are cut inside the network, so the package's one clip-and-scale step and its
    weights give our predictor's labels once imported back."""
    _, restored = _mosnet_round_trip(tmp_path, "mw", window_level=0, window_width=2000,
                                     extra_windows=[[40, 400], [45, 100, 2]])
    assert restored.config.extra_windows == [[40.0, 400.0], [45.0, 100.0, 2.0]]


def test_a_multi_planar_mosnet_exports_its_axial_reading_and_imports_back_whole(tmp_path, home):
    """A package's consumers feed one slice: the package is the network's reading of its first plane,
    its test output that of an axial slice; imported back, our predictor fuses the planes again."""
    import zipfile

    package, restored = _mosnet_round_trip(tmp_path, "mp", plane="axial+coronal")
    with zipfile.ZipFile(package) as zf:
        readme = zf.read("README.md").decode()
    assert "cutting axial slices" in readme and "other planes it was trained on (axial+coronal)" in readme
    assert restored.config.plane == "axial+coronal"


def test_export_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "zoo"
    assert main(["models", "export", SHIPPED_US["heart"], str(out), "--format", "bioimageio"]) == 0
    assert (out / f"{SHIPPED_US['heart']}.zip").is_file()
    assert main(["models", "export", SHIPPED_US["heart"], str(out), "--format", "bioimageio"]) != 0
    assert "--force" in capsys.readouterr().err
    assert main(["models", "export", SHIPPED_US["heart"], str(out), "--format", "bioimageio", "--force"]) == 0
    assert not list(out.glob("*.partial"))


def test_another_labs_2d_package_segments_ultrasound_with_its_own_preprocessing(tmp_path, home, capsys):
    package = foreign_package(tmp_path / "lab")
    assert main(["models", "import", str(package), "--name", "lab-heart"]) == 0
    model, config, _ = load_organ_model("lab-heart")
    assert (config.kind, config.organ, config.spatial_dims) == ("bioimageio", "heart", 2)  # organ from its name
    frames = ultrasound_series(seed=6, n_frames=2).frames
    probability = organ_probabilities(model, frames)
    for frame, prob in zip(frames, probability):  # 240 x 320: sizes the package takes as they are
        assert np.abs(prob - expected(frame.astype(np.float32))).max() <= 1e-4
    odd = organ_probabilities(model, frames[:, :235, :301])  # mirrored up to its size step, cropped back
    assert odd.shape == (2, 235, 301)
    assert np.abs(odd[:, :200, :260] - probability[:, :200, :260]).max() <= 0.05


def test_another_labs_package_takes_an_organ_slot_in_predict_ultrasound(tmp_path, home):
    import tifffile

    from napari_mousesegment.data.phantom_us import write_us_series

    package = foreign_package(tmp_path / "lab")
    assert main(["models", "import", str(package), "--name", "lab-heart", "--organ", "heart"]) == 0
    series = write_us_series(tmp_path / "series", ultrasound_series(seed=1, n_frames=4))
    composite = next(p for p in series.rglob("*.tif") if "composite" in p.name or p.parent == series)
    assert main(["predict", "ultrasound", str(composite), "--organs", "heart", "--model", "heart=lab-heart",
                 "--out", str(tmp_path / "out")]) == 0
    labels = tifffile.imread(next((tmp_path / "out").rglob("heart_labels.tif")))
    assert labels.shape[0] == 4 and labels.max() >= 1


def test_another_labs_3d_package_runs_on_a_volume(tmp_path, home):
    package = foreign_package(tmp_path / "lab", dims=3, name="Liver volume model")
    import_model(package, name="lab-liver-3d")
    model, config, _ = load_model("lab-liver-3d")
    assert (config.organ, config.spatial_dims) == ("liver", 3)
    volume = np.random.default_rng(1).normal(0, 1, (16, 48, 40)).astype(np.float32)
    assert np.abs(model.probabilities(volume) - expected(volume, dims=3)).max() <= 1e-4
    with pytest.raises(ModelError, match="3D bioimage.io package, not an ultrasound U-Net"):
        load_organ_model("lab-liver-3d")


@pytest.mark.parametrize("kwargs, reason", [
    ({"channels": 2}, "2 channels; we run single-channel models"),
    ({"formats": ("pytorch_state_dict",)}, "does not execute; ask for TorchScript"),
    ({"time_axis": True}, "time axis"),
])
def test_packages_we_cannot_run_are_refused_with_the_reason(tmp_path, home, capsys, kwargs, reason):
    package = foreign_package(tmp_path / "lab", **kwargs)
    assert main(["models", "import", str(package), "--name", "nope"]) != 0
    err = capsys.readouterr().err.strip()
    assert reason in err and "cannot be imported" in err and len(err.splitlines()) == 1
    assert not (home / "nope").exists()


def test_a_damaged_package_is_refused_in_one_line(tmp_path, home, capsys):
    package = foreign_package(tmp_path / "lab")
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data.replace(b"format_version", b"format_versio") if item.filename == "rdf.yaml"
                         else data[: len(data) // 2] if item.filename.endswith(".ts") else data)
    assert main(["models", "import", str(broken), "--name", "broken"]) != 0
    err = capsys.readouterr().err.strip()
    assert "broken.zip" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (home / "broken").exists()


def test_a_tampered_imported_package_is_refused_when_loaded(tmp_path, home):
    package = foreign_package(tmp_path / "lab")
    folder = import_model(package, name="lab-heart")
    with open(folder / "package.zip", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ModelError, match="does not match the sha256"):
        load_model("lab-heart")


def test_a_format_0_4_package_imports_and_runs(tmp_path, home):
    from tests.bioimageio_packages import foreign_package_v0_4

    import_model(foreign_package_v0_4(tmp_path / "old"), name="old-heart")
    model, config, _ = load_organ_model("old-heart")
    assert (config.organ, config.spatial_dims) == ("heart", 2)
    frames = ultrasound_series(seed=8, n_frames=2).frames[:, :224, :320]  # multiples of its step 16
    for frame, prob in zip(frames, organ_probabilities(model, frames)):
        assert np.abs(prob - expected(frame.astype(np.float32))).max() <= 1e-4


def test_packages_import_from_a_url(tmp_path, home, packages, served):
    """Ours with its sha256 checked (a wrong one refused); another lab's without one, leaving no
    download behind."""
    import hashlib
    import shutil
    import tempfile
    from pathlib import Path

    www, url = served
    ours = shutil.copy(packages[SHIPPED_US["liver"]][0], www / "liver.zip")
    digest = hashlib.sha256(Path(ours).read_bytes()).hexdigest()
    with pytest.raises(ModelError):
        import_model(f"{url}/liver.zip", name="liver-web", sha256="0" * 64)
    assert import_model(f"{url}/liver.zip", name="liver-web", sha256=digest) == home / "liver-web"
    assert load_unet("liver-web")[1].organ == "liver"
    shutil.copy(foreign_package(tmp_path / "lab"), www / "theirs.zip")
    before = set(Path(tempfile.gettempdir()).glob("mousesegment-*"))
    import_model(f"{url}/theirs.zip", name="their-heart")
    assert load_model("their-heart")[1].kind == "bioimageio"
    assert set(Path(tempfile.gettempdir()).glob("mousesegment-*")) == before
