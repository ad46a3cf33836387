"""The active-learning loop end to end on synthetic data, and the worker's crash safety."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_mousesegment.active.queue import Queue, QueueError
from napari_mousesegment.active.worker import pixel_dice, run_rounds, worker_lock
from napari_mousesegment.cli import main
from napari_mousesegment.data.phantom_us import ultrasound_series
from napari_mousesegment.inference.ultrasound import segment_frames
from napari_mousesegment.store.load import load_unet
from napari_mousesegment.training.finetune import FineTuneSettings

BASE = "unet-heart-synthetic"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "models"


def _new_scanner(frames: np.ndarray) -> np.ndarray:
    """The lab's new scanner: lower gain and a raised floor, where the shipped model is weak."""
    return (np.clip(frames.astype(float) * 0.5 + 70, 0, 255).astype(np.uint8) * (frames > 0)).astype(np.uint8)


def _queue_corrections(root, seed=270, n_frames=8):
    series = ultrasound_series(seed=seed)
    frames, truth = _new_scanner(series.frames), series.labels["heart"]
    model, _, _ = load_unet(BASE)
    _, pred = segment_frames(model, frames)
    with_hearts = [k for k in range(len(truth)) if truth[k].any()]
    corrected = pred.copy()
    corrected[with_hearts[:n_frames]] = truth[with_hearts[:n_frames]]  # the user fixes a handful of frames
    queue = Queue(root)
    queue.add(frames, corrected, "ultrasound", organ="heart", model=BASE, prediction=pred)
    rest = [k for k in range(len(truth)) if k not in with_hearts[:n_frames]]
    return queue, model, frames[rest], truth[rest]


def test_corrections_make_the_model_better_and_the_new_version_is_promoted(home, tmp_path):
    queue, weak, other_frames, other_truth = _queue_corrections(tmp_path / "q")
    t0 = time.monotonic()
    [result] = run_rounds(queue.root, settings=FineTuneSettings(epochs=15), log=lambda m: None)
    seconds = time.monotonic() - t0
    assert seconds < 180
    assert result.model == f"{BASE}-lab" and result.promoted
    assert result.dice_after > result.dice_before + 0.2  # on the held-out corrected frames
    better, _config, meta = load_unet(f"{BASE}-lab")  # the promoted version is what the name loads
    assert meta["version"] == result.version == "1" and meta["parent_version"] == "0"
    assert pixel_dice(better, other_frames, other_truth) > pixel_dice(weak, other_frames, other_truth) + 0.2
    assert [i.state for i in queue.items()] == ["used"] and queue.items()[0].used_in == [f"{BASE}-lab:v1"]
    assert queue.status()["last_round"]["state"] == "done"
    assert run_rounds(queue.root, log=lambda m: None) == []  # nothing pending: no round runs twice


