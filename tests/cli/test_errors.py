"""One error path for the CLI: every foreseen failure is one stderr line naming the file or option,
with exit 2; an unexpected one is one line plus a traceback file, exit 1; ``--debug`` shows the
traceback; named pipes never hang a command; sizes are checked before they are allocated."""

from __future__ import annotations

import json
import math
import sqlite3
import struct
import zipfile
import zlib

import numpy as np
import pytest
import tifffile

from napari_mousesegment.cli import main
from napari_mousesegment.io.roi import composite_roi, mask_outlines
from napari_mousesegment.store.registry import BUILTIN

from ..fuzz.harness import time_limit


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A user folder of this test's own: models, registry.json and the traceback file."""
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def one_error(capsys, *names: str) -> str:
    """The one stderr line of a failed command; it must name each of ``names`` and hold no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("mousesegment ") and ": error: " in lines[0], err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, err)
    return lines[0]


@pytest.fixture
def labels_tif(tmp_path):
    labels = np.zeros((3, 40, 50), np.uint16)
    labels[1, 5:20, 5:25] = 1
    labels[2, 10:30, 20:40] = 2
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    return tmp_path / "labels.tif"


# --- the one error path ------------------------------------------------------------------------


def _raise(exc):
    def command(*args, **kwargs):
        raise exc
    return command


@pytest.mark.parametrize("exc, words", [
    (OSError(28, "No space left on device", "/data/out.tif"), ["/data/out.tif", "No space left", "disk is full"]),
    (sqlite3.DatabaseError("file is not a database"), ["database error", "file is not a database"]),
    (zlib.error("Error -3 while decompressing data: invalid stored block lengths"), ["damaged compressed data"]),
    (struct.error("unpack requires a buffer of 4 bytes"), ["damaged binary header"]),
    (EOFError("Compressed file ended before the end-of-stream marker was reached"), ["damaged file"]),
    (MemoryError("Unable to allocate 7.28 TiB for an array"), ["needs more memory than this machine has", "7.28 TiB"]),
    (zipfile.BadZipFile("File is not a zip file"), ["File is not a zip file", "BadZipFile"]),
    (ValueError("line one\nline two"), ["line one line two"]),
])
def test_foreseen_failures_are_one_line_naming_the_input(monkeypatch, capsys, labels_tif, tmp_path, exc, words):
    monkeypatch.setattr("napari_mousesegment.jobs.rois.export_rois", _raise(exc))
    assert main(["roi", "export", str(labels_tif), "--out", str(tmp_path / "out.zip")]) == 2
    line = one_error(capsys, *words)
    if not isinstance(exc, OSError):  # a deep check that names no file is led by the command's input
        assert str(labels_tif) in line


def test_an_unexpected_exception_is_one_line_and_its_traceback_is_kept(monkeypatch, capsys, labels_tif, tmp_path,
                                                                        home):
    monkeypatch.setattr("napari_mousesegment.jobs.rois.export_rois", _raise(RuntimeError("a bug somewhere")))
    assert main(["roi", "export", str(labels_tif), "--out", str(tmp_path / "out.zip")]) == 1
    line = one_error(capsys, "RuntimeError", "a bug somewhere")
    log = home / "logs" / "last-error.txt"
    assert str(log) in line
    text = log.read_text()
    assert "Traceback" in text and "RuntimeError: a bug somewhere" in text and "roi export" in text


def test_debug_shows_the_traceback_and_still_ends_with_the_one_line(monkeypatch, capsys, labels_tif, tmp_path):
    monkeypatch.setattr("napari_mousesegment.jobs.rois.export_rois", _raise(RuntimeError("a bug somewhere")))
    assert main(["--debug", "roi", "export", str(labels_tif), "--out", str(tmp_path / "out.zip")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in command" in err.split("Traceback")[1]
    assert err.strip().splitlines()[-1].startswith("mousesegment roi: error: ")
    monkeypatch.undo()  # a foreseen failure: the traceback too, and still exit 2
    assert main(["--debug", "roi", "export", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "o.zip")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "missing.tif" in err.strip().splitlines()[-1]


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys, labels_tif, tmp_path):
    monkeypatch.setattr("napari_mousesegment.jobs.rois.export_rois", _raise(KeyboardInterrupt()))
    assert main(["roi", "export", str(labels_tif), "--out", str(tmp_path / "out.zip")]) == 130
    one_error(capsys, "interrupted")


# --- named pipes never hang a command ----------------------------------------------------------


def test_a_named_pipe_as_roi_export_labels_is_refused_at_once(fifo, capsys, tmp_path):
    with time_limit(10):
        assert main(["roi", "export", str(fifo), "--out", str(tmp_path / "out.zip")]) == 2
    one_error(capsys, str(fifo), "named pipe")


def test_a_named_pipe_as_queue_add_image_is_refused_at_once(fifo, capsys, tmp_path, labels_tif):
    argv = ["queue", "add", "--queue", str(tmp_path / "q"), "--image", str(fifo), "--labels", str(labels_tif),
            "--kind", "ultrasound", "--organ", "heart"]
    with time_limit(10):
        assert main(argv) == 2
    one_error(capsys, str(fifo), "named pipe")


def test_a_named_pipe_as_roi_import_source_or_frames_is_refused_at_once(fifo, capsys, tmp_path, labels_tif):
    with time_limit(10):
        assert main(["roi", "import", str(fifo), "--shape", "3,40,50", "--out", str(tmp_path / "o.tif")]) == 2
    one_error(capsys, str(fifo), "named pipe")
    main(["roi", "export", str(labels_tif), "--out", str(tmp_path / "r.zip")])
    capsys.readouterr()
    with time_limit(10):
        assert main(["roi", "import", str(tmp_path / "r.zip"), "--like", str(fifo), "--out", str(tmp_path / "o.tif")]) == 2
    one_error(capsys, str(fifo), "named pipe")


def test_characters_a_terminal_would_not_print_are_escaped_in_the_one_line(capsys, tmp_path):
    name = tmp_path / "odd\x1ename\x06.tif"  # \x1e splits lines for str.splitlines()
    assert main(["roi", "export", str(name), "--out", str(tmp_path / "r.zip")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "odd\\x1ename\\x06.tif" in err


# --- limits before allocating ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "1e300", "1000", "nan,1,1", "0.0000001", "0"])
def test_absurd_spacings_are_refused_by_the_option(value, capsys, tmp_path, labels_tif):
    with pytest.raises(SystemExit) as exc:
        main(["queue", "add", "--queue", str(tmp_path / "q"), "--image", str(labels_tif), "--labels", str(labels_tif),
              "--kind", "ct", "--condition", "native", "--spacing", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--spacing" in err and "0.001" in err and "Traceback" not in err


def test_roi_import_of_an_absurd_shape_is_refused_before_allocating(capsys, tmp_path, labels_tif):
    main(["roi", "export", str(labels_tif), "--out", str(tmp_path / "r.zip")])
    capsys.readouterr()
    with time_limit(10):
        assert main(["roi", "import", str(tmp_path / "r.zip"), "--shape", "100000,100000,100000",
                     "--out", str(tmp_path / "o.tif")]) == 2
    one_error(capsys, "--shape 100000,100000,100000")
    assert not (tmp_path / "o.tif").exists()


def test_roi_export_of_a_label_id_of_four_billion_round_trips(capsys, tmp_path):
    labels = np.zeros((2, 30, 30), np.uint32)
    labels[0, 3:9, 3:12] = 4_000_000_000
    labels[1, 10:20, 10:25] = 7
    tifffile.imwrite(tmp_path / "big.tif", labels)
    with time_limit(20):
        assert main(["roi", "export", str(tmp_path / "big.tif"), "--out", str(tmp_path / "big.zip")]) == 0
        assert main(["roi", "import", str(tmp_path / "big.zip"), "--like", str(tmp_path / "big.tif"),
                     "--out", str(tmp_path / "back.tif")]) == 0
    back = tifffile.imread(tmp_path / "back.tif")
    assert back.shape == labels.shape and np.array_equal(back > 0, labels > 0)
    assert len(np.unique(back[0][back[0] > 0])) == 1  # the one instance stays one instance


def test_a_model_zip_declaring_a_3_gib_member_is_refused_before_unpacking(capsys, tmp_path):
    archive = tmp_path / "huge.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(BUILTIN / "unet-heart-synthetic" / "config.json", "m/config.json")
        zf.writestr("m/weights.safetensors", b"tiny")
    data = bytearray(archive.read_bytes())
    entry = data.rindex(b"PK\x01\x02")  # the central directory entry of the last member (the weights)
    data[entry + 24:entry + 28] = struct.pack("<I", 3 << 30)  # its declared uncompressed size: 3 GiB
    archive.write_bytes(bytes(data))
    with time_limit(20):
        assert main(["models", "import", str(archive), "--name", "huge"]) == 2
    one_error(capsys, "huge.zip", "weights.safetensors", "declares")


# --- ROI import and export ---------------------------------------------------------------------


def test_roi_import_of_a_zip_without_rois_is_an_error_not_an_empty_stack(capsys, tmp_path):
    zipfile.ZipFile(tmp_path / "empty.zip", "w").close()
    assert main(["roi", "import", str(tmp_path / "empty.zip"), "--shape", "1,10,10", "--out", str(tmp_path / "o.tif")]) == 2
    one_error(capsys, "empty.zip", "no ROIs")
    assert not (tmp_path / "o.tif").exists()


def test_a_composite_roi_with_a_truncated_path_is_one_line(capsys, tmp_path):
    mask = np.zeros((30, 30), bool)
    mask[2:10, 2:10] = mask[15:20, 15:20] = True
    roi = composite_roi(mask_outlines(mask), "broken")
    roi.multi_coordinates = roi.multi_coordinates[:5]  # MOVETO x y, LINETO x: cut inside a step
    roi.shape_roi_size = 5
    (tmp_path / "broken.roi").write_bytes(roi.tobytes())
    assert main(["roi", "import", str(tmp_path / "broken.roi"), "--shape", "1,30,30", "--out", str(tmp_path / "o.tif")]) == 2
    one_error(capsys, "broken.roi", "broken")


def test_roi_export_of_a_truncated_tiff_is_one_line(capsys, tmp_path, labels_tif):
    data = labels_tif.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[:len(data) // 2])
    assert main(["roi", "export", str(tmp_path / "cut.tif"), "--out", str(tmp_path / "o.zip")]) == 2
    one_error(capsys, "cut.tif")


def test_roi_import_like_takes_the_shape_of_a_stack_a_frame_or_a_montage(capsys, tmp_path, labels_tif):
    import imageio.v3 as iio

    from napari_mousesegment.io.composites import montage

    assert main(["roi", "export", str(labels_tif), "--out", str(tmp_path / "r.zip")]) == 0
    assert main(["roi", "import", str(tmp_path / "r.zip"), "--like", str(labels_tif), "--out", str(tmp_path / "a.tif")]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "a.tif") > 0, tifffile.imread(labels_tif) > 0)
    frames = np.random.default_rng(0).integers(0, 200, (35, 40, 50)).astype(np.uint8)
    iio.imwrite(tmp_path / "montage.png", montage(frames))
    assert main(["roi", "import", str(tmp_path / "r.zip"), "--like", str(tmp_path / "montage.png"),
                 "--out", str(tmp_path / "b.tif")]) == 0
    assert tifffile.imread(tmp_path / "b.tif").shape == (35, 40, 50)
    one = np.zeros((40, 50), np.uint16)
    one[5:20, 5:25] = 1
    tifffile.imwrite(tmp_path / "one.tif", one)
    assert main(["roi", "export", str(tmp_path / "one.tif"), "--out", str(tmp_path / "one.zip")]) == 0
    tifffile.imwrite(tmp_path / "frame.tif", np.zeros((40, 50), np.uint8))
    assert main(["roi", "import", str(tmp_path / "one.zip"), "--like", str(tmp_path / "frame.tif"),
                 "--out", str(tmp_path / "c.tif")]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "c.tif"), one)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # exactly one of --shape and --like
        main(["roi", "import", str(tmp_path / "r.zip"), "--like", str(labels_tif), "--shape", "3,40,50",
              "--out", str(tmp_path / "d.tif")])
    with pytest.raises(SystemExit):
        main(["roi", "import", str(tmp_path / "r.zip"), "--out", str(tmp_path / "d.tif")])


# --- model configs -----------------------------------------------------------------------------


def _model_copy(tmp_path, name="unet-heart-synthetic"):
    import shutil

    folder = tmp_path / "models" / name
    shutil.copytree(BUILTIN / name, folder)
    return folder


@pytest.mark.parametrize("change, words", [
    (lambda meta: [meta], ["holds a list"]),
    (lambda meta: meta | {"width": 100000}, ["'width'", "512"]),
    (lambda meta: meta | {"threshold": math.nan}, ["'threshold'", "finite"]),
    (lambda meta: meta | {"threshold": 1.5}, ["'threshold'", "from 0 to 1"]),
    (lambda meta: meta | {"organ": ""}, ["'organ'", "non-empty"]),
    (lambda meta: {k: v for k, v in meta.items() if k != "organ"}, ["needs 'organ'"]),
    (lambda meta: {k: v for k, v in meta.items() if k != "width"} | {"widht": 8}, ["unknown key 'widht'", "'width'"]),
    (lambda meta: meta | {"kind": "resnet"}, ["unknown kind 'resnet'"]),
])
def test_model_configs_that_break_the_schema_are_one_line_naming_the_file(capsys, tmp_path, change, words):
    folder = _model_copy(tmp_path)
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(change(meta)))
    assert main(["models", "export", str(folder), str(tmp_path / "out")]) == 2
    one_error(capsys, "config.json", *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, words", [
    ({"conditions": []}, ["'conditions'", "non-empty"]),
    ({"thresholds": {"heart": math.nan}}, ["'thresholds'", "heart"]),
    ({"depth": 40}, ["'depth'"]),
    ({"organs": ["heart", ""]}, ["'organs'"]),
])
def test_mosnet_configs_are_checked_too(capsys, tmp_path, change, words):
    folder = _model_copy(tmp_path, "mosnet-synthetic")
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(meta | change))
    assert main(["models", "export", str(folder), str(tmp_path / "out")]) == 2
    one_error(capsys, "config.json", *words)


def test_a_registry_that_is_a_list_is_one_warning_and_the_other_models_are_listed(capsys, home):
    (home / "models").mkdir(parents=True)
    (home / "models" / "registry.json").write_text("[1, 2]")
    assert main(["models", "list"]) == 0
    out, err = capsys.readouterr()
    assert "mosnet-synthetic" in out and "unet-heart-synthetic" in out
    warnings = [line for line in err.splitlines() if line.strip()]
    assert len(warnings) == 1 and "registry.json" in warnings[0] and "list" in warnings[0]
    assert main(["models", "export", "not-installed", str(home / "out")]) == 2
    one_error(capsys, "registry.json")
