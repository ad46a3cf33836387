"""The lab server over real HTTP: tokens and roles, the checks at the door, idempotent uploads,
the same JSON as the local CLI, and a worker that dies mid-round without taking the server down."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from napari_mousesegment.active.queue import Queue
from napari_mousesegment.cli import main
from napari_mousesegment.io.tiff import write_array
from napari_mousesegment.remote.protocol import API, HASH_HEADER, VERSION_HEADER, content_hash

from .conftest import cli, free_port, make_server

BASE = "unet-heart-synthetic"
#: Every route but health, with a body where it needs one: all of them refuse a request without a valid token.
ROUTES = [("GET", "/queue"), ("GET", "/queue/items"), ("POST", "/queue/items"), ("DELETE", "/queue/items/1"),
          ("GET", "/rounds"), ("POST", "/rounds"), ("GET", "/models"), ("GET", f"/models/{BASE}/versions"),
          ("POST", f"/models/{BASE}/promote"), ("POST", f"/models/{BASE}/rollback"),
          ("GET", f"/models/{BASE}/current")]


def _token(server, name: str) -> str:
    return server.tokens[name].read_text().strip()


def _call(server, method: str, route: str, token: str | None = None, **kwargs) -> httpx.Response:
    headers = {**kwargs.pop("headers", {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    return httpx.request(method, f"{server.url}{API}{route}", headers=headers, timeout=60, **kwargs)


def _tiff(tmp_path, array: np.ndarray) -> bytes:
    """The bytes of a TIFF as the client writes it (io.tiff.write_array)."""
    path = tmp_path / f"t{threading.get_ident()}-{time.monotonic_ns()}.tif"
    write_array(path, array)
    return path.read_bytes()


def _correction(tmp_path, seed: int = 0, frames: int = 4, **meta) -> tuple[dict, dict]:
    """A small ultrasound correction: (meta, files) as a client sends them."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (frames, 24, 32), dtype=np.uint8)
    labels = np.zeros(image.shape, np.uint8)
    labels[1, 5:12, 6:14] = 1
    labels[-1, 10:20, 10:25] = 1
    meta = {"kind": "ultrasound", "organ": "heart", "model": BASE, "model_version": "1", **meta}
    return meta, {"image": _tiff(tmp_path, image), "labels": _tiff(tmp_path, labels), "prediction": None}


def _upload(server, user: str, meta: dict, files: dict, headers: dict | None = None) -> httpx.Response:
    parts = {name: (f"{name}.tif", data, "image/tiff") for name, data in files.items() if data is not None}
    return _call(server, "POST", "/queue/items", _token(server, user), data={"meta": json.dumps(meta)},
                 files=parts, headers=headers or {})


