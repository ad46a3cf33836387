"""First use without friction: built-in models by default, --condition auto, scans that are not HU
refused (or forced), one rule for a bad input in a batch, and organ volumes flagged when implausible."""

import csv
import json

import numpy as np
import pytest
import tifffile

from napari_mousesegment.cli import main
from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.data.phantom_us import ultrasound_series, write_us_series
from napari_mousesegment.io.composites import read_composite
from napari_mousesegment.io.hu import guess_condition, hu_problem
from napari_mousesegment.io.tiff import write_tiff
from napari_mousesegment.organs import CT_ORGANS, CT_VOLUME_RANGES_MM3, volume_flag

#: A whole phantom mouse on a 0.56 mm grid: real anatomy sizes, a few seconds per prediction on a CPU.
HALF = {"shape": (100, 55, 75), "spacing": 0.56}


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_use")
    for condition in ("native", "contrast"):
        scan = ct_phantom(7, condition, **HALF)
        write_tiff(root / f"{condition}.tif", scan.image[28:56], scan.spacing)  # the liver's slices: quick
    tifffile.imwrite(root / "bytes.tif", np.zeros((30, 40, 50), np.uint8) + 90)  # 8-bit: not HU
    return root


@pytest.fixture(scope="module")
def batch_run(scans, tmp_path_factory):
    """`predict ct` as a new user types it: no --model, no --condition, one bad scan among good ones."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("batch") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["predict", "ct", str(scans / "native.tif"), str(scans / "bytes.tif"), str(scans / "contrast.tif"),
                     "--out", str(out), "--device", "cpu", "--spacing", "0.56"])
    return code, stdout.getvalue(), stderr.getvalue(), out


def test_predict_ct_needs_no_model_or_condition_and_says_what_it_chose(batch_run):
    _, printed, _, out = batch_run
    assert "built-in mosnet-synthetic" in printed
    assert "native.tif: condition native (auto: " in printed
    assert "contrast.tif: condition contrast (auto: " in printed
    for name, condition in (("native", "native"), ("contrast", "contrast")):
        manifest = json.loads((out / name / ".complete.json").read_text())
        assert manifest["condition"] == condition and manifest["condition_how"].startswith("auto: ")


def test_a_bad_scan_in_a_serial_batch_is_reported_and_the_others_go_on(batch_run):
    code, printed, _, out = batch_run
    assert code == 1  # one scan failed, after the others were done
    assert "2 done, 0 skipped, 1 failed" in printed
    failed = [line for line in printed.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "bytes.tif" in failed[0] and "--hu" in failed[0]
    assert (out / "contrast" / "labels.tif").exists()  # the scan after the bad one was done
    assert not (out / "bytes").exists()


def test_the_run_ends_with_a_volume_table_in_the_output_and_report_md(batch_run):
    _, printed, _, out = batch_run
    table = printed[printed.index("organ volumes"):]
    assert "volume (mm3)" in table and "flag" in table and table.count("liver") == 2
    rows = list(csv.DictReader((out / "native" / "volumes.csv").open()))
    assert list(rows[0]) == ["organ", "voxels", "mm3", "flag"]  # the old columns first, unchanged
    assert {r["organ"]: r["flag"] for r in rows}["liver"] == "ok"  # a mouse-sized phantom: a plausible liver
    report = (out / "report.md").read_text()
    assert "| native | native | liver |" in report and "bytes.tif" in report  # the failure too


def test_a_rerun_on_dask_skips_the_scans_done_serially_and_still_shows_their_volumes(batch_run, scans, capsys):
    _, _, _, out = batch_run
    assert main(["predict", "ct", str(scans / "native.tif"), str(scans / "contrast.tif"), "--out", str(out),
                 "--device", "cpu", "--spacing", "0.56", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "0 done, 2 skipped, 0 failed" in printed  # same model and settings (auto included): complete
    table = printed[printed.index("organ volumes"):]
    assert "native " in table and "contrast " in table and table.count("liver") == 2


@pytest.mark.parametrize("kind", ["uint8", "bool", "int8", "zero", "rgb", "no-air"])
def test_scans_that_are_not_hu_are_refused_in_one_line_and_forced_through(scans, tmp_path, capsys, kind):
    base = ct_phantom(7, "native", shape=(30, 28, 32)).image
    path = tmp_path / f"{kind}.tif"
    data = {"uint8": np.clip(base // 8 + 128, 0, 255).astype(np.uint8), "bool": base > 0,
            "int8": np.clip(base // 16, -128, 127).astype(np.int8), "zero": np.zeros_like(base),
            "rgb": np.stack([np.clip(base[15] // 8 + 128, 0, 255).astype(np.uint8)] * 3, -1),
            "no-air": (base.astype(np.int32) + 1024).astype(np.int16)}[kind]
    tifffile.imwrite(path, data, photometric="rgb" if kind == "rgb" else None)
    args = ["predict", "ct", str(path), "--spacing", "0.28", "--condition", "native", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "--force" in err
    assert ("RGB image" in err) if kind == "rgb" else ("--hu" in err)
    assert not (tmp_path / "out").exists()  # refused before anything was written
    assert main([*args, "--out", str(tmp_path / "forced"), "--force"]) == 0
    assert "predicting anyway (--force)" in capsys.readouterr().err
    assert (tmp_path / "forced" / kind / "labels.tif").exists()


def test_flags_mark_implausible_volumes_in_the_csv_and_report_md(scans, tmp_path, capsys):
    # a voxel size five times too small: every organ 125 times too small for a mouse
    assert main(["predict", "ct", str(scans / "native.tif"), "--spacing", "0.112", "--condition", "native",
                 "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "native" / "volumes.csv").open()))
    assert {r["organ"]: r["flag"] for r in rows}["liver"] == "low"
    assert all(r["flag"] == volume_flag(r["organ"], float(r["mm3"])) for r in rows)
    assert "| liver | " in (tmp_path / "out" / "report.md").read_text()
    assert "| native | native | liver |" in (tmp_path / "out" / "report.md").read_text()
    assert "**low**" in (tmp_path / "out" / "report.md").read_text()
    assert " low " in capsys.readouterr().out


def test_volume_ranges_cover_every_ct_organ_and_flag_the_reported_heart():
    assert set(CT_VOLUME_RANGES_MM3) == set(CT_ORGANS)
    assert volume_flag("heart", 30781) == "high" and volume_flag("heart", 217) == "ok"  # the heart
    assert volume_flag("liver", 0) == "absent" and volume_flag("tail", 5) == "" and volume_flag("tail", 0) == "absent"
    assert volume_flag("spleen", 1) == "low"


def test_the_full_size_phantoms_are_plausible_mice():
    """The shipped demo's phantoms are mouse-sized, so their truth is not flagged (docs/mosnet.md)."""
    for condition in ("native", "contrast"):
        volumes = ct_phantom(0, condition).organ_volumes()
        assert {o: volume_flag(o, v) for o, v in volumes.items()} == {o: "ok" for o in volumes}


