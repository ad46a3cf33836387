"""The command line on mutated files and generated option values, in-process.

Every run must end in one of three ways: exit 0 with a valid output; exit 2 from ``main`` with one
stderr line that names the file or the option; or argparse's own usage error (SystemExit 2).
Anything else (an uncaught exception, another exit, a many-line error, a hang) fails the test.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given
from hypothesis import strategies as st

from napari_mousesegment.io.roi import read_rois

from ..conftest import shared_file
from .commands import judge
from .harness import FuzzFailure, keep, mutations

#: Option values that are wrong but look like numbers, or are numbers at the edges.
BAD_NUMBERS = ("nan", "inf", "-inf", "0", "-1", "1e300", "1e-300", "1,2", "a,b,c", "", ",", "1,,2", "0x10",
               "1_000", " 1", "1,2,3,4", "1e400", "9" * 5000, "-0", "0.0,0.0,0.0", "1,nan,1")
#: Shapes with absurd sizes: refused before anything is allocated.
BAD_SHAPES = (*BAD_NUMBERS, "100000,100000,100000", "1,99999999,99999999", "2147483648,1,1",
              "35,240", "1,1,1", "1,1")


def run_cli(argv: list[str], capsys, what: str, names: tuple[str, ...]) -> str:
    """Run ``mousesegment ARGV`` and judge it with the command suite's rules (:func:`.commands.judge`):
    "ok" (exit 0), "error" (one clean line naming one of ``names``) or "usage" (argparse); anything
    else raises :class:`FuzzFailure`."""
    return judge(argv, capsys, what, names)


def _keep_on_failure(path: Path, what: str, run) -> None:
    try:
        run()
    except FuzzFailure as exc:
        raise FuzzFailure(f"{exc}\n(input kept as {keep(path, what)})") from exc


@pytest.mark.parametrize("name, shape", [("polygon_circle.roi", "1,48,64"), ("RoiSet_35frames.zip", "35,240,320")])
def test_roi_import_of_damaged_files(name, shape, capsys, work):
    seed = shared_file("imagej_rois", name).read_bytes()
    source, out = work / f"cli-{name}", work / "cli-import.tif"

    @given(mutations(seed, focus=(0, 64)))
    def run(data):
        source.write_bytes(data)
        out.unlink(missing_ok=True)
        if run_cli(["roi", "import", str(source), "--shape", shape, "--out", str(out)], capsys,
                   "cli roi import", (source.name,)) == "ok":
            labels = tifffile.imread(out)
            assert labels.dtype == np.uint16 and labels.shape[-2:] == tuple(map(int, shape.split(",")))[1:]

    _keep_on_failure(source, "cli roi import", run)


@given(st.one_of(st.sampled_from(BAD_SHAPES), st.text(max_size=30)))
def test_roi_import_shape_values(capsys, tmp_path_factory, text):
    source = shared_file("imagej_rois", "polygon_circle.roi")
    out = tmp_path_factory.getbasetemp() / "cli-shape.tif"
    if run_cli(["roi", "import", str(source), "--shape", text, "--out", str(out)], capsys, "cli --shape",
               ("--shape", "shape", source.name)) == "ok":
        assert tifffile.imread(out).ndim in (2, 3)


def test_roi_export_of_damaged_labels(capsys, seeds, work):
    seed = (seeds / "labels.tif").read_bytes()
    source, out = work / "cli-labels.tif", work / "cli-export.zip"

    @given(mutations(seed), st.one_of(st.just("heart"), st.text(min_size=1, max_size=20)))
    def run(data, organ):
        source.write_bytes(data)
        out.unlink(missing_ok=True)
        if "\x00" in organ:  # a command line cannot hold NUL
            return
        if run_cli(["roi", "export", str(source), "--out", str(out), "--organ", organ], capsys,
                   "cli roi export", (source.name, out.name)) == "ok":
            assert zipfile.is_zipfile(out)
            # a RoiSet that reads back, with ROIs exactly when the labels had something to outline
            assert (len(read_rois(out)) > 0) == bool(np.any(tifffile.imread(source)))

    _keep_on_failure(source, "cli roi export", run)


@pytest.mark.parametrize("damaged", ["image", "labels"])
def test_queue_add_of_damaged_files(damaged, capsys, seeds, work, tmp_path_factory):
    queue = tmp_path_factory.mktemp("cli-queue")
    files = {"image": work / "cli-image.tif", "labels": work / "cli-labels-q.tif"}
    seed = (seeds / f"{damaged}.tif").read_bytes()
    other = "labels" if damaged == "image" else "image"
    files[other].write_bytes((seeds / f"{other}.tif").read_bytes())

    @given(mutations(seed))
    def run(data):
        files[damaged].write_bytes(data)
        argv = ["queue", "add", "--queue", str(queue), "--image", str(files["image"]), "--labels",
                str(files["labels"]), "--kind", "ultrasound", "--organ", "heart"]
        if run_cli(argv, capsys, "cli queue add", (files[damaged].name,)) == "ok":
            from napari_mousesegment.active.queue import Queue

            item = Queue(queue).items()[-1]  # what was queued reads back whole, image and labels alike
            assert item.image().shape == item.labels().shape

    _keep_on_failure(files[damaged], "cli queue add", run)


@given(st.one_of(st.sampled_from(BAD_NUMBERS), st.text(max_size=20)))
def test_queue_add_spacing_values(capsys, seeds, tmp_path_factory, text):
    """A micro-CT item needs a voxel size: whatever --spacing says, it is refused or sound."""
    from napari_mousesegment.active.queue import Queue

    queue = tmp_path_factory.getbasetemp() / "cli-queue-spacing"
    argv = ["queue", "add", "--queue", str(queue), "--image", str(seeds / "image.tif"), "--labels",
            str(seeds / "labels.tif"), "--kind", "ct", "--condition", "native", f"--spacing={text}"]
    if run_cli(argv, capsys, "cli --spacing", ("--spacing", "spacing", "voxel size", "image.tif")) == "ok":
        spacing = Queue(queue).items()[-1].spacing
        assert all(np.isfinite(s) and s > 0 for s in spacing), spacing


@given(st.one_of(st.sampled_from(("", "x", "0x0", "1x0", "-1x2", "2x3x4", "1.5x2", "999999x1", "2X3", " 2 x 3 ",
                                  "2x3", "3x2", "1x1", "6x1")), st.text(max_size=12)))
def test_split_grid_values(capsys, seeds, tmp_path_factory, text):
    out = tmp_path_factory.getbasetemp() / "cli-split"
    argv = ["split", str(seeds / "montage.png"), "--out", str(out), f"--grid={text}"]
    if run_cli(argv, capsys, "cli --grid", ("--grid", "grid", "montage.png")) == "ok":
        frames = tifffile.imread(out / "frames.tif")
        assert frames.ndim in (2, 3) and frames.size > 0
