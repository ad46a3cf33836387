"""Faults of the retraining worker: kill -9 at each stage of a round, a full disk while publishing,
damaged or unfit items, a broken versions index, errors in the polling loop.

After each: no item is lost, the last good version serves, nothing half-copied stays behind, no
round stays "running", and the items are trained on once.
"""

import errno
import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from napari_mousesegment.active.queue import Queue
from napari_mousesegment.active.rounds import RoundState
from napari_mousesegment.active.worker import (
    ERROR_LOG,
    Backoff,
    WorkerBusy,
    poll,
    run_rounds,
    worker_lock,
)
from napari_mousesegment.cli import main
from napari_mousesegment.data.phantom_us import ultrasound_series
from napari_mousesegment.models.folder import ModelError
from napari_mousesegment.store import versions
from napari_mousesegment.store.load import load_unet
from napari_mousesegment.training.finetune import FineTuneSettings

BASE = "unet-heart-synthetic"
NAME = f"{BASE}-lab"
ONE_EPOCH = FineTuneSettings(epochs=1)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "home"))
    yield tmp_path / "home" / "models"
    assert os.environ["MOUSESEGMENT_HOME"] == str(tmp_path / "home")  # no test wrote outside it


def _corrections(root, n_items=3, frames=3) -> Queue:
    """A few tiny heart corrections of the built-in U-Net: ``frames`` labelled frames per item."""
    queue = Queue(root)
    for seed in range(n_items):
        series = ultrasound_series(seed=300 + seed)
        heart = series.labels["heart"]
        picked = [k for k in range(len(heart)) if heart[k].any()][:frames]
        queue.add(series.frames[picked], heart[picked], "ultrasound", organ="heart", model=BASE)
    return queue


def _kill_worker_at(queue: Queue, home, stage: str) -> subprocess.CompletedProcess:
    """``mousesegment worker --once`` in a child process, killed (SIGKILL) at ``stage`` of its round."""
    env = {**os.environ, "MOUSESEGMENT_HOME": str(home.parent), versions.FAULT_ENV: stage}
    return subprocess.run([sys.executable, "-m", "napari_mousesegment.cli", "worker", "--queue", str(queue.root),
                           "--once", "--epochs", "1", "--guard", "1", "--device", "cpu"],
                          check=False, env=env, capture_output=True, text=True, timeout=300)


def _leftovers(home) -> list[str]:
    """Half-copied model folders, and version folders the index does not know."""
    known = {v["version"] for v in versions.versions(NAME)}
    beside = [p.name for p in home.iterdir() if p.name.startswith(f".{NAME}-")]
    unrecorded = [p.name for p in (home / ".versions" / NAME).iterdir() if p.is_dir() and p.name not in known]
    return beside + unrecorded


def _assert_nothing_lost(queue: Queue, ids: list[int], state: str) -> None:
    items = queue.items()
    assert [i.id for i in items] == ids and {i.state for i in items} == {state}
    for item_id in ids:
        folder = queue.root / "items" / str(item_id)
        assert all((folder / f).is_file() for f in ("image.tif", "labels.tif", "item.json"))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["training", "publish", "published", "promote"])