def test_health_is_open_and_every_other_route_needs_a_valid_token(lab_server):
    health = _call(lab_server, "GET", "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["worker"] == "disabled"
    for method, route in ROUTES:
        assert _call(lab_server, method, route).status_code == 401, (method, route)
        refused = _call(lab_server, method, route, "ann1.not-the-secret")
        assert refused.status_code == 401, (method, route)
        assert "not-the-secret" not in refused.text
    ann2 = _token(lab_server, "ann2")
    assert _call(lab_server, "GET", "/queue", ann2).status_code == 200
    done = cli("users", "revoke", "ann2", "--queue", str(lab_server.queue_dir), env=lab_server.env)
    assert done.returncode == 0, done.stderr
    for method, route in ROUTES:  # the running server refuses it at once, though it had checked it before
        refused = _call(lab_server, method, route, ann2)
        assert refused.status_code == 401 and ann2 not in refused.text, (method, route)
    assert _call(lab_server, "GET", "/queue", _token(lab_server, "ann1")).status_code == 200


def test_annotators_may_not_do_what_maintainers_do(lab_server, tmp_path):
    ann, boss = _token(lab_server, "ann1"), _token(lab_server, "boss")
    assert _upload(lab_server, "ann1", *_correction(tmp_path)).status_code == 201
    for method, route, body in (("POST", f"/models/{BASE}/promote", {"version": "0"}),
                                ("POST", f"/models/{BASE}/rollback", None), ("DELETE", "/queue/items/1", None),
                                ("POST", "/rounds", None)):
        answer = _call(lab_server, method, route, ann, json=body)
        assert answer.status_code == 403 and "maintainer" in answer.json()["detail"], route
    assert len(Queue(lab_server.queue_dir).items()) == 1  # the refused delete changed nothing
    assert _call(lab_server, "DELETE", "/queue/items/1", boss).json() == {"removed": 1}
    assert Queue(lab_server.queue_dir).items() == []
    assert _call(lab_server, "DELETE", "/queue/items/1", boss).status_code == 404
    assert _call(lab_server, "POST", "/rounds", boss).status_code == 409  # allowed, but --no-worker
    assert _call(lab_server, "POST", f"/models/{BASE}/promote", boss, json={"version": "7"}).status_code == 404


def test_promotions_and_rollbacks_record_who_and_the_current_model_travels_as_a_checked_zip(lab_server,
                                                                                            monkeypatch):
    import io
    import zipfile

    from napari_mousesegment.models.folder import sha256
    from napari_mousesegment.store import versions
    from napari_mousesegment.store.load import load_unet

    name, boss = f"{BASE}-lab", _token(lab_server, "boss")
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(lab_server.home))  # act as a round on the server would
    versions.ensure_base(name, BASE)
    model, config, _ = load_unet(name)
    assert versions.publish(name, model, config, "0", [], {}) == "1"

    promoted = _call(lab_server, "POST", f"/models/{name}/promote", boss, json={"version": "1"})
    assert promoted.status_code == 200 and promoted.json() == {"name": name, "version": "1", "by": "boss"}
    rows = _call(lab_server, "GET", f"/models/{name}/versions", _token(lab_server, "ann1")).json()
    assert rows[1]["current"] and rows[1]["promoted_by"] == "boss" and "promoted_by" not in rows[0]
    back = _call(lab_server, "POST", f"/models/{name}/rollback", boss)
    assert back.json() == {"name": name, "version": "0", "by": "boss"}
    assert versions.versions(name)[0]["rolled_back_by"] == "boss" and versions.versions(name)[0]["current"]

    current = _call(lab_server, "GET", f"/models/{name}/current", _token(lab_server, "ann1"))
    assert current.status_code == 200 and current.headers[VERSION_HEADER] == "0"
    assert current.headers[HASH_HEADER] == __import__("hashlib").sha256(current.content).hexdigest()
    with zipfile.ZipFile(io.BytesIO(current.content)) as zf:
        assert {"config.json", "weights.safetensors"} <= set(zf.namelist())
        assert zf.read("weights.safetensors") == (lab_server.home / "models" / name / "weights.safetensors").read_bytes()
    assert sha256(lab_server.home / "models" / name / "weights.safetensors") == json.loads(
        zipfile.ZipFile(io.BytesIO(current.content)).read("config.json"))["sha256"]
    for missing in ("no-such-model", "..", "a.b%2F..%2Fc"):
        assert _call(lab_server, "GET", f"/models/{missing}/current", boss).status_code in (400, 404), missing


