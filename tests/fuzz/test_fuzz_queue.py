"""Every ``queue`` command and ``worker --once`` on damaged queue folders, bad files and bad values.

Oracles (issue 21): no traceback, no hang, one clean line for every refusal; and no wrong result:
no item folder ever disappears (unless ``queue remove`` of that id succeeded), a read-only command
never creates the queue folder, a queue whose database is missing, empty or unreadable while items
exist makes every command stop and say so (``queue repair`` restores the items instead), and nonsense
corrections (labels -1, 300 or 4e9 for the model, organ "" or "kidneyz") are never queued.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from napari_mousesegment.io.tiff import write_array, write_tiff

from .commands import (
    BROKEN_MODELS,
    FILE_CLASSES,
    bad_file,
    broken_model,
    examples,
    judge,
    refused,
    snapshot,
    wrong,
)

#: Queue commands: name -> argv after ``--queue Q`` is known (``{q}``, ``{image}``, ``{labels}``, ``{out}``).
COMMANDS = {
    "list": ["queue", "list", "--queue", "{q}"],
    "list --json": ["queue", "list", "--json", "--queue", "{q}"],
    "status": ["queue", "status", "--queue", "{q}"],
    "remove": ["queue", "remove", "--queue", "{q}", "2"],
    "export": ["queue", "export", "--queue", "{q}", "--out", "{out}"],
    "repair": ["queue", "repair", "--queue", "{q}"],
    "retry": ["queue", "retry", "--queue", "{q}", "1"],
    "add": ["queue", "add", "--queue", "{q}", "--image", "{image}", "--labels", "{labels}", "--kind", "ultrasound",
            "--organ", "heart"],
    "worker --once": ["worker", "--queue", "{q}", "--once", "--epochs", "1", "--device", "cpu"],
}
#: Commands that may create a queue where there is none (the others only read or change one).
CREATING = {"add", "worker --once"}
#: A queue folder as a crash, a full disk or a user leaves it.
STATES = ("healthy", "missing", "empty folder", "a file", "db deleted", "db emptied", "db without tables",
          "db without items", "db truncated", "db header zeroed", "db random page", "item image truncated")
#: States where the database cannot account for the items on disk: every command but repair stops.
LOST_MANIFEST = {"db deleted", "db emptied", "db without tables", "db without items", "db header zeroed"}
ITEMS = 3


def _frames(seed: int, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (n, 12, 16)).astype(np.uint8)
    labels = np.zeros((n, 12, 16), np.uint16)
    labels[:, 3:8, 4:10] = 1
    return image, labels


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A healthy queue of three ultrasound items (no model: a worker leaves them pending), all
    older than the 10 minutes after which clean-up once deleted 'stale' folders."""
    from napari_mousesegment.active.queue import Queue

    root = tmp_path_factory.mktemp("template") / "queue"
    queue = Queue(root)
    for seed in range(ITEMS):
        image, labels = _frames(seed)
        queue.add(image, labels, "ultrasound", organ="heart")
    old = time.time() - 3600
    for path in [root, *root.rglob("*")]:
        os.utime(path, (old, old))
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("queue-inputs")
    image, labels = _frames(7)
    return {"image": write_array(folder / "image.tif", image), "labels": write_array(folder / "labels.tif", labels)}


def _draw_index(data, n: int, label: str) -> int:
    """A position in [0, n), drawn independently of ``n`` (a file's size may differ by a few bytes
    between runs, and hypothesis wants the same draws for the same example)."""
    return data.draw(st.integers(0, 2**20), label=label) % max(1, n)