def test_kill_9_at_each_stage_of_a_round_then_a_restart(home, tmp_path, stage):
    queue = _corrections(tmp_path / "q")
    ids = [i.id for i in queue.items()]
    versions.ensure_base(NAME, BASE)  # the last good version: 0

    killed = _kill_worker_at(queue, home, stage)
    assert killed.returncode == -9, killed.stderr
    _assert_nothing_lost(queue, ids, "pending")
    assert load_unet(NAME)[2]["version"] == "0"  # the last good version still serves, hash checked
    if stage == "promote":  # killed half-way through copying version 1 into place
        assert any(p.name.startswith(f".{NAME}-") for p in home.iterdir())
        # what a lab server's supervisor (or `queue status`) does when it sees the worker gone
        for r in queue.rounds():
            if r.state is RoundState.RUNNING:
                queue.update_round(r.id, state=RoundState.INTERRUPTED, message="its worker died")
    published = stage in ("published", "promote")
    assert [v["version"] for v in versions.versions(NAME)] == (["0", "1"] if published else ["0"])

    logs: list[str] = []
    results = run_rounds(queue.root, settings=ONE_EPOCH, guard=1.0, log=logs.append)  # the restart

    assert _leftovers(home) == []
    assert not any(r.state is RoundState.RUNNING for r in queue.rounds())
    _assert_nothing_lost(queue, ids, "used")
    assert all(i.used_in == [f"{NAME}:v1"] for i in queue.items())  # trained on once
    assert [v["version"] for v in versions.versions(NAME)] == ["0", "1"] and versions.current(NAME) == "1"
    assert load_unet(NAME)[2]["version"] == "1"
    if published:  # finished from the decision recorded with the version: not trained again
        assert results == [] and [r.state for r in queue.rounds()] == [RoundState.DONE]
        assert "finished after its worker stopped" in queue.rounds()[-1].message
    else:  # trained again from the start
        assert [r.version for r in results] == ["1"]
        assert [r.state for r in queue.rounds()] == [RoundState.INTERRUPTED, RoundState.DONE]


def test_a_full_disk_while_publishing_fails_the_round_and_keeps_everything(home, tmp_path, monkeypatch):
    import safetensors.torch

    queue = _corrections(tmp_path / "q", n_items=2, frames=2)
    versions.ensure_base(NAME, BASE)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    logs: list[str] = []
    with monkeypatch.context() as patch:  # (monkeypatch.undo would also undo the home fixture's setenv)
        patch.setattr(safetensors.torch, "save_file", full_disk)
        [result] = run_rounds(queue.root, settings=ONE_EPOCH, guard=1.0, log=logs.append)
    assert result.failed and "No space left on device" in result.error
    assert str(home / ".versions" / NAME / "1") in result.error and "current version 0 is unchanged" in result.error
    last = queue.rounds()[-1]
    assert last.state is RoundState.FAILED and "No space left on device" in last.message
    assert [i.state for i in queue.items()] == ["pending", "pending"]
    assert versions.current(NAME) == "0" and load_unet(NAME)[2]["version"] == "0"
    assert _leftovers(home) == []  # room again: the same items train
    [result] = run_rounds(queue.root, settings=ONE_EPOCH, guard=1.0, log=logs.append)
    assert result.version == "1" and [i.state for i in queue.items()] == ["used", "used"]


def test_a_full_disk_while_promoting_is_finished_by_the_next_pass_without_training_again(home, tmp_path,
                                                                                         monkeypatch):
    queue = _corrections(tmp_path / "q", n_items=2, frames=4)  # 2 held-out frames: evidence to promote on
    versions.ensure_base(NAME, BASE)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(versions, "copy_folder", full_disk)
        [result] = run_rounds(queue.root, settings=ONE_EPOCH, guard=1.0, log=lambda line: None)
    assert result.failed and "No space left on device" in result.error
    assert queue.rounds()[-1].state is RoundState.FAILED and [i.state for i in queue.items()] == ["pending"] * 2
    assert versions.current(NAME) == "0" and load_unet(NAME)[2]["version"] == "0"
    assert run_rounds(queue.root, settings=ONE_EPOCH, guard=1.0, log=lambda line: None) == []  # not trained again
    assert versions.current(NAME) == "1" and load_unet(NAME)[2]["version"] == "1"
    assert [i.used_in for i in queue.items()] == [[f"{NAME}:v1"]] * 2
    assert [r.state for r in queue.rounds()] == [RoundState.DONE]


def test_a_truncated_item_is_set_aside_and_the_rest_of_its_group_trains(home, tmp_path):
    queue = _corrections(tmp_path / "q", n_items=3, frames=2)
    image = queue.root / "items" / "2" / "image.tif"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    logs: list[str] = []
    [result] = run_rounds(queue.root, settings=ONE_EPOCH, log=logs.append)
    assert result.version == "1" and result.set_aside == (2,) and result.trained_on + result.held_out == 4
    states = {i.id: (i.state, i.reason) for i in queue.items()}
    assert states[1][0] == states[3][0] == "used"
    assert states[2][0] == "failed" and "image.tif" in states[2][1]
    assert any(line.startswith("item 2 set aside (failed):") for line in logs)
    assert image.exists()  # kept, to try again once repaired
    assert "1 item(s) set aside" in result.summary()