def test_an_upload_over_the_limit_gives_413_by_its_length_or_by_what_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "client-home"))
    server = make_server(tmp_path / "lab", extra=("--max-upload-mb", "1"))
    try:
        noise = np.random.default_rng(0).integers(0, 255, (30, 256, 280), dtype=np.uint8)  # 2 MB, incompressible
        labels = np.zeros(noise.shape, np.uint8)
        labels[3, 10:20, 10:20] = 1
        meta = {"kind": "ultrasound", "organ": "heart"}
        files = {"image": _tiff(tmp_path, noise), "labels": _tiff(tmp_path, labels)}
        big = _upload(server, "ann1", meta, files)
        assert big.status_code == 413 and "limit of 1 MB" in big.json()["detail"]

        def chunks():  # no Content-Length: the server counts what it reads
            yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="image.tif"\r\n\r\n'
            yield b"x" * 2**19
            yield b"x" * 2**19
            yield b"x" * 2**19

        unsized = _call(server, "POST", "/queue/items", _token(server, "ann1"), content=chunks(),
                        headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert unsized.status_code == 413
        small = _upload(server, "ann1", *_correction(tmp_path))  # the server goes on
        assert small.status_code == 201 and Queue(server.queue_dir).status()["items"] == 1
    finally:
        server.stop()


def test_bad_uploads_give_400_naming_the_field_and_the_problem_and_queue_nothing(lab_server, tmp_path):
    meta, files = _correction(tmp_path)
    cases = {
        "labels: not a readable TIFF": (meta, {**files, "labels": b"II*\x00 damaged beyond repair"}),
        "image: not a readable TIFF": (meta, {**files, "image": b"not a tiff at all"}),
        "labels: frames of shape": (meta, {**files, "labels": _tiff(tmp_path, np.ones((4, 20, 32), np.uint8))}),
        "labels of shape (3, 24, 32) do not match": (meta, {**files, "labels": _tiff(tmp_path, np.ones((3, 24, 32),
                                                                                                  np.uint8))}),
        "labels must be integers": (meta, {**files, "labels": _tiff(tmp_path, np.ones((4, 24, 32), np.float32))}),
        "meta.kind": ({**meta, "kind": "mri"}, files),
        "model name": ({**meta, "model": "../../etc/passwd"}, files),
        "no model 'nope' on this server": ({**meta, "model": "nope"}, files),
        "need a mosnet model": ({**meta, "kind": "ct", "organ": None, "condition": "native",
                                  "spacing": [0.1, 0.1, 0.1]}, files),
        "labels: missing": (meta, {**files, "labels": None}),
    }
    for problem, (bad_meta, bad_files) in cases.items():
        answer = _upload(lab_server, "ann1", bad_meta, bad_files)
        assert answer.status_code == 400 and problem in answer.json()["detail"], (problem, answer.text)
        assert str(lab_server.queue_dir) not in answer.json()["detail"]
    no_meta = _call(lab_server, "POST", "/queue/items", _token(lab_server, "ann1"),
                    files={"image": ("image.tif", files["image"])})
    assert no_meta.status_code == 400 and "meta: missing" in no_meta.json()["detail"]
    assert Queue(lab_server.queue_dir).status()["items"] == 0
    assert list((lab_server.queue_dir / "tmp").iterdir()) == []  # nothing half-written left behind


def test_the_same_correction_sent_twice_or_at_once_is_one_item_with_its_author(lab_server, tmp_path):
    meta, files = _correction(tmp_path, seed=1)
    first = _upload(lab_server, "ann1", meta, files)
    assert first.status_code == 201 and first.json()["created"] is True
    item = first.json()["item"]
    assert item["author"] == "ann1" and item["content_hash"] == content_hash(meta, files)
    again = _upload(lab_server, "ann2", meta, files, headers={HASH_HEADER: content_hash(meta, files)})
    assert again.status_code == 200 and again.json() == {"item": item, "created": False}
    lied = _upload(lab_server, "ann1", meta, files, headers={HASH_HEADER: "0" * 64})
    assert lied.status_code == 400 and "content_hash" in lied.json()["detail"]

    meta2, files2 = _correction(tmp_path, seed=2)
    start, answers = threading.Barrier(2), {}

    def send(user):
        start.wait()
        answers[user] = _upload(lab_server, user, meta2, files2)

    threads = [threading.Thread(target=send, args=(u,)) for u in ("ann1", "ann2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers.values()) == [200, 201]
    assert len({a.json()["item"]["id"] for a in answers.values()}) == 1
    items = _call(lab_server, "GET", "/queue/items", _token(lab_server, "ann2")).json()
    assert len(items) == 2 and items[0]["author"] == "ann1" and items[1]["author"] in ("ann1", "ann2")
    assert sorted(p.name for p in (lab_server.queue_dir / "items").iterdir()) == ["1", "2"]


def test_queue_and_models_answer_what_the_local_cli_prints(lab_server, tmp_path):
    assert _upload(lab_server, "ann1", *_correction(tmp_path, seed=3)).status_code == 201
    ann = _token(lab_server, "ann1")
    for route, args in (("/queue", ("queue", "status", "--json", "--queue", str(lab_server.queue_dir))),
                        ("/queue/items", ("queue", "list", "--json", "--queue", str(lab_server.queue_dir))),
                        ("/models", ("models", "list", "--json"))):
        local = cli(*args, env=lab_server.env)
        assert local.returncode == 0, local.stderr
        assert _call(lab_server, "GET", route, ann).json() == json.loads(local.stdout), route
    assert set(_call(lab_server, "GET", "/queue", ann).json()) == {"items", "pending", "used", "failed",
                                                                   "failed_items", "last_round"}
    assert _call(lab_server, "GET", "/queue/items?state=nope", ann).status_code == 400


def test_users_add_prints_the_token_once_on_its_last_line_and_it_is_never_listed_or_logged(lab_server, tmp_path):
    done = cli("users", "add", "carol", "--role", "annotator", "--queue", str(lab_server.queue_dir),
               env=lab_server.env)
    assert done.returncode == 0, done.stderr
    *words, token = done.stdout.strip().splitlines()
    assert re.fullmatch(r"carol\.[A-Za-z0-9_-]{40,}", token) and all(token not in w for w in words)
    secret = token.split(".", 1)[1]
    assert _call(lab_server, "GET", "/queue", token).status_code == 200
    assert _call(lab_server, "GET", "/queue", token + "x").status_code == 401
    assert _upload(lab_server, "ann1", *_correction(tmp_path, seed=4)).status_code == 201
    listed = cli("users", "list", "--queue", str(lab_server.queue_dir), env=lab_server.env).stdout
    as_json = json.loads(cli("users", "list", "--json", "--queue", str(lab_server.queue_dir)).stdout)
    assert [u["name"] for u in as_json] == ["ann1", "ann2", "boss", "carol"] and "carol" in listed
    assert {u["role"] for u in as_json} == {"annotator", "maintainer"}
    assert secret not in listed and secret not in json.dumps(as_json)
    assert secret.encode() not in (lab_server.queue_dir / "users.sqlite").read_bytes()  # only a salted hash
    twice = cli("users", "add", "carol", "--role", "maintainer", "--queue", str(lab_server.queue_dir))
    assert twice.returncode == 2 and "exists" in twice.stderr
    log = lab_server.log()
    assert "GET /api/v1/queue" in log  # requests are logged, tokens never
    for name in ("ann1", "ann2", "boss"):
        assert _token(lab_server, name).split(".", 1)[1] not in log
    assert secret not in log


def test_tls_needs_both_files(tmp_path, capsys):
    assert main(["serve", "--queue", str(tmp_path / "q"), "--tls-cert", str(tmp_path / "c.pem")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--tls-cert and --tls-key go together" in err


@pytest.mark.parametrize("epochs", ["0", "-3"])
def test_serve_refuses_rounds_without_epochs(tmp_path, capsys, epochs):
    assert main(["serve", "--queue", str(tmp_path / "q"), "--epochs", epochs]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--epochs: {epochs} is not 1 to 100000" in err


def test_the_worker_child_gets_the_servers_epochs(tmp_path):
    from napari_mousesegment.server.supervisor import worker_command

    assert worker_command(tmp_path, "cpu", 12)[-2:] == ["--epochs", "12"]
    assert "--epochs" not in worker_command(tmp_path, "cpu")  # the worker's own default


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificate")
def test_tls_serves_https_with_the_given_certificate(tmp_path):
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    port = free_port()
    env = {**os.environ, "MOUSESEGMENT_HOME": str(tmp_path / "home")}
    process = subprocess.Popen([sys.executable, "-m", "napari_mousesegment.cli", "serve", "--queue",
                                str(tmp_path / "q"), "--port", str(port), "--no-worker", "--tls-cert", str(cert),
                                "--tls-key", str(key)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{port}{API}/health"
        answer = _wait("the https server", lambda: _get_or_none(url, trusted), timeout=60)
        assert answer.json()["status"] == "ok"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}{API}/health", timeout=5).raise_for_status()  # no plain HTTP
    finally:
        process.terminate()
        process.wait(30)


def _get_or_none(url: str, verify) -> httpx.Response | None:
    try:
        return httpx.get(url, verify=verify, timeout=2)
    except httpx.ConnectError:
        return None


def test_an_old_queue_file_gains_the_new_columns_and_keeps_its_items(tmp_path):
    root = tmp_path / "q"
    root.mkdir()
    with sqlite3.connect(root / "queue.sqlite") as db:  # the schema before the lab server
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, organ TEXT,"
                   " condition TEXT, model TEXT, model_version TEXT, shape TEXT NOT NULL, touched TEXT NOT NULL,"
                   " state TEXT NOT NULL DEFAULT 'pending', used_in TEXT NOT NULL DEFAULT '[]',"
                   " created TEXT NOT NULL, source TEXT, spacing TEXT)")
        db.execute("INSERT INTO items (kind, organ, shape, touched, created) VALUES ('ultrasound', 'heart',"
                   " '[4, 24, 32]', '[1]', 'then')")
    queue = Queue(root)
    [old] = queue.items()
    assert old.organ == "heart" and old.author is None and old.content_hash is None
    image, labels = np.zeros((4, 8, 8), np.uint8), np.zeros((4, 8, 8), np.uint8)
    labels[1, 2:4, 2:4] = 1
    item, created = queue.add_once(image, labels, "ultrasound", organ="heart", author="ann1", content_hash="h")
    assert created and item.author == "ann1" and Queue(root).add_once(image, labels, "ultrasound", organ="heart",
                                                                       content_hash="h") == (item, False)
    assert queue.add(image, labels, "ultrasound", organ="heart").id == 3  # no hash: always a new item


def _worker_child(server):
    import psutil

    for child in psutil.Process(server.process.pid).children(recursive=True):
        if "worker" in child.cmdline():
            return child
    return None


def _wait(what, condition, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_worker_killed_mid_round_leaves_the_server_up_with_the_last_good_version(tmp_path, monkeypatch):
    from napari_mousesegment.data.phantom_us import ultrasound_series

    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "client-home"))
    server = make_server(tmp_path / "lab", worker=True)
    try:
        ann, boss = _token(server, "ann1"), _token(server, "boss")
        assert _call(server, "GET", "/health").json()["worker"] == "running"
        for seed in (5, 6):
            series = ultrasound_series(seed, n_frames=35, frame_shape=(64, 80))
            meta = {"kind": "ultrasound", "organ": "heart", "model": BASE}
            files = {"image": _tiff(tmp_path, series.frames), "labels": _tiff(tmp_path, series.labels["heart"])}
            assert _upload(server, "ann1", meta, files).status_code == 201
        assert _call(server, "POST", "/rounds", boss).status_code == 202
        running = _wait("a round in training", lambda: [r for r in _call(server, "GET", "/rounds", ann).json()
                                                        if r["state"] == "running" and (r["epoch"] or 0) >= 1])
        worker = _worker_child(server)
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)

        assert _call(server, "GET", "/health").status_code == 200  # the server is still up
        rounds = _wait("the round recorded as interrupted", lambda: [
            r for r in _call(server, "GET", "/rounds", ann).json() if r["id"] == running[0]["id"]
            and r["state"] in ("interrupted", "failed")])
        assert "died" in rounds[0]["message"] or "stopped" in rounds[0]["message"]
        current = _call(server, "GET", f"/models/{BASE}-lab/current", ann)
        assert current.status_code == 200 and current.headers[VERSION_HEADER] == "0"  # the last good version
        versions = _call(server, "GET", f"/models/{BASE}-lab/versions", ann).json()
        assert [v["version"] for v in versions if v["current"]] == ["0"]
        again = _wait("a restarted worker", lambda: (w := _worker_child(server)) and w.pid != worker.pid and w)
        assert again.is_running() and _call(server, "GET", "/health").json()["worker"] == "running"
        assert "worker killed by signal 9" in server.log()
        assert [i["state"] for i in _call(server, "GET", "/queue/items", ann).json()] == ["pending", "pending"]
    finally:
        server.stop()


def test_a_full_disk_gives_507_and_leaves_the_queue_unchanged(tmp_path, monkeypatch):
    """A good correction the server cannot store is its trouble, not the correction's: 507, which
    clients keep in their outbox and send again (a 400 would set it aside as bad)."""
    import errno

    from napari_mousesegment.active import queue as queue_module
    from napari_mousesegment.server.uploads import INSUFFICIENT_STORAGE, Refused, queue_upload

    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "home"))
    queue = Queue(tmp_path / "queue")
    meta, files = _correction(tmp_path)

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(queue_module, "write_array", full)
    with pytest.raises(Refused) as caught:
        queue_upload(queue, json.dumps(meta), files, author="ann1", claimed_hash=None, max_bytes=1 << 20)
    assert caught.value.status == INSUFFICIENT_STORAGE and "No space left" in str(caught.value)
    assert queue.items() == [] and not any((queue.root / "tmp").iterdir())
    monkeypatch.undo()
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "home"))
    item, created = queue_upload(queue, json.dumps(meta), files, author="ann1", claimed_hash=None, max_bytes=1 << 20)
    assert created and [i.id for i in queue.items()] == [item.id]  # the same correction, sent again, is stored
