"""The durable queue: items, bad input, a full disk, concurrent writers, a killed writer."""

import errno
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from napari_mousesegment.active.export import export_dataset
from napari_mousesegment.active.queue import Queue, QueueError, touched_planes
from napari_mousesegment.active.ranking import mean_entropy, rank
from napari_mousesegment.cli import main


def _pair(seed=0, frames=4):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (frames, 24, 32), dtype=np.uint8)
    labels = np.zeros(image.shape, np.uint16)
    labels[1, 5:12, 6:14] = 1
    labels[frames - 1, 10:20, 10:25] = 1
    return image, labels


def test_add_list_status_remove(tmp_path):
    q = Queue(tmp_path / "q")
    image, labels = _pair()
    prediction = labels.copy()
    prediction[3] = 0  # the user fixed frame 3 only
    item = q.add(image, labels, "ultrasound", organ="heart", model="m", prediction=prediction)
    assert item.touched == [3] and item.state == "pending"
    assert np.array_equal(item.image(), image) and np.array_equal(item.labels(), labels)
    second = q.add(image, labels, "ultrasound", organ="liver")
    assert second.touched == [1, 3]
    assert q.status()["items"] == 2 and q.status()["pending"] == 2
    q.mark_used([item.id], "m-lab:v1")
    assert q.get(item.id).state == "used" and q.get(item.id).used_in == ["m-lab:v1"]
    q.remove(second.id)
    assert [i.id for i in q.items()] == [item.id] and not (q.root / "items" / str(second.id)).exists()
    with pytest.raises(QueueError, match="no item"):
        q.remove(second.id)


@pytest.mark.parametrize("change, message", [
    (lambda img, lab: (img, lab[:, :-1]), "do not match"),
    (lambda img, lab: (img, np.zeros_like(lab)), "empty"),
    (lambda img, lab: (img.astype(float) * np.nan, lab), "NaN"),
    (lambda img, lab: (img[0], lab[0]), "stack"),
    (lambda img, lab: (img, lab.astype(float)), "integers"),
])
def test_bad_input_is_refused_and_nothing_is_added(tmp_path, change, message):
    q = Queue(tmp_path / "q")
    image, labels = change(*_pair())
    with pytest.raises(QueueError, match=message):
        q.add(image, labels, "ultrasound", organ="heart")
    assert q.items() == [] and list((q.root / "items").iterdir()) == []


def test_identical_to_the_prediction_is_an_empty_correction(tmp_path):
    image, labels = _pair()
    with pytest.raises(QueueError, match="empty"):
        Queue(tmp_path / "q").add(image, labels, "ultrasound", organ="heart", prediction=labels)