def _ct_items(queue: Queue, n_items=2) -> None:
    """Micro-CT corrections of mosnet-synthetic: the phantom's truth on 4 slices, as its organ ids."""
    from napari_mousesegment.data.phantom_ct import ct_phantom
    from napari_mousesegment.store.registry import model_config

    organs = model_config("mosnet-synthetic")["organs"]
    for seed in range(n_items):
        scan = ct_phantom(seed=260 + seed, condition="native")
        truth = np.zeros(scan.labels.shape, np.uint8)
        for k, organ in enumerate(organs, start=1):
            if organ in scan.organs:
                truth[scan.labels == scan.organs[organ]] = k
        body = np.nonzero(truth.reshape(len(truth), -1).any(1))[0]
        keep = body[np.linspace(0, len(body) - 1, 4).astype(int)]
        labels = np.zeros_like(truth)
        labels[keep] = truth[keep]
        queue.add(scan.image, labels, "ct", condition="native", model="mosnet-synthetic", spacing=scan.spacing)


@pytest.mark.slow
def test_an_item_with_a_nan_voxel_size_is_set_aside_and_the_group_trains(home, tmp_path):
    queue = Queue(tmp_path / "q")
    _ct_items(queue)
    with sqlite3.connect(queue.root / "queue.sqlite") as db:  # as an old version's `--spacing nan` left it
        db.execute("UPDATE items SET spacing = '[NaN, NaN, NaN]' WHERE id = 2")
    meta = json.loads((queue.root / "items" / "2" / "item.json").read_text())
    (queue.root / "items" / "2" / "item.json").write_text(json.dumps({**meta, "spacing": [float("nan")] * 3}))
    [result] = run_rounds(queue.root, settings=ONE_EPOCH, log=lambda line: None)
    assert result.model == "mosnet-synthetic-lab" and result.version == "1" and result.set_aside == (2,)
    item = queue.get(2)
    assert item.state == "failed" and "voxel size" in item.reason and "nan" in item.reason
    assert queue.get(1).state == "used"


def test_items_the_model_cannot_learn_from_are_set_aside_with_the_reason(home, tmp_path):
    from napari_mousesegment.io.tiff import write_array

    queue = _corrections(tmp_path / "q", n_items=4, frames=2)
    item = queue.get(1)
    queue.add(item.image(), item.labels(), "ultrasound", organ="liver", model=BASE)  # a heart model
    with sqlite3.connect(queue.root / "queue.sqlite") as db:  # edited by hand, or by an older version
        db.execute("UPDATE items SET touched = '[0, 7]' WHERE id = 2")  # frames it does not have
        db.execute("UPDATE items SET touched = '[]' WHERE id = 3")
    write_array(queue.root / "items" / "4" / "labels.tif", queue.get(4).labels().astype(np.int16) - 1)
    [result] = run_rounds(queue.root, settings=ONE_EPOCH, log=lambda line: None)  # the liver group: no round
    assert result.version == "1" and sorted(result.set_aside) == [2, 3, 4]
    assert "not all within its 2 frames" in queue.get(2).reason
    assert "no corrected frame" in queue.get(3).reason
    assert "labels.tif" in queue.get(4).reason and "-1" in queue.get(4).reason
    assert "organ 'liver' is not the model's ('heart')" in queue.get(5).reason
    assert queue.get(1).state == "used"
    queue.retry([2, 3, 4, 5])  # put back by hand: checked again, set aside again, never trained on
    assert run_rounds(queue.root, settings=ONE_EPOCH, log=lambda line: None) == []
    assert [i.state for i in queue.items()] == ["used", "failed", "failed", "failed", "failed"]


