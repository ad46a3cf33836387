"""The ultrasound and ROI commands end to end on tiny synthetic series."""

import json
import zipfile

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_mousesegment.cli import main
from napari_mousesegment.data.phantom_us import ultrasound_series, write_us_series
from napari_mousesegment.io.composites import montage, read_composite
from napari_mousesegment.io.roi import read_rois
from napari_mousesegment.io.tiff import write_stack
from napari_mousesegment.models.folder import save_model
from napari_mousesegment.models.unet import UNet, UNetConfig

pytestmark = pytest.mark.filterwarnings("ignore:.*not the usual 35:UserWarning")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_us")
    for seed in range(4):
        write_us_series(root / "lab" / f"S{seed}", ultrasound_series(seed=seed, n_frames=4, frame_shape=(64, 96)))
    return root


def test_roi_export_then_import_gives_the_instances_back(tmp_path, us_series, capsys):
    labels = us_series.labels["heart"]
    write_stack(tmp_path / "heart.tif", labels)
    assert main(["roi", "export", str(tmp_path / "heart.tif"), "--out", str(tmp_path / "h.zip"), "--organ", "heart"]) == 0
    rois = read_rois(tmp_path / "h.zip")
    assert len(rois) == len(us_series.organ_instances("heart"))
    assert all(r.name.startswith("heart_f") and r.position >= 1 for r in rois)
    assert main(["roi", "import", str(tmp_path / "h.zip"), "--shape", "35,240,320", "--out", str(tmp_path / "back.tif")]) == 0
    back = tifffile.imread(tmp_path / "back.tif")
    for frame in range(35):
        assert np.array_equal(back[frame] > 0, labels[frame] > 0)
        assert len(np.unique(back[frame])) == len(np.unique(labels[frame]))


def test_dataset_train_evaluate_predict(tmp_path, lab, capsys):
    ds = tmp_path / "ds"
    assert main(["dataset", "ultrasound", str(lab / "lab"), "--out", str(ds), "--test", "1"]) == 0
    assert json.loads((ds / "dataset.json").read_text())["kind"] == "ultrasound"
    model = tmp_path / "heart"
    assert main(["train", "unet", "--organ", "heart", "--data", str(ds), "--out", str(model), "--width", "4",
                 "--image-size", "32", "--epochs", "2", "--finetune-epochs", "0", "--device", "cpu"]) == 0
    assert json.loads((model / "config.json").read_text())["arch"] == "standard"  # the report's heart U-Net
    report = tmp_path / "report"
    assert main(["evaluate", "ultrasound", "--model", f"heart={model}", "--data", str(ds), "--out", str(report)]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["heart"]["series"] == 1 and 0 <= summary["heart"]["dice"] <= 1
    assert (report / "per_frame.csv").read_text().count("\n") == 1 + 4
    out = tmp_path / "pred"
    composite = lab / "lab" / "S0" / "S0.tif"
    assert main(["predict", "ultrasound", str(composite), "--organs", "heart", "--model", f"heart={model}",
                 "--out", str(out)]) == 0
    labels = tifffile.imread(out / "S0" / "heart_labels.tif")
    assert labels.shape == (4, 64, 96)
    assert zipfile.is_zipfile(out / "S0" / "heart_RoiSet.zip")


def test_empty_prediction_gives_an_empty_roiset_and_a_message(tmp_path, lab, capsys):
    config = UNetConfig(organ="liver", width=2, image_size=32, threshold=1.0)  # nothing passes 1.0
    save_model(tmp_path / "m", UNet(config), config)
    assert main(["predict", "ultrasound", str(lab / "lab" / "S1" / "S1.tif"), "--organs", "liver",
                 "--model", f"liver={tmp_path / 'm'}", "--out", str(tmp_path / "p")]) == 0
    assert "nothing found" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "p" / "S1" / "liver_RoiSet.zip") as archive:
        assert archive.namelist() == []


def test_predict_folders_hold_frames_tif_and_a_readme_for_fiji(tmp_path, lab):
    """A montage, a folder of frames and a stack: each prediction folder holds the frames its ROIs
    are on, as one ImageJ stack, and says how to open them in Fiji; the manifest counts both."""
    frames = tifffile.imread(lab / "lab" / "S2" / "S2.tif")
    iio.imwrite(tmp_path / "litter.png", montage(frames, (2, 2)))
    for k, frame in enumerate(frames, start=1):
        (tmp_path / "shots").mkdir(exist_ok=True)
        iio.imwrite(tmp_path / "shots" / f"frame{k}.png", frame)
    config = UNetConfig(organ="placenta", width=2, image_size=32)
    save_model(tmp_path / "m", UNet(config), config)
    sources = [tmp_path / "litter.png", tmp_path / "shots", lab / "lab" / "S2" / "S2.tif"]
    assert main(["predict", "ultrasound", *map(str, sources), "--organs", "placenta", "--grid", "2x2",
                 "--model", f"placenta={tmp_path / 'm'}", "--out", str(tmp_path / "p")]) == 0
    for source in sources:
        folder = tmp_path / "p" / source.stem
        with tifffile.TiffFile(folder / "frames.tif") as tif:
            assert tif.is_imagej and tif.imagej_metadata["images"] == 4  # ImageJ opens 4 slices
            written = tif.asarray()
        assert np.array_equal(written, read_composite(source).frames) and np.array_equal(written, frames)
        readme = (folder / "README.txt").read_text()
        assert "placenta_RoiSet.zip" in readme and "ROI Manager" in readme and "group 8 " in readme
        assert {"frames.tif", "README.txt"} <= set(json.loads((folder / ".complete.json").read_text())["files"])


def test_bad_model_specs_get_one_clear_line(tmp_path, lab, capsys):
    assert main(["predict", "ultrasound", str(lab / "lab" / "S1" / "S1.tif"), "--organs", "head",
                 "--out", str(tmp_path / "p")]) == 2  # heart, liver and placenta have built-in U-Nets; head none
    assert "no model for head" in capsys.readouterr().err
    assert main(["predict", "ultrasound", str(lab / "lab" / "S1" / "S1.tif"), "--model", "heart",
                 "--out", str(tmp_path / "p")]) == 2
    assert "model 'heart': no such folder or model name" in capsys.readouterr().err


def test_demo_segments_and_scores_the_series_with_given_unets(tmp_path):
    for organ in ("heart", "placenta"):
        config = UNetConfig(organ=organ, width=2, image_size=32)
        save_model(tmp_path / organ, UNet(config), config)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--us-model", f"heart={tmp_path / 'heart'}",
                 "--us-model", f"placenta={tmp_path / 'placenta'}", "--no-models"]) == 0
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert [r["organ"] for r in report["ultrasound_scores"]] == ["heart", "placenta"]
    assert all(0 <= r["dice"] <= 1 for r in report["ultrasound_scores"])  # an untrained net: honest, low
    predicted = tmp_path / "demo" / "ultrasound" / "predicted"
    assert (predicted / "heart_RoiSet.zip").exists() and tifffile.imread(predicted / "heart_labels.tif").shape == (35, 240, 320)
    split = tifffile.imread(tmp_path / "demo" / "ultrasound" / "split" / "frames.tif")
    assert np.array_equal(tifffile.imread(predicted / "frames.tif"), split)
    assert "placenta_labels.tif" in (predicted / "README.txt").read_text()
