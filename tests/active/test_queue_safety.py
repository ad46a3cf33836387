"""The queue never deletes what it cannot account for: a lost or damaged manifest, crash leftovers,
storage failures, `queue repair`, read-only commands, and what `queue add` accepts and refuses."""

import errno
import json
import os
import sqlite3
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from filelock import FileLock

from napari_mousesegment.active import queue as queue_module
from napari_mousesegment.active.export import export_dataset
from napari_mousesegment.active.queue import Queue, QueueError, StorageError
from napari_mousesegment.active.repair import repair_queue
from napari_mousesegment.cli import main
from napari_mousesegment.io.composites import montage
from napari_mousesegment.io.roi import labels_to_rois, write_roiset

HOUR_AGO = time.time() - 3600


def _pair(seed=0, frames=3):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 200, (frames, 20, 24), dtype=np.uint8)
    labels = np.zeros(image.shape, np.uint16)
    labels[frames - 1, 4:10, 5:12] = 1
    return image, labels


def _five(root):
    """A queue of 5 items (2 used, 1 failed, 2 pending) whose folders are an hour old."""
    q = Queue(root)
    for seed in range(5):
        q.add(*_pair(seed), "ultrasound", organ="heart", model="unet-heart-synthetic")
    q.mark_used([1, 2], "unet-heart-lab:v2")
    q.mark_failed([3], "image.tif: not a readable TIFF")
    for folder in (root / "items").iterdir():
        os.utime(folder, (HOUR_AGO, HOUR_AGO))
    return q


def _tif(path, array):
    tifffile.imwrite(path, array, photometric="minisblack")


def _states(root):
    return {i.id: (i.state, i.used_in, i.reason) for i in Queue(root, create=False).items()}


