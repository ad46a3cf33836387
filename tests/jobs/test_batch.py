"""Batch prediction on Dask: same labels as serial, failures reported, reruns skip, dead workers lose nothing."""

import os
import signal
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from skimage import io as skio

from napari_mousesegment.cli import main
from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.data.phantom_us import ultrasound_series
from napari_mousesegment.io.composites import montage
from napari_mousesegment.io.tiff import read_tiff, write_tiff
from napari_mousesegment.jobs.batch import run_batch
from napari_mousesegment.jobs.ct import (
    ct_fingerprint,
    ct_output_complete,
    predict_ct,
    predict_ct_batch,
    predict_ct_task,
)
from napari_mousesegment.jobs.outputs import (
    MANIFEST,
    is_complete,
    mark_complete,
    read_manifest,
    staged,
)
from napari_mousesegment.jobs.ultrasound import predict_ultrasound, predict_ultrasound_batch
from napari_mousesegment.models.folder import read_config
from napari_mousesegment.models.mosnet import MOSnetConfig
from napari_mousesegment.store.registry import resolve

pytestmark = pytest.mark.slow
MODEL = "mosnet-synthetic"


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    paths = []
    for seed in range(4):
        scan = ct_phantom(300 + seed, "native", shape=(40, 48, 56))
        paths.append(write_tiff(root / f"scan{seed}.tif", scan.image, scan.spacing))
    return paths