@pytest.mark.parametrize("seed", [1, 2])
def test_auto_condition_tells_native_from_contrast(seed):
    for condition in ("native", "contrast"):
        scan = ct_phantom(seed, condition, **HALF)
        assert guess_condition(scan.image, scan.spacing)[0] == condition
        assert hu_problem(scan.image) is None
    coarse = ct_phantom(seed, "native", shape=(40, 32, 40), spacing=1.4)
    with pytest.raises(ValueError, match="give --condition"):
        guess_condition(coarse.image, coarse.spacing, "coarse.tif")


def test_predict_ultrasound_without_model_uses_the_built_in_one(tmp_path, capsys):
    folder = write_us_series(tmp_path / "S1", ultrasound_series(seed=3, n_frames=3, frame_shape=(96, 128)))
    assert main(["predict", "ultrasound", str(folder), "--organs", "heart", "--out", str(tmp_path / "p"),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert "built-in unet-heart-synthetic" in printed.out and "3 frames, not the usual 35" in printed.err
    assert tifffile.imread(tmp_path / "p" / "S1" / "heart_labels.tif").shape == (3, 96, 128)


def test_a_series_folder_written_by_synth_is_a_composite(tmp_path, capsys):
    assert main(["synth", "ultrasound", "--out", str(tmp_path / "synth")]) == 0
    series = tmp_path / "synth" / "series_0000"
    composite = read_composite(series)
    assert composite.frames.shape == (35, 240, 320)
    assert np.array_equal(composite.frames, tifffile.imread(series / "series_0000.tif"))
    assert main(["split", str(series), "--out", str(tmp_path / "split")]) == 0
    assert tifffile.imread(tmp_path / "split" / "frames.tif").shape == (35, 240, 320)


def test_a_uint16_nifti_scaled_to_hu_is_accepted_and_one_without_scaling_is_not(tmp_path):
    """A lazily read NIfTI announces its stored type (uint16) while its slices come out in HU."""
    import nibabel as nib

    from napari_mousesegment.io.readers import read_scan

    image = ct_phantom(7, "native", shape=(30, 28, 32)).image
    raw = (image.astype(np.int32) + 1024).astype(np.uint16).transpose(2, 1, 0)
    for name, scaled in (("scaled.nii", True), ("raw.nii", False)):
        nifti = nib.Nifti1Image(raw, np.diag([0.28, 0.28, 0.28, 1]))
        nifti.header.set_data_dtype(np.uint16)
        if scaled:
            nifti.header.set_slope_inter(1.0, -1024.0)
        nifti.to_filename(tmp_path / name)
        scan = read_scan(tmp_path / name, lazy=True)
        assert (hu_problem(scan.image) is None) == scaled