def _cli(capsys, *argv):
    """Run the CLI; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err, *names):
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for name in names:
        assert str(name) in err, err


def _drop_manifest(root):
    for suffix in ("", "-wal", "-shm"):
        (root / f"queue.sqlite{suffix}").unlink(missing_ok=True)


def _empty_manifest(root):
    _drop_manifest(root)
    (root / "queue.sqlite").write_bytes(b"")


def _emptied_manifest(root):
    with sqlite3.connect(root / "queue.sqlite") as db:
        db.execute("DELETE FROM items")


def _no_tables(root):
    with sqlite3.connect(root / "queue.sqlite") as db:
        db.execute("DROP TABLE items")


def _corrupt_header(root):
    with open(root / "queue.sqlite", "r+b") as f:
        f.write(b"this is no longer an SQLite file")


def _malformed_page(root):
    with sqlite3.connect(root / "queue.sqlite") as db:  # pages of its own, to damage
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = (root / "queue.sqlite").stat().st_size
    assert size >= 3 * 4096
    with open(root / "queue.sqlite", "r+b") as f:
        for page in range(1, size // 4096):
            f.seek(page * 4096)
            f.write(np.random.default_rng(page).integers(0, 256, 4096, dtype=np.uint8).tobytes())


DAMAGE = {"missing": _drop_manifest, "empty": _empty_manifest, "emptied": _emptied_manifest,
          "no tables": _no_tables, "corrupt header": _corrupt_header, "malformed pages": _malformed_page}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_lost_or_damaged_manifest_stops_every_command_and_repair_restores_every_item(tmp_path, capsys, damage):
    root = tmp_path / "q"
    _five(root)
    before = _states(root)
    DAMAGE[damage](root)
    folders = sorted(p.name for p in (root / "items").iterdir())
    image, labels = _pair(9)
    _tif(tmp_path / "img.tif", image)
    _tif(tmp_path / "lab.tif", labels)
    for argv in (["status"], ["list"], ["export", "--out", str(tmp_path / "ds")], ["remove", "2"], ["retry", "3"],
                 ["add", "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"),
                  "--kind", "ultrasound", "--organ", "heart"]):
        code, out, err = _cli(capsys, "queue", argv[0], "--queue", str(root), *argv[1:])
        assert code != 0, (argv, out)
        _one_line_error(err, root / "queue.sqlite", "queue repair")
        assert sorted(p.name for p in (root / "items").iterdir()) == folders  # nothing deleted, nothing added
    assert not (tmp_path / "ds").exists()

    code, out, err = _cli(capsys, "queue", "repair", "--queue", str(root))
    assert code == 0 and "5 item(s) restored" in out, out + err
    assert _states(root) == before  # states, versions used in and reasons come back from item.json
    assert sorted(p.name for p in (root / "items").iterdir()) == folders
    if damage not in ("missing", "empty"):  # the damaged file is kept beside, never deleted
        assert list(root.glob("queue.sqlite.damaged-*"))
    code, out, _ = _cli(capsys, "queue", "status", "--queue", str(root), "--json")
    assert code == 0 and json.loads(out)["items"] == 5
    more = Queue(root).add(*_pair(7), "ultrasound", organ="heart")  # the queue works on, with a new id
    assert more.id == 6 and np.array_equal(more.labels(), _pair(7)[1])


def test_repair_of_a_healthy_queue_changes_nothing(tmp_path, capsys):
    root = tmp_path / "q"
    q = _five(root)
    q.update_round(q.start_round("unet-heart-lab", [1, 2]), state="done", version="2")
    with sqlite3.connect(root / "queue.sqlite") as db:
        dump = list(db.iterdump())
    code, out, _ = _cli(capsys, "queue", "repair", "--queue", str(root))
    assert code == 0 and "healthy" in out and "nothing to repair" in out
    with sqlite3.connect(root / "queue.sqlite") as db:
        assert list(db.iterdump()) == dump
    assert not list(root.glob("queue.sqlite.damaged-*"))


def test_repair_keeps_the_rounds_history_when_the_damaged_file_still_reads(tmp_path):
    root = tmp_path / "q"
    q = _five(root)
    q.update_round(q.start_round("unet-heart-lab", [1, 2]), state="done", version="2", message="promoted")
    _emptied_manifest(root)
    report = repair_queue(root)
    assert report.rounds == 1 and sum(report.restored.values()) == 5
    assert [(r.state.value, r.version) for r in Queue(root).rounds()] == [("done", "2")]


def test_repair_adopts_folders_without_a_record_and_reports_unreadable_ones(tmp_path, capsys):
    root = tmp_path / "q"
    _five(root)
    with sqlite3.connect(root / "queue.sqlite") as db:  # as if an add was cut between rename and commit
        db.execute("DELETE FROM items WHERE id = 5")
    (root / "items" / "4" / "item.json").write_text("{not json")
    assert [i.id for i in Queue(root).items()] == [1, 2, 3, 4]  # opening deletes neither
    assert (root / "items" / "5").is_dir()
    code, out, _ = _cli(capsys, "queue", "repair", "--queue", str(root))
    assert code == 0 and "adopted: 5" in out
    assert [i.id for i in Queue(root).items()] == [1, 2, 3, 4, 5]

    _drop_manifest(root)
    code, out, _ = _cli(capsys, "queue", "repair", "--queue", str(root))
    assert code == 0 and "4 item(s) restored" in out and "items/4/item.json" in out
    assert (root / "items" / "4" / "image.tif").is_file()  # kept, not restored, not deleted
    assert [i.id for i in Queue(root).items()] == [1, 2, 3, 5]


def test_repair_is_refused_while_a_worker_holds_the_lock(tmp_path, capsys):
    root = tmp_path / "q"
    _five(root)
    _drop_manifest(root)
    lock = FileLock(root / "worker.lock")
    with lock:
        code, _, err = _cli(capsys, "queue", "repair", "--queue", str(root))
    assert code != 0 and "worker" in err
    assert not (root / "queue.sqlite").exists()


def test_read_only_commands_create_nothing(tmp_path, capsys):
    missing, empty = tmp_path / "nowhere", tmp_path / "empty"
    empty.mkdir()
    for argv in (["status"], ["list"], ["remove", "1"], ["retry", "1"], ["export", "--out", str(tmp_path / "ds")]):
        for root in (missing, empty):
            code, _, err = _cli(capsys, "queue", argv[0], "--queue", str(root), *argv[1:])
            assert code != 0
            _one_line_error(err, root, "no queue here")
    assert not missing.exists() and list(empty.iterdir()) == [] and not (tmp_path / "ds").exists()


def test_clean_up_removes_only_recorded_leftovers(tmp_path):
    root = tmp_path / "q"
    q = _five(root)
    recorded, unrecorded = root / "tmp" / ("0" * 32), root / "tmp" / "mine"
    for folder in (recorded, unrecorded):
        folder.mkdir()
        (folder / "image.tif").write_bytes(b"x")
        os.utime(folder, (HOUR_AGO, HOUR_AGO))
    with sqlite3.connect(root / "queue.sqlite") as db:
        db.execute("INSERT INTO writes (name, started) VALUES (?, ?)", (recorded.name, HOUR_AGO))
        db.execute("INSERT INTO writes (name, started) VALUES (?, ?)", ("fresh", time.time()))
    (root / "tmp" / "fresh").mkdir()
    upload = q.scratch_folder("upload-")  # the lab server's scratch space, left by a killed server
    with sqlite3.connect(root / "queue.sqlite") as db:
        db.execute("UPDATE writes SET started = ? WHERE name = ?", (HOUR_AGO, upload.name))
    orphan = root / "items" / "40"  # an item folder without a record: adopted by repair, never deleted
    orphan.mkdir()
    os.utime(orphan, (HOUR_AGO, HOUR_AGO))
    Queue(root)
    assert not recorded.exists() and not upload.exists()
    assert unrecorded.is_dir() and (root / "tmp" / "fresh").is_dir() and orphan.is_dir()
    assert len(q.items()) == 5
    with sqlite3.connect(root / "queue.sqlite") as db:
        assert [r[0] for r in db.execute("SELECT name FROM writes")] == ["fresh"]


def test_a_removal_cut_short_is_finished_by_the_clean_up(tmp_path):
    root = tmp_path / "q"
    _five(root)
    with sqlite3.connect(root / "queue.sqlite") as db:  # the record went, the folder did not (a kill)
        db.execute("DELETE FROM items WHERE id = 2")
        db.execute("INSERT INTO writes (name, started, item) VALUES ('removed-2-x', ?, 2)", (HOUR_AGO,))
    Queue(root)
    assert not (root / "items" / "2").exists() and (root / "items" / "1").is_dir()


def test_a_full_disk_during_add_is_a_storage_error_and_loses_nothing(tmp_path, capsys, monkeypatch):
    root = tmp_path / "q"
    _five(root)
    real = queue_module.write_array
    calls = []

    def full(path, array):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, array)

    monkeypatch.setattr(queue_module, "write_array", full)
    with pytest.raises(StorageError, match="No space left"):
        Queue(root).add(*_pair(8), "ultrasound", organ="heart")
    image, labels = _pair(8)
    _tif(tmp_path / "img.tif", image)
    _tif(tmp_path / "lab.tif", labels)
    calls.clear()
    code, _, err = _cli(capsys, "queue", "add", "--queue", str(root), "--image", str(tmp_path / "img.tif"),
                        "--labels", str(tmp_path / "lab.tif"), "--kind", "ultrasound", "--organ", "heart")
    assert code != 0
    _one_line_error(err, root, "No space left")
    monkeypatch.setattr(queue_module, "write_array", real)
    assert len(Queue(root).items()) == 5 and list((root / "tmp").iterdir()) == []
    with sqlite3.connect(root / "queue.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM writes").fetchone()[0] == 0


def test_a_read_only_manifest_is_a_storage_error_naming_it(tmp_path, capsys, monkeypatch):
    root = tmp_path / "q"
    _five(root)
    real = sqlite3.connect

    def read_only(path, *args, **kwargs):  # what a read-only folder gives, also when the tests run as root
        kwargs.pop("uri", None)
        return real(f"{Path(str(path).removeprefix('file://').split('?')[0]).as_uri()}?mode=ro", *args,
                    uri=True, **kwargs)

    monkeypatch.setattr(queue_module.sqlite3, "connect", read_only)
    with pytest.raises(StorageError, match="queue.sqlite"):
        Queue(root, create=False).mark_failed([4], "x")
    code, _, err = _cli(capsys, "queue", "remove", "--queue", str(root), "4")
    assert code != 0
    _one_line_error(err, root / "queue.sqlite", "readonly")
    monkeypatch.setattr(queue_module.sqlite3, "connect", real)
    assert len(Queue(root).items()) == 5 and (root / "items" / "4").is_dir()


def test_a_round_left_running_by_a_dead_worker_shows_interrupted(tmp_path, capsys):
    root = tmp_path / "q"
    q = _five(root)
    q.start_round("unet-heart-lab", [4, 5])
    (root / "worker.lock").touch()
    with FileLock(root / "worker.lock"):  # a live worker: its round runs
        assert Queue(root, create=False).status()["last_round"]["state"] == "running"
    code, out, _ = _cli(capsys, "queue", "status", "--queue", str(root))
    assert code == 0 and "interrupted" in out and "running" not in out
    assert [r.state.value for r in q.rounds()] == ["interrupted"]


def test_failed_items_are_shown_with_their_reason_and_retried(tmp_path, capsys):
    root = tmp_path / "q"
    _five(root)
    code, out, _ = _cli(capsys, "queue", "list", "--queue", str(root))
    assert code == 0 and "failed" in out and "image.tif: not a readable TIFF" in out
    code, out, _ = _cli(capsys, "queue", "status", "--queue", str(root))
    assert "1 failed" in out and "item 3 failed: image.tif" in out
    code, out, _ = _cli(capsys, "queue", "retry", "--queue", str(root), "3", "4")
    assert code == 0 and "item 3: pending again" in out and "item 4: pending" in out
    item = Queue(root).get(3)
    assert item.state == "pending" and item.reason is None
    assert json.loads((root / "items" / "3" / "item.json").read_text())["state"] == "pending"
    code, _, err = _cli(capsys, "queue", "retry", "--queue", str(root), "99")
    assert code != 0 and "no item 99" in err


def test_queue_list_shows_any_record(tmp_path, capsys):
    root = tmp_path / "q"
    _five(root)
    with sqlite3.connect(root / "queue.sqlite") as db:
        db.execute("UPDATE items SET organ = '' WHERE id = 1")
        db.execute("UPDATE items SET organ = NULL, condition = NULL, model = NULL WHERE id = 2")
    code, out, err = _cli(capsys, "queue", "list", "--queue", str(root))
    assert code == 0 and len(out.splitlines()) == 5, err


def test_an_export_that_fails_leaves_nothing_behind(tmp_path):
    root = tmp_path / "q"
    q = _five(root)
    q.retry([3])
    (root / "items" / "4" / "image.tif").write_bytes(b"II*\x00truncated")
    with pytest.raises(QueueError, match="image.tif"):
        export_dataset(Queue(root, create=False), tmp_path / "ds")
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds.partial").exists()


def _add(capsys, tmp_path, image, labels, *extra, kind="ultrasound"):
    who = ["--organ", "heart"] if kind == "ultrasound" else ["--condition", "native"]
    return _cli(capsys, "queue", "add", "--queue", str(tmp_path / "q"), "--image", str(image), "--labels",
                str(labels), "--kind", kind, *who, *extra)


def test_queue_add_takes_a_2d_frame_a_roiset_and_a_montage(tmp_path, capsys):
    image, labels = _pair(frames=6)
    labels[2, 12:18, 3:9] = 2
    # one 2D frame, with 2D labels
    _tif(tmp_path / "frame.tif", image[5])
    _tif(tmp_path / "frame_labels.tif", labels[5])
    code, out, err = _add(capsys, tmp_path, tmp_path / "frame.tif", tmp_path / "frame_labels.tif")
    assert code == 0 and "one frame" in out, err
    first = Queue(tmp_path / "q").get(1)
    assert first.shape == (1, 20, 24) and np.array_equal(first.labels()[0], labels[5])
    # a stack with its corrections as a Fiji RoiSet (each ROI on its frame)
    _tif(tmp_path / "frames.tif", image)
    write_roiset(tmp_path / "heart_RoiSet.zip", labels_to_rois(labels, "heart"))
    code, out, err = _add(capsys, tmp_path, tmp_path / "frames.tif", tmp_path / "heart_RoiSet.zip")
    assert code == 0, err
    second = Queue(tmp_path / "q").get(2)
    assert np.array_equal(second.labels() > 0, labels > 0) and second.touched == [2, 5]
    # a montage PNG (grid detected, or given), the labels as a stack or as the RoiSet
    iio.imwrite(tmp_path / "montage.png", montage(image, (2, 3)))
    _tif(tmp_path / "labels.tif", labels)
    code, out, err = _add(capsys, tmp_path, tmp_path / "montage.png", tmp_path / "labels.tif")
    assert code == 0 and "2x3 montage" in out, err
    code, out, err = _add(capsys, tmp_path, tmp_path / "montage.png", tmp_path / "heart_RoiSet.zip", "--grid", "2x3")
    assert code == 0 and "2x3 montage" in out, err
    for item in Queue(tmp_path / "q").items()[2:]:
        assert np.array_equal(item.image(), image) and np.array_equal(item.labels() > 0, labels > 0)
    # one 2D PNG frame with a RoiSet drawn on it in Fiji (ROIs without a frame)
    iio.imwrite(tmp_path / "frame.png", image[2])
    write_roiset(tmp_path / "one.zip", labels_to_rois(labels[2], "heart"))
    code, out, err = _add(capsys, tmp_path, tmp_path / "frame.png", tmp_path / "one.zip")
    assert code == 0 and "one frame" in out, err
    assert np.array_equal(Queue(tmp_path / "q").get(5).labels()[0] > 0, labels[2] > 0)


@pytest.mark.parametrize("case", ["minus one", "instance id 70000", "ct 300", "ct organ 10 of 9",
                                  "organ kidneyz", "organ kidneyz with model", "empty organ", "spacing nan"])
def test_queue_add_refuses_labels_and_names_the_model_cannot_have(tmp_path, capsys, case):
    image, labels = _pair()
    kind, extra, labels_path = "ultrasound", [], tmp_path / "lab.tif"
    if case == "minus one":
        labels = labels.astype(np.int16)
        labels[0, 0, 0] = -1
    elif case == "instance id 70000":
        labels = labels.astype(np.uint32) * 70000
    elif case.startswith("ct"):
        kind, labels = "ct", labels * (300 if case == "ct 300" else 10)
        extra = ["--model", "mosnet-synthetic", "--spacing", "0.1"]
    _tif(tmp_path / "img.tif", image.astype(np.int16) - 1000)
    _tif(labels_path, labels)
    argv = ["queue", "add", "--queue", str(tmp_path / "q"), "--image", str(tmp_path / "img.tif"),
            "--labels", str(labels_path), "--kind", kind]
    argv += ["--organ", {"organ kidneyz": "kidneyz", "organ kidneyz with model": "kidneyz",
                         "empty organ": ""}.get(case, "heart")] if kind == "ultrasound" else ["--condition", "native"]
    if case == "organ kidneyz with model":
        extra = ["--model", "unet-heart-synthetic"]
    if case == "spacing nan":
        with pytest.raises(QueueError, match="voxel size"):
            Queue(tmp_path / "q").add(image, labels, "ct", condition="native", spacing=(np.nan,) * 3)
        assert Queue(tmp_path / "q").items() == []
        return
    code, out, err = _cli(capsys, *argv, *extra)
    assert code != 0, out
    _one_line_error(err, "kidneyz" if "kidneyz" in case else "--organ" if case == "empty organ" else labels_path)
    assert not (tmp_path / "q" / "items").exists() or not list((tmp_path / "q" / "items").iterdir())


def test_the_library_refuses_out_of_range_labels(tmp_path):
    image, labels = _pair()
    q = Queue(tmp_path / "q")
    with pytest.raises(QueueError, match="0 to 255"):
        q.add(image, labels * 300, "ct", condition="native", spacing=(0.1, 0.1, 0.1))
    with pytest.raises(QueueError, match="0 to 65535"):
        q.add(image, labels.astype(np.int32) - 1, "ultrasound", organ="heart")
    with pytest.raises(QueueError, match="--organ"):
        q.add(image, labels, "ultrasound", organ="")
    assert q.items() == []