def test_a_full_disk_adds_nothing_and_keeps_earlier_items(tmp_path, monkeypatch):
    q = Queue(tmp_path / "q")
    image, labels = _pair()
    first = q.add(image, labels, "ultrasound", organ="heart")
    real = tifffile.imwrite
    calls = []

    def full(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", full)
    with pytest.raises(QueueError, match="No space left"):
        q.add(image, labels, "ultrasound", organ="heart")
    monkeypatch.setattr(tifffile, "imwrite", real)
    assert [i.id for i in q.items()] == [first.id] and np.array_equal(q.get(first.id).labels(), labels)
    assert list((q.root / "tmp").iterdir()) == []


def _add_many(root, seed, n):
    q = Queue(root)
    for k in range(n):
        image, labels = _pair(seed * 1000 + k, frames=2)
        labels[1, 1, 1] = 1
        q.add(image, labels, "ultrasound", organ="heart", source=f"{seed}-{k}")


def test_two_processes_adding_50_items_each_keep_all_100(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_add_many, args=(tmp_path / "q", s, 50)) for s in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    items = Queue(tmp_path / "q").items()
    assert len(items) == 100 and len({i.source for i in items}) == 100
    assert all((i.folder / "labels.tif").is_file() for i in items)


def test_kill_9_while_writing_items_loses_nothing_committed(tmp_path):
    code = (f"from tests.active.test_queue import _add_many; _add_many({str(tmp_path / 'q')!r}, 7, 10_000)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=os.getcwd())
    q = Queue(tmp_path / "q")
    deadline = time.time() + 60
    while len(q.items()) < 5 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    items = Queue(tmp_path / "q").items()
    assert len(items) >= 5
    for item in items:  # every recorded item is whole
        assert item.labels().shape == item.image().shape == (2, 24, 32)
    folders = {p.name for p in (q.root / "items").iterdir()}
    assert {str(i.id) for i in items} <= folders and len(folders - {str(i.id) for i in items}) <= 1
    more = Queue(tmp_path / "q").add(*_pair(), "ultrasound", organ="heart")  # the queue still works
    assert more.id > max(i.id for i in items)


def test_export_makes_a_dataset_the_trainer_reads(tmp_path):
    from napari_mousesegment.data.us_dataset import load_us_items

    q = Queue(tmp_path / "q")
    for seed in range(3):
        q.add(*_pair(seed), "ultrasound", organ="heart")
    out = export_dataset(q, tmp_path / "ds")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["kind"] == "ultrasound" and len(meta["series"]) == 3
    items = load_us_items([out], "heart")
    assert {i.split for i in items} == {"train", "val"} and all(len(i.frames) == 2 for i in items)


def test_cli_add_status_list_remove(tmp_path, capsys):
    image, labels = _pair()
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", labels, photometric="minisblack")
    args = ["--queue", str(tmp_path / "q")]
    assert main(["queue", "add", *args, "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"),
                 "--kind", "ultrasound", "--organ", "heart", "--model", "unet-heart-synthetic"]) == 0
    assert main(["queue", "add", *args, "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"),
                 "--kind", "ultrasound", "--organ", "heart", "--model", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert main(["queue", "status", *args, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["items"] == 1 and status["pending"] == 1
    assert main(["queue", "list", *args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["model"] == "unet-heart-synthetic"
    assert main(["queue", "remove", *args, "1"]) == 0 and Queue(tmp_path / "q").items() == []


def test_touched_planes_and_uncertainty_ranking():
    labels = np.zeros((3, 4, 4), np.uint8)
    labels[2, 1, 1] = 1
    assert touched_planes(labels, None) == [2] and touched_planes(labels, labels) == []
    prob = np.stack([np.full((4, 4), 0.99), np.full((4, 4), 0.5), np.full((4, 4), 0.8)])
    scores = mean_entropy(prob)
    assert scores[1] == pytest.approx(1.0) and scores[0] < scores[2] < scores[1]
    assert [k for k, _ in rank(scores)] == [1, 2, 0] and [k for k, _ in rank(scores, exclude={1})] == [2, 0]


def test_cli_ct_items_take_the_voxel_size_from_the_tiff_or_refuse(tmp_path, capsys):
    from napari_mousesegment.io.tiff import write_tiff

    image, labels = _pair()
    write_tiff(tmp_path / "scan.tif", image.astype(np.int16), (0.28, 0.28, 0.28))
    write_tiff(tmp_path / "lab.tif", labels.astype(np.uint8), (0.28, 0.28, 0.28))
    tifffile.imwrite(tmp_path / "bare.tif", image.astype(np.int16), photometric="minisblack")
    common = ["queue", "add", "--queue", str(tmp_path / "q"), "--labels", str(tmp_path / "lab.tif"), "--kind", "ct",
              "--condition", "native", "--model", "mosnet-synthetic"]
    assert main([*common, "--image", str(tmp_path / "scan.tif")]) == 0
    assert Queue(tmp_path / "q").items()[0].spacing == pytest.approx((0.28,) * 3)
    assert main([*common, "--image", str(tmp_path / "bare.tif")]) == 2
    assert "no voxel size" in capsys.readouterr().err
    assert main([*common, "--image", str(tmp_path / "bare.tif"), "--spacing", "0.5,0.3,0.3"]) == 0
    assert Queue(tmp_path / "q").items()[1].spacing == pytest.approx((0.5, 0.3, 0.3))
    assert main([*common[:-2], "--model", "unet-heart-synthetic", "--image", str(tmp_path / "scan.tif")]) == 2
    assert "need a mosnet model" in capsys.readouterr().err
