"""The clients of a lab server over real HTTP: the CLI's ``--server``, the outbox that loses nothing
(server down, ``kill -9`` mid-upload), many annotators at once, refusals in one line, and a round
whose promoted version a client pulls and predicts with exactly as the server does."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from napari_mousesegment.active.queue import Queue
from napari_mousesegment.cli import main
from napari_mousesegment.io.tiff import write_array
from napari_mousesegment.remote.client import Client, ServerError, Unreachable, token_from
from napari_mousesegment.remote.outbox import Outbox
from napari_mousesegment.remote.protocol import HASH_HEADER, TOKEN_ENV, VERSION_HEADER

from .conftest import make_server

BASE = "unet-heart-synthetic"


def _correction(seed: int, frames: int = 35, shape: tuple[int, int] = (32, 40)) -> tuple[np.ndarray, np.ndarray]:
    """A tiny ultrasound correction, different for every seed."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (frames, *shape), dtype=np.uint8)
    labels = np.zeros(image.shape, np.uint16)
    y, x = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
    labels[::3, y:y + 8, x:x + 8] = 1
    return image, labels


def _client(server, user: str, **kwargs) -> Client:
    return Client(server.url, token_from(server.tokens[user]), **kwargs)


def _send(client: Client, seed: int, source: str) -> dict:
    image, labels = _correction(seed)
    return client.add(image, labels, kind="ultrasound", organ="heart", model=BASE, source=source)


def _same_arrays(item, seed: int) -> bool:
    image, labels = _correction(seed)
    return np.array_equal(item.image(), image) and np.array_equal(item.labels(), labels)


def _add_args(server, tmp_path, seed: int = 0, user: str | None = "ann1") -> list[str]:
    """``queue add --server`` of a correction written to TIFFs."""
    image, labels = _correction(seed)
    write_array(tmp_path / f"image{seed}.tif", image)
    write_array(tmp_path / f"labels{seed}.tif", labels)
    token = ["--token-file", str(server.tokens[user])] if user else []
    return ["queue", "add", "--server", server.url, *token, "--image", str(tmp_path / f"image{seed}.tif"),
            "--labels", str(tmp_path / f"labels{seed}.tif"), "--kind", "ultrasound", "--organ", "heart",
            "--model", BASE]


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.slow
def test_two_annotators_send_50_corrections_each_at_once(lab_server):
    def send(user: str) -> list[dict]:
        with _client(lab_server, user) as client:
            return [_send(client, {"ann1": 0, "ann2": 1000}[user] + i, f"{user}-{i}")["item"] for i in range(50)]

    with ThreadPoolExecutor(2) as pool:
        answers = dict(zip(("ann1", "ann2"), pool.map(send, ("ann1", "ann2"))))
    with _client(lab_server, "boss") as boss:
        items = boss.items()
    assert len(items) == 100 and len({i["id"] for i in items}) == 100
    assert Counter(i["author"] for i in items) == {"ann1": 50, "ann2": 50}
    assert all(i["source"].startswith(i["author"] + "-") for i in items)
    assert {a["id"] for user in answers for a in answers[user]} == {i["id"] for i in items}
    assert Outbox(lab_server.url).count() == 0


@pytest.mark.slow
def test_kill_9_mid_upload_loses_nothing_and_duplicates_nothing(lab_server, capsys):
    n = 40
    delivered: dict[int, dict] = {}  # correction -> the item the server confirmed
    failures: list[Exception] = []

    def send() -> None:
        with _client(lab_server, "ann1", timeout=10) as client:
            for k in range(n):
                try:
                    delivered[k] = _send(client, k, f"c{k}")["item"]
                except (Unreachable, ServerError) as exc:
                    failures.append(exc)

    queue = Queue(lab_server.queue_dir)
    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # best: kill once the server has stored an item it has not confirmed
        if len(delivered) >= 8 and (queue.status()["items"] > len(delivered) or time.monotonic() > deadline - 50):
            break
        time.sleep(0.001)
    lab_server.kill()  # SIGKILL in the middle of an upload
    sender.join(120)
    assert 8 <= len(delivered) < n and failures and all(isinstance(e, Unreachable) for e in failures)
    assert Outbox(lab_server.url).count() == n - len(delivered)  # what did not arrive waits on this disk

    lab_server.start()
    held = {item.id: item for item in queue.items()}
    for k, item in delivered.items():  # every confirmed upload is there, whole
        assert held[item["id"]].content_hash == item["content_hash"] and _same_arrays(held[item["id"]], k)
    for item in held.values():  # and nothing is partial, also an upload cut off mid-way
        assert _same_arrays(item, int(item.source[1:]))

    capsys.readouterr()
    flush = ["queue", "flush", "--server", lab_server.url, "--token-file", str(lab_server.tokens["ann1"])]
    assert main(flush) == 0
    assert "still waiting 0" in capsys.readouterr().out
    items = queue.items()
    assert len(items) == n and sorted(int(i.source[1:]) for i in items) == list(range(n))  # exact: no duplicate
    assert all(_same_arrays(i, int(i.source[1:])) for i in items)
    assert Outbox(lab_server.url).count() == 0


