"""The micro-CT commands end to end on tiny phantoms: dataset, train, predict, evaluate, compare."""

import json

import numpy as np
import pytest
import tifffile

from napari_mousesegment.cli import main
from napari_mousesegment.data.ct_dataset import write_ct_case
from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.io.tiff import read_tiff

SHAPE = (40, 32, 40)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_ct")
    for condition, seed in (("native", 0), ("contrast", 10)):
        for k in range(2):  # small phantoms on a coarse grid keep the test fast
            write_ct_case(root / condition, f"p{k}", ct_phantom(seed + k, condition, shape=SHAPE, spacing=1.4))
    model = root / "model"
    assert main(["train", "mosnet", "--data", str(root / "native"), "--data", str(root / "contrast"),
                 "--out", str(model), "--width", "4", "--image-size", "32", "--epochs", "2", "--voxel-mm", "1.4",
                 "--device", "cpu", "--val-fraction", "0.5"]) == 0
    return root, model


def test_train_writes_a_loadable_model_folder(trained):
    _, model = trained
    meta = json.loads((model / "config.json").read_text())
    assert meta["kind"] == "mosnet" and meta["width"] == 4 and "stomach" in meta["organs"]
    assert meta["spacing_mm"] == 1.4
    assert (model / "curves.png").exists() and (model / "history.csv").exists()


def _train_and_predict(root, model, *flags: str) -> tuple:
    """A one-epoch width-4 MOSnet trained with ``flags`` on the fixture's two datasets, then run by
    ``predict ct`` on one native scan, whose labels must come back on the scan's grid; (folder, config)."""
    assert main(["train", "mosnet", "--data", str(root / "native"), "--data", str(root / "contrast"),
                 "--out", str(model), "--width", "4", "--image-size", "32", "--epochs", "1", "--voxel-mm", "1.4",
                 "--device", "cpu", "--val-fraction", "0.5", *flags]) == 0
    scan = next((root / "native" / "images").glob("*.tif"))
    pred = model.parent / f"{model.name}-pred"
    assert main(["predict", "ct", str(scan), "--model", str(model), "--condition", "native", "--out", str(pred)]) == 0
    assert read_tiff(pred / scan.stem / "labels.tif")[0].shape == tifffile.imread(scan).shape
    return model, json.loads((model / "config.json").read_text())