def test_versions_promote_and_rollback_from_the_cli(home, tmp_path, capsys):
    queue, *_ = _queue_corrections(tmp_path / "q")
    assert main(["worker", "--queue", str(queue.root), "--once", "--epochs", "5"]) == 0
    name = f"{BASE}-lab"
    capsys.readouterr()
    assert main(["models", "versions", name, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in rows] == ["0", "1"] and rows[0]["parent"] is None and rows[1]["parent"] == "0"
    assert rows[1]["items"] == [1] and "dice_after" in rows[1]["metrics"]
    if rows[1]["current"]:  # promoted: roll back to the shipped weights, then forward again
        assert main(["models", "rollback", name]) == 0
        assert load_unet(name)[2]["version"] == "0"
    assert main(["models", "promote", name, "1"]) == 0 and load_unet(name)[2]["version"] == "1"
    assert main(["models", "promote", name, "9"]) == 2


def test_a_second_worker_on_the_same_queue_refuses(home, tmp_path):
    queue = Queue(tmp_path / "q")
    with worker_lock(queue.root), pytest.raises(QueueError, match="another worker"):
        run_rounds(queue.root, log=lambda m: None)


def test_kill_9_mid_round_keeps_the_queue_and_the_last_good_version(home, tmp_path):
    queue, *_ = _queue_corrections(tmp_path / "q")
    env = {**os.environ, "MOUSESEGMENT_HOME": str(home.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "napari_mousesegment.cli", "worker", "--queue", str(queue.root),
                             "--once", "--epochs", "400"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        last = queue.status()["last_round"]
        if last and (last["epoch"] or 0) >= 2:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [i.state for i in queue.items()] == ["pending"]  # nothing lost, nothing marked used
    served = load_unet(f"{BASE}-lab")[2]
    assert served["version"] == "0"  # the last good version still loads, hash verified
    [result] = run_rounds(queue.root, settings=FineTuneSettings(epochs=5), log=lambda m: None)  # lock was released
    assert result.version == "1" and [i.state for i in queue.items()] == ["used"]
    assert [r.state.value for r in queue.rounds()] == ["interrupted", "done"]


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA GPU on this machine")
def test_a_round_runs_on_the_gpu_when_there_is_one(home, tmp_path):
    queue, *_ = _queue_corrections(tmp_path / "q")
    logs = []
    [result] = run_rounds(queue.root, device="cuda", settings=FineTuneSettings(epochs=5), log=logs.append)
    assert "device cuda" in logs[0] and result.version == "1"


def _ct_corrections(root, n_slices=12):
    """mosnet-synthetic on another scanner's calibration (HU x 0.8 - 150), corrected on a few slices."""
    from napari_mousesegment.data.phantom_ct import ct_phantom
    from napari_mousesegment.inference.ct import predict_volume
    from napari_mousesegment.store.load import load_mosnet

    scan = ct_phantom(seed=250, condition="native")
    image = scan.image.astype(np.float32) * 0.8 - 150
    model, _, _ = load_mosnet("mosnet-synthetic")
    pred = predict_volume(model, image, scan.spacing, "native")
    truth = np.zeros_like(pred.labels)  # the truth numbered as the model's organs
    for organ, value in pred.organs.items():
        if organ in scan.organs:
            truth[scan.labels == scan.organs[organ]] = value
    body = np.nonzero(truth.reshape(len(truth), -1).any(1))[0]
    touched = body[np.linspace(0, len(body) - 1, n_slices).astype(int)]
    corrected = pred.labels.copy()
    corrected[touched] = truth[touched]
    queue = Queue(root)
    queue.add(image, corrected, "ct", condition="native", model="mosnet-synthetic", prediction=pred.labels,
              spacing=scan.spacing)
    return queue


def test_micro_ct_corrections_improve_mosnet_on_held_out_slices(home, tmp_path):
    queue = _ct_corrections(tmp_path / "q")
    [result] = run_rounds(queue.root, settings=FineTuneSettings(epochs=15, lr=1e-4), log=lambda m: None)
    assert result.model == "mosnet-synthetic-lab" and result.held_out == 3 and result.promoted
    assert result.dice_after > result.dice_before + 0.1  # measured +0.15 (0.183 -> 0.333)
    from napari_mousesegment.store.load import load_mosnet

    assert load_mosnet("mosnet-synthetic-lab")[2]["version"] == "1"


def test_export_writes_both_dataset_contracts(home, tmp_path):
    from napari_mousesegment.active.export import export_dataset
    from napari_mousesegment.data.ct_dataset import load_case, read_ct_dataset

    queue = _ct_corrections(tmp_path / "q", n_slices=4)
    series = ultrasound_series(seed=3)
    for organ in ("heart", "placenta"):
        queue.add(series.frames, series.labels[organ], "ultrasound", organ=organ)
    out = export_dataset(queue, tmp_path / "ds")
    ct = read_ct_dataset(out / "ct_native")
    assert ct.condition == "native" and ct.organs["heart"] == 1 and len(ct.cases) == 4
    image, _labels, spacing = load_case(ct, ct.cases[0])
    assert image.shape[0] == 1 and spacing == pytest.approx((0.28,) * 3)
    meta = json.loads((out / "ultrasound" / "dataset.json").read_text())
    assert set(meta["organs"]) == {"heart", "placenta"} and len(meta["series"]) == 2


def test_micro_ct_round_replays_the_original_dataset_when_given(home, tmp_path):
    from napari_mousesegment.data.ct_dataset import write_ct_case
    from napari_mousesegment.data.phantom_ct import ct_phantom

    write_ct_case(tmp_path / "native", "phantom_0001", ct_phantom(seed=1, condition="native"))
    queue = _ct_corrections(tmp_path / "q", n_slices=8)
    logs = []
    [result] = run_rounds(queue.root, replay=str(tmp_path / "native"), settings=FineTuneSettings(epochs=2),
                          log=logs.append)
    assert any(line.startswith("replaying 6 slices") for line in logs) and result.version == "1"


@pytest.mark.parametrize(("dz", "plane", "context"), [(0.2802, "axial", 0), (0.1, "axial", 0), (0.5, "axial", 0),
                                                      (0.2802, "axial+coronal+sagittal", 0),
                                                      (0.2802, "axial+coronal", 1)])
def test_corrected_slices_map_to_the_model_slices_made_from_them(dz, plane, context):
    import torch

    from napari_mousesegment.models.mosnet import MOSnetConfig
    from napari_mousesegment.training.slices import corrected_slices as ct_slices

    config = MOSnetConfig(organs=[f"o{k}" for k in range(1, 61)], width=4, depth=2, image_size=16, plane=plane,
                          context=context)
    n = 60
    image = np.zeros((n, 8, 8), np.float32)
    labels = np.broadcast_to(np.arange(1, n + 1, dtype=np.uint8)[:, None, None], (n, 8, 8)).copy()
    touched = [5, 31, 47]
    images, masks = ct_slices(image, labels, (dz, 0.28, 0.28), touched, config)
    found = {int(torch.nonzero(m.flatten(1).any(1))[0]) for m in masks}  # organ k+1 = source slice k
    assert found == set(touched)
    # a multi-planar model's corrections are its axial slices alone, each with its 2.5D neighbours
    assert len(images) == len(masks) == len(touched) and images.shape[1] == 1 + 2 * context


def test_a_failing_group_does_not_stall_the_others(home, tmp_path):
    queue, *_ = _queue_corrections(tmp_path / "q")
    image, labels = np.zeros((2, 20, 20), np.int16), np.ones((2, 20, 20), np.uint8)
    queue.add(image, labels, "ct", condition="mri", model="mosnet-synthetic", spacing=(0.28, 0.28, 0.28))
    queue.add(image, labels, "ct", condition="native", model="not-installed", spacing=(0.28, 0.28, 0.28))
    logs = []
    results = run_rounds(queue.root, settings=FineTuneSettings(epochs=2), log=logs.append)
    assert [r.version for r in results] == ["1", None] and results[1].failed  # the mri group: nothing to run
    assert [i.state for i in queue.items()] == ["used", "failed", "pending"]
    assert "condition 'mri' is not one the model knows" in queue.get(2).reason  # set aside: never trainable
    assert "not-installed" in results[1].error  # a missing model may be installed later: stays pending
    assert [r.state.value for r in queue.rounds()] == ["done", "failed"]


def test_a_micro_ct_round_on_a_model_that_never_sees_axial_slices_is_refused_and_keeps_its_items(home, tmp_path):
    from napari_mousesegment.models.folder import save_model
    from napari_mousesegment.models.mosnet import MOSnet, MOSnetConfig
    from napari_mousesegment.organs import CT_ORGANS

    config = MOSnetConfig(organs=list(CT_ORGANS), width=4, depth=2, image_size=32, plane="coronal+sagittal")
    folder = save_model(tmp_path / "mp", MOSnet(config), config)
    queue = Queue(tmp_path / "q")
    image, labels = np.zeros((4, 20, 20), np.int16), np.zeros((4, 20, 20), np.uint8)
    labels[1:3, 5:15, 5:15] = 1
    queue.add(image, labels, "ct", condition="native", model=str(folder), spacing=(0.28, 0.28, 0.28))
    results = run_rounds(queue.root, settings=FineTuneSettings(epochs=1), log=lambda _: None)
    assert results[0].failed and "axial plane" in results[0].error
    assert [i.state for i in queue.items()] == ["pending"]  # the item waits for an axial model


def test_a_multi_planar_mosnet_learns_corrected_axial_slices_and_is_judged_by_its_fused_labels(home, tmp_path):
    """A model fused over axial, coronal and sagittal slices (here the shipped weights read on all
    three planes) takes a round on its axial plane: its axial reading learns the corrections, the
    published version keeps its planes, and the round judges it by the labels ``predict ct`` gives
    (all planes fused) at the held-out slices."""
    from dataclasses import replace

    from napari_mousesegment.active.worker import ct_held_out, fused_held_out
    from napari_mousesegment.data.phantom_ct import ct_phantom
    from napari_mousesegment.inference.ct import predict_volume
    from napari_mousesegment.models.folder import save_model
    from napari_mousesegment.models.mosnet import MOSnet
    from napari_mousesegment.store.load import load_mosnet
    from napari_mousesegment.training.slices import corrected_slices

    shipped, shipped_config, meta = load_mosnet("mosnet-synthetic")
    config = replace(shipped_config, plane="axial+coronal+sagittal")
    model = MOSnet(config)
    model.load_state_dict(shipped.state_dict())
    folder = save_model(tmp_path / "mp", model, config, {"training": meta["training"]})
    scan = ct_phantom(seed=250, condition="native")
    image, labels = scan.image[40:110].astype(np.float32) * 0.8 - 150, scan.labels[40:110]  # chest and belly
    prediction = predict_volume(model.eval(), image, scan.spacing, "native").labels
    truth = np.zeros_like(prediction)  # the truth numbered as the model's organs
    for k, organ in enumerate(config.organs):
        truth[labels == scan.organs[organ]] = k + 1
    touched = np.linspace(0, len(truth) - 1, 16).astype(int)
    corrected = prediction.copy()
    corrected[touched] = truth[touched]
    queue = Queue(tmp_path / "q")
    queue.add(image, corrected, "ct", condition="native", model=str(folder), prediction=prediction,
              spacing=scan.spacing)
    [result] = run_rounds(queue.root, settings=FineTuneSettings(epochs=30, lr=1e-4), log=lambda _: None)
    assert not result.failed and result.held_out == 4 and result.version == "1" and result.promoted
    tuned, tuned_config, _ = load_mosnet("mp-lab")
    assert tuned_config.planes == ["axial", "coronal", "sagittal"]
    hold = [int(k) for k in touched[3::4]]
    images, masks = corrected_slices(image, corrected, scan.spacing, hold, tuned_config)
    axial_before, axial_after = (ct_held_out(m, images, masks, 0).dice for m in (model, tuned))
    assert axial_after > axial_before + 0.1  # the axial reading learned them (measured 0.09 -> 0.24)
    fused = fused_held_out(tuned, [(image, corrected, scan.spacing, hold)], "native")
    assert result.dice_after == pytest.approx(fused.dice) and fused.dice != pytest.approx(axial_after)
    # and the fused labels gained: measured 0.077 -> 0.148 with mosnet-synthetic version 3
    # (0.02 -> 0.17 with version 2)
    assert result.dice_after > result.dice_before + 0.05