def test_a_round_that_fails_for_no_one_item_is_recorded_and_its_items_stay_pending(home, tmp_path):
    queue = _corrections(tmp_path / "q", n_items=1, frames=2)
    series = ultrasound_series(seed=5)
    queue.add(series.frames[:2], series.labels["heart"][:2], "ultrasound", organ="heart", model="no-such-model")
    results = run_rounds(queue.root, settings=ONE_EPOCH, log=lambda line: None)
    assert [r.failed for r in results] == [False, True] and "no-such-model" in results[1].error
    failed = [r for r in queue.rounds() if r.state is RoundState.FAILED]
    assert len(failed) == 1 and failed[0].items == [2] and "no-such-model" in failed[0].message
    assert [i.state for i in queue.items()] == ["used", "pending"]
    assert not (home / ".versions" / "no-such-model").exists()  # refused before anything was written


def test_backoff_doubles_up_to_the_longest_and_new_items_end_it():
    now = [0.0]
    backoff = Backoff(first=10, longest=35, clock=lambda: now[0])
    group = ("ultrasound", "m", "heart", None)
    assert backoff.due(group, [1])
    assert [backoff.failed(group, [1]) for _ in range(4)] == [10, 20, 35, 35]
    assert not backoff.due(group, [1])
    assert backoff.due(group, [1, 2])  # a new item: tried at once
    now[0] = 35.0
    assert backoff.due(group, [1])
    backoff.succeeded(group)
    assert backoff.failed(group, [1]) == 10


def test_the_polling_worker_tries_a_failed_group_again_only_after_its_pause(home, tmp_path):
    queue = Queue(tmp_path / "q")
    series = ultrasound_series(seed=5)
    queue.add(series.frames[:2], series.labels["heart"][:2], "ultrasound", organ="heart", model="no-such-model")
    now, passes, lines = [0.0], [0], []

    def sleep(seconds):
        passes[0] += 1
        now[0] += seconds

    backoff = Backoff(first=20, longest=40, clock=lambda: now[0])
    poll(queue.root, poll_s=10, should_stop=lambda: passes[0] >= 6, log=lines.append, warn=lines.append,
         sleep=sleep, backoff=backoff, settings=ONE_EPOCH)
    # passes at t = 0, 10, 20, 30, 40, 50, 60: tries at 0, 20 (pause 20) and 60 (pause 40)
    assert [r.state for r in queue.rounds()] == [RoundState.FAILED] * 3
    assert any("next try in 40 s" in line for line in lines)
    poll(queue.root, should_stop=lambda: True, log=lines.append, backoff=backoff, settings=ONE_EPOCH)
    assert len(queue.rounds()) == 3  # still within its pause
    queue.add(series.frames[2:4], series.labels["heart"][2:4], "ultrasound", organ="heart", model="no-such-model")
    poll(queue.root, should_stop=lambda: True, log=lines.append, backoff=backoff, settings=ONE_EPOCH)
    assert len(queue.rounds()) == 4 and [i.state for i in queue.items()] == ["pending", "pending"]  # new item: at once