@pytest.mark.slow
def test_queue_add_while_the_server_is_down_waits_in_the_outbox_and_arrives_once(lab_server, tmp_path, capsys):
    add = _add_args(lab_server, tmp_path)
    flush = ["queue", "flush", "--server", lab_server.url, "--token-file", str(lab_server.tokens["ann1"])]
    lab_server.kill()
    assert main(add) == 3
    err = _one_line(capsys.readouterr().err)
    assert "cannot be reached" in err and "outbox (1 waiting)" in err and "queue flush" in err
    assert main(flush) == 3 and "still waiting 1" in capsys.readouterr().out  # still down: kept

    lab_server.start()
    assert main(flush) == 0
    assert "sent 1, failed 0, still waiting 0" in capsys.readouterr().out
    assert main(flush) == 0 and "sent 0" in capsys.readouterr().out
    assert main(add) == 0 and "sent before: not added twice" in capsys.readouterr().out  # the same correction again
    items = Queue(lab_server.queue_dir).items()
    assert len(items) == 1 and items[0].author == "ann1" and _same_arrays(items[0], 0)


def test_refusals_are_one_line_naming_the_status_and_never_the_token(lab_server, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    secret = lab_server.tokens["ann1"].read_text().strip()
    assert main(_add_args(lab_server, tmp_path, user=None)) != 0  # no token at all
    assert "401" in _one_line(capsys.readouterr().err)
    (tmp_path / "wrong.token").write_text("not-a-valid-token\n")
    assert main(["queue", "status", "--server", lab_server.url, "--token-file", str(tmp_path / "wrong.token")]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "server refused (401)" in err and "not-a-valid-token" not in err
    assert main(["models", "promote", BASE, "0", "--server", lab_server.url,
                 "--token-file", str(lab_server.tokens["ann1"])]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "server refused (403)" in err and "maintainer" in err and secret not in err
    bad_model = _add_args(lab_server, tmp_path, seed=1)
    bad_model[bad_model.index("--model") + 1] = "no-such-model"
    assert main(bad_model) == 2
    err = _one_line(capsys.readouterr().err)
    assert "server refused (400)" in err and "no-such-model" in err and "refused" in err
    outbox = Outbox(lab_server.url)
    assert outbox.count() == 0 and len(outbox.refused()) == 1  # set aside, not retried, not lost
    assert "no-such-model" in (outbox.refused()[0].folder / "reason.txt").read_text()
    monkeypatch.setenv(TOKEN_ENV, secret)  # the token from the environment instead of a file
    assert main(["queue", "list", "--server", lab_server.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_status_and_list_json_have_the_local_keys(lab_server, tmp_path, capsys):
    server = ["--server", lab_server.url, "--token-file", str(lab_server.tokens["ann2"])]
    assert main(_add_args(lab_server, tmp_path, user="ann2")) == 0
    assert "holds item 1 (new)" in capsys.readouterr().out
    local = Queue(tmp_path / "local")
    local_item = local.add(*_correction(0), "ultrasound", organ="heart")
    assert main(["queue", "status", *server, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status.keys() == local.status().keys() and status["items"] == status["pending"] == 1
    assert main(["queue", "list", *server, "--json"]) == 0
    [item] = json.loads(capsys.readouterr().out)
    assert item.keys() == local_item.as_json().keys() and item["author"] == "ann2"
    assert main(["queue", "list", *server]) == 0 and "by ann2" in capsys.readouterr().out
    assert main(["queue", "remove", "1", *server]) == 2 and "403" in capsys.readouterr().err
    boss = ["--server", lab_server.url, "--token-file", str(lab_server.tokens["boss"])]
    assert main(["queue", "remove", "1", *boss]) == 0 and Queue(lab_server.queue_dir).items() == []


def test_oversize_upload_is_set_aside_with_413(tmp_path, monkeypatch):
    monkeypatch.setenv("MOUSESEGMENT_OUTBOX", str(tmp_path / "outbox"))
    server = make_server(tmp_path / "lab", extra=("--max-upload-mb", "0.1"))
    try:
        with _client(server, "ann1") as client:
            with pytest.raises(ServerError, match=r"server refused \(413\)"):
                client.add(*_correction(0, shape=(128, 160)), kind="ultrasound", organ="heart")
            assert client.outbox.count() == 0 and len(client.outbox.refused()) == 1
            assert _send(client, 1, "small")["created"]  # a small one still goes through
    finally:
        server.stop()


def test_the_outbox_keeps_one_entry_per_correction_in_order(tmp_path):
    outbox = Outbox("http://gpu-box:8765/", root=tmp_path)
    files = {"image": b"one", "labels": b"two", "prediction": None}
    first = outbox.put({"kind": "ultrasound", "organ": "heart"}, files)
    assert outbox.put({"kind": "ultrasound", "organ": "heart", "model": None}, files) == first  # same content
    second = outbox.put({"kind": "ultrasound", "organ": "liver"}, files)
    (outbox.folder / ".tmp-crashed").mkdir()  # a write cut off by a crash is no entry
    assert [e.hash for e in outbox.pending()] == [first, second]
    assert outbox.pending()[0].files() == files
    assert Outbox("http://GPU-box:8765", root=tmp_path).folder == outbox.folder
    assert Outbox("http://gpu-box:8766", root=tmp_path).folder != outbox.folder
    (outbox.folder / first / "labels.tif").write_bytes(b"twO")  # damaged on this disk: never sent as it is

    class Recorder:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def upload(self, meta, files, digest):
            self.sent.append(digest)
            return {"item": {}, "created": True}

    recorder = Recorder()
    assert outbox.send(recorder) == (1, 1) and recorder.sent == [second]
    assert outbox.count() == 0 and [e.hash for e in outbox.refused()] == [first]
    meta = {"kind": "ct", "condition": "native", "spacing": (0.1, 0.1, 0.1)}
    third = outbox.put(meta, files)
    assert outbox.pending()[0].meta["spacing"] == [0.1, 0.1, 0.1]
    outbox.deliver(recorder, third)  # what a flush elsewhere on this machine does meanwhile ...
    outbox.deliver(recorder, third, meta, files)  # ... does not trouble the sender that put it
    assert recorder.sent[-2:] == [third, third] and outbox.count() == 0


def _mock_client(handler, token: str = "s3cret-token") -> Client:
    client = Client("http://lab.example:8765", token)
    client._http = httpx.Client(base_url=client._http.base_url, headers=client._http.headers,
                                transport=httpx.MockTransport(handler))
    return client


def test_a_pull_that_does_not_match_its_sha256_installs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "home"))
    client = _mock_client(lambda request: httpx.Response(
        200, content=b"PK not really a zip", headers={HASH_HEADER: "0" * 64, VERSION_HEADER: "3"}))
    with pytest.raises(ValueError, match="does not match the server's sha256"):
        client.pull("heart-lab")
    assert not (tmp_path / "home" / "models" / "heart-lab").exists()


def test_server_details_and_dropped_connections_become_one_line_without_the_token():
    echo = _mock_client(lambda request: httpx.Response(
        500, json={"detail": f"boom {request.headers['authorization']}\nsecond line"}))
    with pytest.raises(ServerError) as caught:
        echo.status()
    assert str(caught.value) == "server failed (500): boom Bearer *** second line" and caught.value.status == 500

    def drop(request):
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    with pytest.raises(Unreachable, match="cannot be reached"):
        _mock_client(drop).items()
    with pytest.raises(ValueError, match="--server ftp://x: not a server URL"):
        Client("ftp://x", "t")
    with pytest.raises(ValueError, match="no user name or password") as caught:
        Client("http://me:pw@x", "t")
    assert "pw" not in str(caught.value)


def test_pull_installs_the_current_version_and_replaces_only_a_pulled_copy(lab_server, capsys):
    from napari_mousesegment.models.folder import copy_folder
    from napari_mousesegment.store.registry import BUILTIN, home
    from napari_mousesegment.store.transfer import import_model

    copy_folder(BUILTIN / BASE, lab_server.home / "models" / "heart-lab", force=False)  # a model of the server's
    pull = ["models", "pull", "heart-lab", "--server", lab_server.url, "--token-file", str(lab_server.tokens["ann1"])]
    import_model(BUILTIN / BASE, "heart-lab")  # made here, not pulled: never replaced by a pull
    assert main(pull) == 2 and "not a copy pulled" in _one_line(capsys.readouterr().err)
    main(["models", "remove", "heart-lab"])
    for _ in range(2):  # the second pull replaces the first
        assert main(pull) == 0
        assert f"installed -> {home() / 'heart-lab'}" in capsys.readouterr().out
    assert json.loads((home() / "heart-lab" / "config.json").read_text())["pulled_from"] == lab_server.url
    assert main(["models", "pull", BASE, *pull[3:]]) == 2 and "built in here too" in capsys.readouterr().err
    assert main(["models", "pull", "no-such-model", *pull[3:]]) == 2
    assert "server refused (404): no model 'no-such-model'" in _one_line(capsys.readouterr().err)


@pytest.mark.slow
def test_a_round_from_two_annotators_is_promoted_pulled_and_predicts_as_on_the_server(tmp_path, monkeypatch,
                                                                                      capsys):
    from napari_mousesegment.data.phantom_us import ultrasound_series
    from napari_mousesegment.inference.ultrasound import segment_frames
    from napari_mousesegment.store.load import load_unet

    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "client-home"))
    monkeypatch.setenv("MOUSESEGMENT_OUTBOX", str(tmp_path / "client-outbox"))
    server = make_server(tmp_path / "lab", worker=True, extra=("--epochs", "10"))  # serve --epochs: short rounds
    name = f"{BASE}-lab"
    try:
        series = {user: ultrasound_series(seed=seed, n_frames=6) for user, seed in (("ann1", 301), ("ann2", 302))}
        for user, s in series.items():  # both annotators, one right after the other: one round takes both
            with _client(server, user) as client:
                client.add(s.frames, s.labels["heart"], kind="ultrasound", organ="heart", model=BASE,
                           source=f"{user}.tif")
        boss = ["--server", server.url, "--token-file", str(server.tokens["boss"])]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with _client(server, "ann1") as client:
                status = client.status()
            if status["used"] == 2 and status["last_round"]["state"] == "done":
                assert status["last_round"]["epochs"] == 10  # the server's --epochs reached its worker
                break
            assert status["last_round"] is None or status["last_round"]["state"] in ("running", "done"), status
            time.sleep(2)
        capsys.readouterr()
        assert main(["models", "versions", name, "--json", *boss]) == 0
        versions = json.loads(capsys.readouterr().out)
        newest = versions[-1]
        assert int(newest["version"]) >= 1 and sorted(i for v in versions for i in v["items"]) == [1, 2]
        assert main(["models", "promote", name, newest["version"], *boss]) == 0
        assert "promoted by boss" in capsys.readouterr().out
        assert main(["models", "pull", name, *boss]) == 0
        assert f"version {newest['version']}" in capsys.readouterr().out

        frames = np.concatenate([s.frames for s in series.values()])
        pulled, _, meta = load_unet(name)  # this machine's copy
        served, _, served_meta = load_unet(server.home / "models" / name)  # the server's current folder
        assert meta["version"] == served_meta["version"] == newest["version"]
        here, there = segment_frames(pulled, frames)[1], segment_frames(served, frames)[1]
        assert here.any() and np.array_equal(here, there)
    finally:
        server.stop()


def test_a_server_with_a_full_disk_keeps_the_correction_in_the_outbox(tmp_path, monkeypatch):
    """507 (no room on the server) is not the correction's fault: it stays waiting, not refused."""
    monkeypatch.setenv("MOUSESEGMENT_OUTBOX", str(tmp_path / "outbox"))
    client = _mock_client(lambda request: httpx.Response(507, json={"detail": "no space left on the server"}))
    image = np.zeros((3, 8, 8), np.uint8)
    labels = image.copy()
    labels[1, 2:5, 2:5] = 1
    with pytest.raises(ServerError, match="507"):
        client.add(image, labels, kind="ultrasound", organ="heart")
    assert client.outbox.count() == 1 and not client.outbox.refused()
