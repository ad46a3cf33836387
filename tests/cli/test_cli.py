import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_mousesegment.cli import main
from napari_mousesegment.data.phantom_us import ultrasound_series
from napari_mousesegment.io.composites import montage
from napari_mousesegment.io.tiff import read_tiff


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--out", str(out), "--no-models"]) == 0
    return out


def test_demo_writes_real_outputs_and_says_what_it_skipped(demo_out):
    report = json.loads((demo_out / "report.json").read_text())
    status = {s["name"]: s["status"] for s in report["steps"]}
    assert status["micro-CT native: synthetic scan and truth"] == "done"
    assert status["ultrasound: split the 5x7 montage into frames"] == "done"
    skipped = [s for s in report["steps"] if s["status"] == "skipped"]
    assert skipped and all("model" in s["detail"] for s in skipped)
    assert report["scores"] is None  # no model ran, so no score is claimed
    image, spacing = read_tiff(demo_out / "ct" / "native" / "scan.tif")
    assert image.shape == (200, 110, 150) and spacing == pytest.approx((0.28,) * 3)
    frames = tifffile.imread(demo_out / "ultrasound" / "split" / "frames.tif")
    assert np.array_equal(frames, tifffile.imread(demo_out / "ultrasound" / "series_demo" / "series_demo.tif"))
    assert list((demo_out / "ultrasound" / "series_demo" / "hearts").glob("frame_*.zip"))
    assert "skipped" in (demo_out / "report.md").read_text()


def test_demo_refuses_non_empty_out_unless_overwrite(demo_out, tmp_path, capsys):
    assert main(["demo", "--out", str(demo_out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    mine = tmp_path / "my_data"
    mine.mkdir()
    (mine / "precious.tif").write_bytes(b"user data")
    assert main(["demo", "--out", str(mine), "--overwrite"]) == 2  # not a demo folder: never deleted
    assert (mine / "precious.tif").read_bytes() == b"user data"


def test_demo_overwrite_replaces_an_earlier_demo(tmp_path):
    out = tmp_path / "again"
    assert main(["demo", "--out", str(out), "--seed", "1", "--no-models"]) == 0
    (out / "stale.txt").write_text("old")
    assert main(["demo", "--out", str(out), "--overwrite", "--seed", "1", "--no-models"]) == 0
    assert not (out / "stale.txt").exists() and (out / "report.json").exists()


def test_split_command(tmp_path, capsys):
    series = ultrasound_series(2, frame_shape=(96, 128))
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "composite.png", montage(series.frames))
    assert main(["split", str(tmp_path / "composite.png"), "--out", str(tmp_path / "out")]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "frames.tif"), series.frames)
    assert "grid 5x7" in capsys.readouterr().out
    assert main(["split", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o2")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_split_rejects_bad_grid(tmp_path):
    with pytest.raises(SystemExit):
        main(["split", "x.png", "--out", str(tmp_path), "--grid", "5by7"])


def test_synth_ultrasound_writes_lab_layout(tmp_path):
    assert main(["synth", "ultrasound", "--out", str(tmp_path / "lab"), "--seed", "4"]) == 0
    series = tmp_path / "lab" / "series_0004"
    assert (series / "series_0004.tif").is_file() and (series / "placentas").is_dir()
    assert main(["synth", "ultrasound", "--out", str(tmp_path / "lab")]) == 2  # non-empty


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "napari_mousesegment.cli", "--help"],
                         capture_output=True, text=True, check=True)
    assert "demo" in out.stdout and "split" in out.stdout


def test_console_script_errors_are_one_line_and_exit_2(tmp_path):
    """The real entry point (not main() in-process): one stderr line naming the file, exit 2."""
    out = subprocess.run([sys.executable, "-m", "napari_mousesegment.cli", "roi", "export",
                          str(tmp_path / "missing.tif"), "--out", str(tmp_path / "x.zip")],
                         check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"mousesegment roi: error: {tmp_path / 'missing.tif'}: no such TIFF file"]