def _make_state(state: str, template: Path, root: Path, data) -> None:
    """``root`` made into a queue folder in ``state``; ``data`` draws where damage goes."""
    if root.exists() or root.is_symlink():
        shutil.rmtree(root) if root.is_dir() else root.unlink()
    if state == "missing":
        return
    if state == "empty folder":
        root.mkdir(parents=True)
        return
    if state == "a file":
        root.write_bytes(b"not a queue\n")
        return
    shutil.copytree(template, root)
    db = root / "queue.sqlite"
    size = db.stat().st_size
    if state == "db deleted":
        db.unlink()
    elif state == "db emptied":
        db.write_bytes(b"")
    elif state == "db without tables":
        db.unlink()
        with closing(sqlite3.connect(db)) as con:  # a valid database file that holds nothing
            con.execute("CREATE TABLE t (x)")
            con.execute("DROP TABLE t")
            con.commit()
    elif state == "db without items":  # what a fresh database made over a lost one looks like
        with closing(sqlite3.connect(db)) as con:
            con.execute("DELETE FROM items")
            con.commit()
    elif state == "db truncated":
        db.write_bytes(db.read_bytes()[:1 + _draw_index(data, size - 1, "truncated at")])
    elif state == "db header zeroed":
        raw = bytearray(db.read_bytes())
        raw[:100] = bytes(100)
        db.write_bytes(bytes(raw))
    elif state == "db random page":
        raw = bytearray(db.read_bytes())
        page = 4096 if size >= 8192 else 1024
        k = 1 + _draw_index(data, max(1, size // page - 1), "page")
        seed = data.draw(st.integers(0, 2**32 - 1), label="seed of the page's bytes")
        raw[k * page:(k + 1) * page] = np.random.default_rng(seed).bytes(page)
        db.write_bytes(bytes(raw))
    elif state == "item image truncated":
        path = root / "items" / "1" / "image.tif"
        path.write_bytes(path.read_bytes()[:_draw_index(data, path.stat().st_size, "cut at")])


def _listed_ids(root: Path, capsys) -> set[int]:
    """The item ids ``queue list --json`` shows (after a repair)."""
    from napari_mousesegment.cli import main

    capsys.readouterr()
    code = main(["queue", "list", "--json", "--queue", str(root)])
    out = capsys.readouterr().out
    if code != 0:
        return set()
    return {int(i["id"]) for i in json.loads(out)}


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_queue_commands_on_damaged_queues(command, state, template, inputs, tmp_path, capsys, home):
    what = f"cli queue {command.split()[0]}" if command != "worker --once" else "cli worker"
    root, out = tmp_path / "queue", tmp_path / "export"

    @examples(5)
    @given(st.data())
    def run(data):
        _make_state(state, template, root, data)
        shutil.rmtree(out, ignore_errors=True)
        before = snapshot(root)
        file_before = root.read_bytes() if root.is_file() else None
        argv = [a.format(q=root, out=out, **inputs) for a in COMMANDS[command]]
        names = (str(root), root.name, "queue.sqlite", "--queue", "items", str(out), "--out")
        if state in LOST_MANIFEST and command != "repair":
            outcome = refused(argv, capsys, what, names,
                              f"the queue's database is unusable ({state}) while {ITEMS} items exist")
        else:
            outcome = judge(argv, capsys, what, names)
        lost = before - snapshot(root)
        if command == "remove" and outcome == "ok":
            lost = {p for p in lost if p.split("/")[0] != "2"}
        if lost:
            wrong(what, argv, f"{state}: item files disappeared: {sorted(lost)[:5]}", was=outcome)
        if state == "missing" and command not in CREATING and root.exists():
            wrong(what, argv, "a command that only reads created the queue folder", was=outcome)
        if file_before is not None and (not root.is_file() or root.read_bytes() != file_before):
            wrong(what, argv, "--queue named a file, and the file was changed", was=outcome)
        if command == "export" and (out.parent / f"{out.name}.partial").exists():
            wrong(what, argv, f"{state}: a failed export left {out.name}.partial", was=outcome)
        if command == "repair" and state not in ("missing", "empty folder", "a file"):
            if outcome != "ok":
                wrong(what, argv, f"queue repair could not restore a queue whose {state}", was=outcome)
            restored = _listed_ids(root, capsys)
            if restored != set(range(1, ITEMS + 1)):
                wrong(what, argv, f"after `queue repair` of a queue whose {state}, `queue list` shows items "
                                  f"{sorted(restored)}, not 1..{ITEMS}", was=outcome)

    run()


@pytest.mark.parametrize("role", ["image", "labels", "prediction"])
@pytest.mark.parametrize("kind", FILE_CLASSES)
def test_queue_add_of_bad_files(kind, role, inputs, tmp_path, capsys, home):
    """Missing, folder, named pipe (once a hang), empty or truncated: refused in one line naming it."""
    files = {"image": inputs["image"], "labels": inputs["labels"], "prediction": inputs["labels"]}
    files[role] = bad_file(kind, tmp_path / f"bad-{role}.tif", inputs["labels" if role != "image" else "image"]
                           .read_bytes())
    root = tmp_path / "queue"
    argv = ["queue", "add", "--queue", root, "--image", files["image"], "--labels", files["labels"],
            "--prediction", files["prediction"], "--kind", "ultrasound", "--organ", "heart"]
    refused(argv, capsys, "cli queue add", (files[role].name,), f"--{role} is {kind}")
    assert not snapshot(root), "nothing may be queued from a bad file"


#: Label values no model has: below 0, above any organ id, above uint16.
BAD_LABELS = (-1, 300, 4_000_000_000, 10)


@given(value=st.sampled_from(BAD_LABELS), frame=st.integers(0, 2), kind=st.sampled_from(("ct", "ultrasound")),
       with_model=st.booleans())
@examples(16)
def test_queue_add_refuses_labels_out_of_range(tmp_path_factory, capsys, home, value, frame, kind, with_model):
    folder = tmp_path_factory.mktemp("labels")
    image, labels = _frames(frame)
    labels = labels.astype(np.int64)
    labels[frame, 0, 0] = value
    labels = labels.astype(np.int16 if value == -1 else np.uint32 if value > 65535 else np.uint16)
    if kind == "ct":
        write_tiff(folder / "image.tif", (image.astype(np.int16) * 4 - 1000), (0.1, 0.1, 0.1))
        who = ["--condition", "native"] + (["--model", "mosnet-synthetic"] if with_model else [])
    else:
        write_array(folder / "image.tif", image)
        who = ["--organ", "heart"] + (["--model", "unet-heart-synthetic"] if with_model else [])
    write_array(folder / "labels.tif", labels)
    argv = ["queue", "add", "--queue", folder / "queue", "--image", folder / "image.tif", "--labels",
            folder / "labels.tif", "--kind", kind, *who]
    must_refuse = value < 0 or value > 65535 or (kind == "ct" and with_model)  # 10 and 300 > the 9 organ ids
    if must_refuse:
        refused(argv, capsys, "cli queue add labels", ("labels.tif", "--labels"), f"label {value} in a {kind} item")
    elif judge(argv, capsys, "cli queue add labels", ("labels.tif", "--labels")) == "ok":
        from napari_mousesegment.active.queue import Queue

        item = Queue(folder / "queue").items()[-1]
        assert int(item.labels().max()) == value, "a label was changed on the way into the queue"


@given(organ=st.one_of(st.sampled_from(("", " ", "kidneyz", "heart\n", "Heart", "liver")), st.text(max_size=12)),
       with_model=st.booleans())
@examples(16)
def test_queue_add_checks_organ_names(inputs, tmp_path_factory, capsys, home, organ, with_model):
    if "\x00" in organ:  # a command line cannot hold NUL
        return
    root = tmp_path_factory.mktemp("organ") / "queue"
    argv = ["queue", "add", "--queue", root, "--image", inputs["image"], "--labels", inputs["labels"],
            "--kind", "ultrasound", f"--organ={organ}"] + (["--model", "unet-heart-synthetic"] if with_model else [])
    names = ("--organ", "organ", "--model", "unet-heart-synthetic")
    if not organ.strip() or (with_model and organ.strip().lower() != "heart"):  # "Heart " may be normalised
        refused(argv, capsys, "cli queue add --organ", names, f"organ {organ!r} (model heart: {with_model})")
    elif judge(argv, capsys, "cli queue add --organ", names) == "ok":
        assert judge(["queue", "list", "--queue", root], capsys, "cli queue list", (str(root),)) == "ok"


@pytest.mark.parametrize("how", BROKEN_MODELS)
def test_queue_add_refuses_a_broken_model(how, inputs, tmp_path, capsys, home):
    """The issue: a model threshold of NaN was accepted, and every later round of its group failed."""
    model = broken_model("unet-heart-synthetic", how, tmp_path / "model")
    root = tmp_path / "queue"
    argv = ["queue", "add", "--queue", root, "--image", inputs["image"], "--labels", inputs["labels"],
            "--kind", "ultrasound", "--organ", "heart", "--model", model]
    names = (str(model), "config.json", "weights.safetensors", "--model")
    if how.startswith("weights"):  # queue add reads the config only; the worker meets the weights
        judge(argv, capsys, "cli queue add --model", names)
        return
    refused(argv, capsys, "cli queue add --model", names, f"a model folder with {how}")
    assert not snapshot(root), "nothing may be queued for a broken model"


#: What an image or labels file may hold instead of a (frames, y, x) grey stack.
CONTENTS = ("bool", "int8", "uint16", "float32", "float with NaN", "RGB frame", "2D frame", "4D", "one row",
            "empty mask", "shape mismatch", "float labels")


@pytest.mark.parametrize("content", CONTENTS)
def test_queue_add_of_odd_contents(content, tmp_path, capsys, home):
    image, labels = _frames(3)
    if content in ("bool", "int8", "uint16", "float32"):
        image = (image > 100) if content == "bool" else image.astype(content)
    elif content == "float with NaN":
        image = image.astype(np.float32)
        image[1, 2, 3] = np.nan
    elif content == "RGB frame":
        image, labels = np.stack([image[0]] * 3, -1), labels[0]
    elif content == "2D frame":
        image, labels = image[0], labels[0]
    elif content == "4D":
        image, labels = image[None], labels[None]
    elif content == "one row":
        image, labels = image[:, :1], labels[:, 4:5]
    elif content == "empty mask":
        labels = np.zeros_like(labels)
    elif content == "shape mismatch":
        labels = labels[:, :-1]
    elif content == "float labels":
        labels = labels.astype(np.float32) + 0.5
    write_array(tmp_path / "image.tif", image)
    write_array(tmp_path / "labels.tif", labels)
    argv = ["queue", "add", "--queue", tmp_path / "queue", "--image", tmp_path / "image.tif", "--labels",
            tmp_path / "labels.tif", "--kind", "ultrasound", "--organ", "heart"]
    names = ("image.tif", "labels.tif")
    if content in ("float with NaN", "empty mask", "shape mismatch", "float labels", "4D"):
        refused(argv, capsys, "cli queue add contents", names, f"an image or labels file holding {content}")
    elif judge(argv, capsys, "cli queue add contents", names) == "ok":
        from napari_mousesegment.active.queue import Queue

        item = Queue(tmp_path / "queue").items()[-1]
        assert item.image().shape == item.labels().shape == item.shape and item.image().ndim == 3


@given(text=st.one_of(st.sampled_from(("-1", "0", "99999", "9" * 30, "2", "nan", "1e3", "")), st.text(max_size=8)),
       command=st.sampled_from(("remove", "retry")))
@examples(16)
def test_queue_remove_and_retry_ids(template, tmp_path_factory, capsys, home, text, command):
    """Only ``queue remove`` of an existing id removes a folder: that one, nothing else."""
    if "\x00" in text:
        return
    root = tmp_path_factory.mktemp("ids") / "queue"
    shutil.copytree(template, root)
    before = snapshot(root)
    argv = ["queue", command, "--queue", root, "--", text]
    outcome = judge(argv, capsys, f"cli queue {command} id", ("--queue", str(root), "id", text or "''", "item"))
    lost = before - snapshot(root)
    if command == "remove" and outcome == "ok":
        gone = {p.split("/")[0] for p in lost}
        if gone != {str(int(text))}:
            wrong(f"cli queue {command} id", argv, f"removed item folders {sorted(gone)}", was=outcome)
    elif lost:
        wrong(f"cli queue {command} id", argv, f"item files disappeared: {sorted(lost)[:5]}", was=outcome)


@pytest.mark.parametrize("target", ["a file", "non-empty folder", "under a file", "inside the queue"])
def test_queue_export_targets(target, template, tmp_path, capsys, home):
    root = tmp_path / "queue"
    shutil.copytree(template, root)
    out = {"a file": tmp_path / "out.txt", "non-empty folder": tmp_path / "full",
           "under a file": tmp_path / "out.txt" / "ds", "inside the queue": root / "items"}[target]
    (tmp_path / "out.txt").write_text("keep me\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me\n")
    before = snapshot(root)
    argv = ["queue", "export", "--queue", root, "--out", out]
    if target == "under a file":
        judge(argv, capsys, "cli queue export --out", (str(out), "out.txt", "--out"))
    else:
        refused(argv, capsys, "cli queue export --out", (str(out), out.name, "--out"), f"--out is {target}")
    assert before <= snapshot(root), "export removed item files"
    assert (tmp_path / "out.txt").read_text() == "keep me\n" and (tmp_path / "full" / "mine.txt").exists()
    assert not list(tmp_path.glob("*.partial")), "a failed export left a .partial folder"


#: Worker option values: wrong, or at the edges (epochs that would train for hours are left out).
WORKER_VALUES = {
    "--epochs": ("0", "-1", "nan", "", "1.5", "1e3"),
    "--lr": ("nan", "inf", "-1", "0", "", "1e300"),
    "--guard": ("nan", "-inf", "inf", "-1", "2", ""),
    "--max-minutes": ("nan", "-1", "0", "inf", ""),
    "--replay": ("", "missing-folder", "a-file.txt"),
    "--device": ("cuda", "tpu", ""),
}


@given(option=st.sampled_from(sorted(WORKER_VALUES)), data=st.data())
@examples(24)
def test_worker_option_values(template, tmp_path_factory, capsys, home, option, data):
    value = data.draw(st.sampled_from(WORKER_VALUES[option]), label="value")
    root = tmp_path_factory.mktemp("worker") / "queue"
    shutil.copytree(template, root)
    (root.parent / "a-file.txt").write_text("x")
    if option == "--replay" and value:
        value = str(root.parent / value)
    before = snapshot(root)
    argv = ["worker", "--queue", root, "--once", *(["--device", "cpu"] if option != "--device" else []),
            f"{option}={value}"]
    judge(argv, capsys, "cli worker options", (option, value or "''", str(root)))
    assert before <= snapshot(root)


@pytest.mark.slow
def test_worker_sets_a_truncated_item_aside_and_trains_the_rest(tmp_path, capsys, home, warm):
    """The issue's worker death: a truncated items/N/image.tif. The worker ends cleanly, that item is
    failed with its reason, the others of its group are trained on, and no item folder is lost.
    A real round (one epoch, publish, promote) takes ~20 s on a busy 2-core machine: 120 s is a hang."""
    from napari_mousesegment.active.queue import Queue

    root = tmp_path / "queue"
    queue = Queue(root)
    for seed in range(3):
        image, labels = _frames(seed, n=4)
        queue.add(image, labels, "ultrasound", organ="heart", model="unet-heart-synthetic")
    path = root / "items" / "2" / "image.tif"
    path.write_bytes(path.read_bytes()[:200])
    before = snapshot(root)
    argv = ["worker", "--queue", root, "--once", "--epochs", "1", "--device", "cpu"]
    outcome = judge(argv, capsys, "cli worker items", (str(root), "image.tif"), timeout=120)
    assert before <= snapshot(root)
    states = {i.id: (i.state, i.reason) for i in Queue(root).items()}
    if states[2][0] != "failed" or not states[2][1]:
        wrong("cli worker items", argv, f"the truncated item is {states[2]}, not failed with a reason", was=outcome)
    if {states[1][0], states[3][0]} != {"used"}:
        wrong("cli worker items", argv, f"the good items of the group were not trained on: {states}", was=outcome)