def test_a_2_5d_model_trains_predicts_and_is_kept_out_of_bioimageio(trained, tmp_path, capsys):
    root, _ = trained
    model, meta = _train_and_predict(root, tmp_path / "model25", "--context-slices", "1", "--context-step", "1")
    assert meta["context"] == 1 and meta["context_step"] == 1
    pytest.importorskip("bioimageio.spec")
    capsys.readouterr()
    assert main(["models", "export", str(model), str(tmp_path / "zoo"), "--format", "bioimageio"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2.5D" in err[0] and "Traceback" not in err[0]
    with pytest.raises(SystemExit):
        main(["train", "mosnet", "--data", str(root / "native"), "--out", str(tmp_path / "x"),
              "--context-slices", "9"])


def test_a_model_that_reads_slice_positions_trains_predicts_and_is_kept_out_of_bioimageio(trained, tmp_path,
                                                                                         capsys):
    root, _ = trained
    model, meta = _train_and_predict(root, tmp_path / "pos", "--slice-position")
    assert meta["position"] is True and meta["training"]["settings"]["augment"]["position"] == 0.05
    pytest.importorskip("bioimageio.spec")
    capsys.readouterr()
    assert main(["models", "export", str(model), str(tmp_path / "zoo"), "--format", "bioimageio"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--slice-position" in err[0] and "Traceback" not in err[0]
    assert main(["train", "mosnet", "--data", str(root / "native"), "--out", str(tmp_path / "x"),
                 "--slice-position", "--plane", "coronal", "--device", "cpu"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "axial slices only" in err[0]
    assert main(["train", "mosnet", "--data", str(root / "native"), "--out", str(tmp_path / "y"),
                 "--augment", "position=0.1", "--device", "cpu"]) != 0  # nothing to shift without the channel
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--augment takes NAME=VALUE" in err[0]


def test_predict_ct_streams_a_multi_planar_model_s_fused_labels(trained, tmp_path, monkeypatch):
    """predict ct writes a multi-planar model's labels slab by slab (never through the whole-volume
    predict_volume), its planes' sums on disk in the staging folder meanwhile: the labels are
    predict_volume's and nothing else is left behind."""
    from napari_mousesegment.inference import ct
    from napari_mousesegment.store.load import load_mosnet

    root, _ = trained
    model, meta = _train_and_predict(root, tmp_path / "mp", "--plane", "axial+coronal")
    assert meta["plane"] == "axial+coronal"
    scan = next((root / "native" / "images").glob("*.tif"))
    net = load_mosnet(model)[0]
    expected = ct.predict_volume(net, tifffile.imread(scan).astype(np.float32), (1.4, 1.4, 1.4), "native").labels
    assert len(np.unique(expected)) > 1
    monkeypatch.setattr(ct, "predict_volume", None)  # predict ct must not need it
    out = tmp_path / "streamed"
    assert main(["predict", "ct", str(scan), "--model", str(model), "--condition", "native", "--out", str(out)]) == 0
    assert np.array_equal(read_tiff(out / scan.stem / "labels.tif")[0], expected)
    left = [p.name for p in out.rglob(".*")]
    assert left == [".complete.json"]  # the manifest; no staging folder, no planes' sums


def test_train_mosnet_defaults_are_the_measured_recipe_and_the_paper_s_stays_reachable(trained, tmp_path, capsys):
    root, _ = trained
    _, meta = _train_and_predict(root, tmp_path / "defaults")
    settings = meta["training"]["settings"]
    assert (meta["window_level"], meta["window_width"], meta["extra_windows"]) == (0, 2000, [[40, 400]])
    assert (settings["batch_size"], settings["sampling"], settings["exclusion_weight"]) == (4, "organs", 1.0)
    assert meta["variant"] == "bm_cm"  # on a CPU: no reconstruction decoder
    _, meta = _train_and_predict(root, tmp_path / "paper", "--window", "400,1000", "--batch-size", "16",
                                 "--sampling", "uniform", "--exclusion-weight", "0", "--variant", "full")
    settings = meta["training"]["settings"]
    assert meta["variant"] == "full"
    assert (meta["window_level"], meta["window_width"], meta["extra_windows"]) == (400, 1000, [])
    assert (settings["batch_size"], settings["sampling"], settings["exclusion_weight"]) == (16, "uniform", 0.0)


def test_train_mosnet_reads_through_the_windows_it_is_given(trained, tmp_path, capsys):
    root, _ = trained
    _, meta = _train_and_predict(root, tmp_path / "windows", "--window", "100,3000", "--extra-window", "40,400",
                                 "--extra-window", "60,200,1.5")
    assert (meta["window_level"], meta["window_width"], meta["extra_windows"]) == (100, 3000,
                                                                                  [[40, 400], [60, 200, 1.5]])
    capsys.readouterr()
    for bad in (["--window", "40"], ["--window", "40,5"], ["--extra-window", "a,b"], ["--window", "40,400,2"],
                ["--extra-window", "40,400,9"], ["--extra-window", "40,400,nan"], ["--extra-window", "40,400,2,2"]):
        with pytest.raises(SystemExit):
            main(["train", "mosnet", "--data", str(root / "native"), "--out", str(tmp_path / "x"), *bad])
        err = capsys.readouterr().err
        assert "window" in err and "Traceback" not in err


def test_predict_ct_contract(trained, tmp_path):
    root, model = trained
    scan = next((root / "native" / "images").glob("*.tif"))
    assert main(["predict", "ct", str(scan), "--model", str(model), "--condition", "native",
                 "--out", str(tmp_path / "pred")]) == 0
    out = tmp_path / "pred" / scan.stem
    labels, spacing = read_tiff(out / "labels.tif")
    assert labels.shape == tifffile.imread(scan).shape and spacing == pytest.approx((1.4, 1.4, 1.4))
    assert json.loads((out / "labels.json").read_text())["organs"]["heart"] == 1
    assert (out / "volumes.csv").read_text().startswith("organ,voxels,mm3")
    assert main(["predict", "ct", str(scan), "--model", str(model), "--condition", "arterial",
                 "--out", str(tmp_path / "bad")]) == 2
    assert main(["predict", "ct", str(scan), "--model", str(model), "--condition", "native",
                 "--out", str(tmp_path / "one"), "--batch-size", "1"]) == 0
    assert np.array_equal(read_tiff(tmp_path / "one" / scan.stem / "labels.tif")[0], labels)
    with pytest.raises(SystemExit):
        main(["predict", "ct", str(scan), "--model", str(model), "--condition", "native",
              "--out", str(tmp_path / "bad"), "--batch-size", "0"])


def test_evaluate_and_compare(trained, tmp_path, capsys):
    root, model = trained
    assert main(["evaluate", "ct", "--model", str(model), "--data", str(root / "contrast"),
                 "--out", str(tmp_path / "report")]) == 0
    rows = (tmp_path / "report" / "per_scan.csv").read_text().splitlines()
    assert rows[0].startswith("scan,organ,dsc,jsc,hd95_mm") and len(rows) == 1 + 2 * 9
    assert "DSC" in (tmp_path / "report" / "summary.md").read_text()
    assert main(["evaluate", "compare", f"a={tmp_path / 'report'}", f"b={tmp_path / 'report'}",
                 "--out", str(tmp_path / "table.md")]) == 0
    assert "| a |" in (tmp_path / "table.md").read_text()


def test_evaluate_with_and_without_borrowed_organs(trained, tmp_path, monkeypatch):
    from napari_mousesegment.jobs import ct as ct_jobs
    from napari_mousesegment.store.load import load_mosnet

    root, model = trained
    assert load_mosnet(model)[1].borrowed_organs("native")  # stomach and bone: no native dataset annotates them
    seen = []
    real = ct_jobs.evaluate_ct
    monkeypatch.setattr(ct_jobs, "evaluate_ct", lambda *a, **k: seen.append(k["borrow"]) or real(*a, **k))
    for flags in ([], ["--no-borrow"]):
        assert main(["evaluate", "ct", "--model", str(model), "--data", str(root / "native"),
                     "--out", str(tmp_path / f"report{len(flags)}"), *flags]) == 0
        rows = (tmp_path / f"report{len(flags)}" / "per_scan.csv").read_text().splitlines()
        assert len(rows) == 1 + 2 * 7  # the native dataset's organs
    assert seen == [True, False]


def test_dataset_ct_from_the_real_label_map_needs_an_image(tmp_path, capsys):
    from ..conftest import shared_file

    segff = shared_file("rosenhain", "CT280_organs.segff")
    assert main(["dataset", "ct", str(segff), "--out", str(tmp_path / "ds"), "--condition", "native"]) == 2
    assert "needs both an image and organ labels" in capsys.readouterr().err


def test_dataset_ct_converts_and_renumbers(tmp_path):
    import nibabel

    scan = ct_phantom(3, "native", shape=SHAPE)
    # another lab's numbering: liver = 20, heart = 40
    labels = np.zeros(SHAPE, np.uint8)
    labels[scan.labels == 3] = 20
    labels[scan.labels == 1] = 40
    folder = tmp_path / "M01_024h"
    folder.mkdir()
    affine = np.diag([0.28, 0.28, 0.28, 1])
    nibabel.save(nibabel.AnalyzeImage(np.transpose(scan.image, (2, 1, 0)), affine), str(folder / "CT280.hdr"))
    nibabel.save(nibabel.AnalyzeImage(np.transpose(labels, (2, 1, 0)), affine), str(folder / "Organ_280.hdr"))
    (folder / "Organ_280.cls").write_text("ClassIndices=0|20|40\nClassNames=unclassified|Liver|Heart\n")
    assert main(["dataset", "ct", str(folder), "--out", str(tmp_path / "ds"), "--condition", "native"]) == 0
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["organs"] == {"heart": 1, "liver": 3}
    out, _ = read_tiff(tmp_path / "ds" / "labels" / "M01_024h.tif")
    assert np.array_equal(out == 3, scan.labels == 3) and np.array_equal(out == 1, scan.labels == 1)


def test_demo_segments_and_scores_with_a_trained_model(trained, tmp_path):
    _, model = trained
    assert main(["demo", "--out", str(tmp_path / "demo"), "--ct-model", str(model), "--no-models"]) == 0
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    done = [s for s in report["steps"] if s["name"].endswith("MOSnet segmentation and organ volumes")]
    assert [s["status"] for s in done] == ["done", "done"]
    assert len(report["scores"]) == 18 and all(0 <= r["dsc"] <= 1 for r in report["scores"])
    assert (tmp_path / "demo" / "ct" / "native" / "labels.tif").exists()
    report_md = (tmp_path / "demo" / "report.md").read_text()
    assert "| ct contrast | liver |" in report_md and "| volume flag |" in report_md


def test_demo_refuses_a_folder_that_is_not_a_model(tmp_path):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--ct-model", str(tmp_path)]) == 2
    assert not (tmp_path / "demo").exists()