@pytest.fixture(scope="module")
def serial(scans, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    predict_ct(scans, MODEL, "native", out, log=lambda _: None)
    return out


def _complete(out: Path, scan: Path, condition: str = "native") -> bool:
    meta = read_config(resolve(MODEL))
    return ct_output_complete(scan, out, ct_fingerprint(meta["sha256"], condition, False, None,
                                                        MOSnetConfig.from_dict(meta)))


def _labels(out: Path, scan: Path) -> np.ndarray:
    return read_tiff(out / scan.stem / "labels.tif")[0]


def test_local_cluster_gives_the_serial_labels_and_reports_a_bad_scan(scans, serial, tmp_path, capsys):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 truncated")
    out = tmp_path / "dask"
    code = main(["predict", "ct", *map(str, scans), str(broken), "--model", MODEL, "--condition", "native",
                 "--out", str(out), "--workers", "2"])
    assert code == 1  # one input failed; the others were done
    printed = capsys.readouterr()
    assert "4 done, 0 skipped, 1 failed" in printed.out and f"FAILED {broken}" in printed.out
    for scan in scans:
        assert np.array_equal(_labels(out, scan), _labels(serial, scan))
        assert _complete(out, scan)
    assert not (out / "broken").exists() and not list(out.glob(".*partial*"))


def test_rerun_skips_complete_outputs_and_redoes_the_rest(scans, serial, tmp_path):
    out = tmp_path / "dask"
    first = predict_ct_batch(scans, MODEL, "native", out, workers=2, log=lambda _: None)
    assert [o.status for o in first] == ["done"] * 4
    (out / scans[1].stem / MANIFEST).unlink()  # as if a crash had cut this scan short
    kept = (out / scans[0].stem / "labels.tif").stat().st_mtime_ns
    again = predict_ct_batch(scans, MODEL, "native", out, workers=1, log=lambda _: None)
    assert [o.status for o in again] == ["skipped", "done", "skipped", "skipped"]
    assert (out / scans[0].stem / "labels.tif").stat().st_mtime_ns == kept
    assert np.array_equal(_labels(out, scans[1]), _labels(serial, scans[1]))
    other = predict_ct_batch(scans[:2], MODEL, "contrast", out, workers=1, log=lambda _: None)
    assert [o.status for o in other] == ["done", "done"]  # made with other settings: not complete, redone
    assert _complete(out, scans[0], "contrast") and not _complete(out, scans[0], "native")


def test_scans_that_would_share_an_output_folder_are_refused(scans, tmp_path):
    twin = tmp_path / "other" / scans[0].name
    twin.parent.mkdir()
    twin.write_bytes(scans[0].read_bytes())
    for run in (predict_ct_batch, predict_ct):
        with pytest.raises(ValueError, match="overwrite each other"):
            run([scans[0], twin], MODEL, "native", tmp_path / "out", **({"workers": 1} if run is predict_ct_batch else {}))


def test_two_runs_on_one_scheduler_keep_their_own_tasks(scans, tmp_path):
    """Two users' commands on one cluster at once (the same scans into two output folders)."""
    import subprocess
    import sys

    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        runs = [subprocess.Popen([sys.executable, "-m", "napari_mousesegment.cli", "predict", "ct", *map(str, scans[:2]),
                                  "--model", MODEL, "--condition", "native", "--out", str(tmp_path / name),
                                  "--scheduler", cluster.scheduler_address],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in ("a", "b")]
        logs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs
    assert all("2 done, 0 skipped, 0 failed" in log for log in logs)
    for name in ("a", "b"):
        assert all(_complete(tmp_path / name, scan) for scan in scans[:2])


def dying_task(source: str, *, marker: str, inner):
    """Kill this worker process the first time it is given the marked input."""
    if source.endswith("scan2.tif") and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return inner(source)


def test_a_killed_worker_loses_no_finished_output(scans, serial, tmp_path):
    out = tmp_path / "dask"
    weights = read_config(resolve(MODEL))["sha256"]
    inner = partial(predict_ct_task, model=MODEL, weights=weights, condition="native", out=str(out), device="cpu",
                    threads=1)
    task = partial(dying_task, marker=str(tmp_path / "died"), inner=inner)
    fingerprint = ct_fingerprint(weights, "native", False, None, MOSnetConfig.from_dict(read_config(resolve(MODEL))))
    outcomes = run_batch([str(s) for s in scans], task, partial(ct_output_complete, out=out, fingerprint=fingerprint),
                         workers=2, log=lambda _: None)
    assert (tmp_path / "died").exists()  # a worker really died mid-batch
    assert [o.status for o in outcomes] == ["done"] * 4  # its scan was retried on a live worker
    for scan in scans:
        assert _complete(out, scan) and np.array_equal(_labels(out, scan), _labels(serial, scan))


def test_an_unreachable_scheduler_is_a_quick_clear_error(scans, tmp_path, capsys):
    start = time.monotonic()
    code = main(["predict", "ct", str(scans[0]), "--model", MODEL, "--condition", "native", "--out",
                 str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "2"])
    assert code == 2 and time.monotonic() - start < 30
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err


def test_ultrasound_batch_matches_serial(tmp_path):
    sources = []
    for seed in (290, 291):
        series = ultrasound_series(seed=seed, n_frames=35, frame_shape=(120, 160))
        sources.append(tmp_path / f"series{seed}.png")
        skio.imsave(sources[-1], montage(series.frames), check_contrast=False)
    organs = ["heart", "placenta"]
    models = {o: f"unet-{o}-synthetic" for o in organs}
    predict_ultrasound(sources, organs, models, tmp_path / "serial", log=lambda _: None)
    outcomes = predict_ultrasound_batch(sources, organs, models, tmp_path / "dask", workers=2, log=lambda _: None)
    assert [o.status for o in outcomes] == ["done", "done"]
    for source in sources:
        for organ in organs:
            name = f"{organ}_labels.tif"
            assert np.array_equal(read_tiff(tmp_path / "dask" / source.stem / name)[0],
                                  read_tiff(tmp_path / "serial" / source.stem / name)[0])
        weights = {o: read_config(resolve(models[o]))["sha256"] for o in organs}
        assert is_complete(tmp_path / "dask" / source.stem, weights)
        assert set(read_manifest(tmp_path / "dask" / source.stem)["parts"]) == set(organs)
        assert not is_complete(tmp_path / "dask" / source.stem, {**weights, "liver": "any"})  # more is not complete


def test_staged_outputs_are_all_or_nothing(tmp_path):
    target = tmp_path / "case"
    with staged(target) as tmp:
        (tmp / "a.txt").write_text("first")
    mark_complete(target, ["a.txt"], {"a": "model-1"})
    assert is_complete(target, {"a": "model-1"}) and not is_complete(target, {"a": "model-2"})
    with pytest.raises(RuntimeError), staged(target) as tmp:  # a crash while writing the second version
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("disk full")
    assert not is_complete(target, {"a": "model-1"}) and (target / "a.txt").read_text() == "first"
    assert not list(tmp_path.glob(".case.partial-*"))


def test_a_worker_loads_each_model_once_and_refuses_other_weights():
    from napari_mousesegment.jobs.batch import cached_model

    weights = read_config(resolve(MODEL))["sha256"]
    first = cached_model("mosnet", MODEL, "cpu", None, weights)
    assert cached_model("mosnet", MODEL, "cpu", None, weights) is first  # loaded once, kept
    with pytest.raises(ValueError, match="not the"):
        cached_model("mosnet", MODEL, "cpu", None, "0" * 64)  # the client started the run with other weights