def test_the_polling_worker_outlives_an_error_in_a_pass(home, tmp_path, monkeypatch):
    from napari_mousesegment.active import worker

    queue = Queue(tmp_path / "q")
    calls = []

    def flaky(queue_dir, **options):
        calls.append(1)
        if len(calls) <= 2:
            raise (RuntimeError if len(calls) == 1 else sqlite3.DatabaseError)("database disk image is malformed")
        return []

    monkeypatch.setattr(worker, "run_rounds", flaky)
    warnings = []
    poll(queue.root, poll_s=0, should_stop=lambda: len(calls) >= 4, warn=warnings.append, log=lambda m: None,
         sleep=lambda s: None)
    assert len(calls) == 4 and len(warnings) == 2
    assert all(w.startswith("pass failed: database disk image is malformed") for w in warnings)
    assert str(queue.root / ERROR_LOG) in warnings[0]
    assert "RuntimeError" in (queue.root / ERROR_LOG).read_text()
    with pytest.raises(RuntimeError):  # --once: the error ends the command (one line from the CLI)
        calls.clear()
        poll(queue.root, once=True, warn=warnings.append, log=lambda m: None)

    def interrupted(queue_dir, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(worker, "run_rounds", interrupted)
    with pytest.raises(KeyboardInterrupt):
        poll(queue.root, poll_s=0, warn=warnings.append, log=lambda m: None, sleep=lambda s: None)


def test_a_second_polling_worker_refuses_at_once(home, tmp_path, capsys):
    queue = Queue(tmp_path / "q")
    with worker_lock(queue.root):
        with pytest.raises(WorkerBusy):
            poll(queue.root, poll_s=0, log=lambda m: None, warn=lambda m: None, sleep=lambda s: None)
        assert main(["worker", "--queue", str(queue.root), "--poll", "1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another worker" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("option", [["--epochs", "0"], ["--lr", "nan"], ["--guard", "-1"], ["--poll", "inf"],
                                    ["--max-minutes", "0"]])
def test_worker_options_out_of_range_are_one_line(home, tmp_path, capsys, option):
    assert main(["worker", "--queue", str(tmp_path / "q"), "--once", *option]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option[0] in err[0]


def test_a_broken_versions_index_is_one_line_and_other_models_still_list(home, tmp_path, capsys):
    versions.ensure_base("good-lab", BASE)
    versions.ensure_base("bad-lab", BASE)
    index = home / ".versions" / "bad-lab" / versions.INDEX
    for broken in ("[1, 2]", "{not json", '{"versions": {}, "current": "7"}'):
        index.write_text(broken)
        with pytest.raises(ModelError, match=str(index)):
            versions.versions("bad-lab")
        capsys.readouterr()
        assert main(["models", "versions", "bad-lab"]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(index) in err[0]
        assert main(["models", "versions", "good-lab", "--json"]) == 0
        assert [v["version"] for v in json.loads(capsys.readouterr().out)] == ["0"]
        assert main(["models", "list"]) == 0 and "good-lab" in capsys.readouterr().out
        assert any(str(index) in line for line in versions.recover_all())  # reported, not raised


def test_recover_cleans_what_a_killed_copy_left_and_nothing_else(home):
    versions.ensure_base(NAME, BASE)
    half = home / f".{NAME}-ab12cd_9"  # what copy_folder's temporary folder looks like
    half.mkdir()
    (half / "config.json").write_text("{}")
    other = home / f".{NAME}-2-ab12cd_9"  # another model's (named NAME-2): not ours to touch
    other.mkdir()
    unrecorded = home / ".versions" / NAME / "5"
    unrecorded.mkdir()
    os.replace(home / NAME, home / f".{NAME}-old")  # killed between copy_folder's two renames
    done = versions.recover(NAME)
    assert len(done) == 2 and not half.exists() and not unrecorded.exists() and other.is_dir()
    assert load_unet(NAME)[2]["version"] == "0"
    with versions._locked(NAME):  # another writer holds the store's lock: nothing is touched
        half.mkdir()
        assert versions.recover(NAME) == [] and half.exists()


def test_a_version_promoted_by_hand_meanwhile_is_not_replaced_when_a_round_settles(home):
    versions.ensure_base(NAME, BASE)
    model, config, _ = load_unet(NAME)
    decision = {"queue": "q", "id": 1, "promote": True, "verdict": "promoted"}
    first = versions.publish(NAME, model, config, "0", [1], {}, decision=decision)
    second = versions.publish(NAME, model, config, "0", [2], {}, decision={**decision, "id": 2})
    assert versions.settle(NAME, second) == (True, "promoted")
    promoted, verdict = versions.settle(NAME, first)  # its worker died before promoting it
    assert not promoted and "was made current while the round ran" in verdict
    assert versions.current(NAME) == second and versions.settle(NAME, first) == (False, verdict)  # once
    assert versions.published_rounds(NAME, "q") == {1: first, 2: second} and versions.published_rounds(NAME, "x") == {}
