"""The active-learning widget against a real lab server: uploads off the GUI thread, the outbox
while the server is down, micro-CT corrections, refusals by role, and a round followed live.

The server runs in its own process (``mousesegment serve`` on 127.0.0.1, see
tests/server/conftest.py); the widget talks to it only through threads, keeps what it cannot send
in this machine's outbox, and sends it again on a refresh.
"""

import threading

import pytest

from tests.plugin.test_widget_active import new_scanner_correction
from tests.plugin.test_widget_active_ct import BASE, _ct, _dock, _shown, _ultrasound
from tests.server import conftest as lab

lab_server = lab.lab_server  # the fixture: a real server with users ann1, ann2 (annotators) and boss


# -- against a real server ---------------------------------------------------------------------
def _client(server, user: str = "ann1"):
    from napari_mousesegment.remote.client import Client, token_from

    return Client(server.url, token_from(server.tokens[user]))


def _connected(viewer, server, user: str = "ann1"):
    widget = _dock(viewer)
    widget.use_server(server.url, server.tokens[user]).wait(60)
    return widget


def test_server_mode_uploads_off_the_gui_thread_and_the_item_arrives(make_napari_viewer, qtbot, lab_server,
                                                                    monkeypatch):
    from napari_mousesegment.remote.client import Client

    viewer = make_napari_viewer()
    image, labels, corrected = _ultrasound(viewer)
    widget = _connected(viewer, lab_server)
    assert _shown(widget._server.url) and not _shown(widget._queue_dir) and widget._server.timer.isActive()
    assert widget._server.waiting.value == "outbox: nothing waiting"
    threads, add = [], Client.add
    monkeypatch.setattr(Client, "add", lambda self, *a, **k: threads.append(threading.current_thread()) or
                        add(self, *a, **k))
    job = widget.send(image, labels)
    result = job.wait(60)
    assert threads and threads[0] is not threading.main_thread()  # never on the GUI thread
    assert result["answer"]["created"] is True and result["waiting"] == 0
    items = _client(lab_server).items()
    assert [(i["kind"], i["organ"], i["model"], i["touched"]) for i in items] == [("ultrasound", "heart", BASE,
                                                                                 corrected)]
    row = [items[0]["id"], "pending", "heart", BASE, 5]  # the table shows the server's items after a send
    qtbot.waitUntil(lambda: widget._items.data.to_list() == [row], timeout=30_000)
    again = widget.send(image, labels).wait(60)  # the same correction twice: one item
    assert again["answer"]["created"] is False and len(_client(lab_server).items()) == 1


def test_a_correction_made_while_the_server_is_down_waits_in_the_outbox_and_arrives_once(
        make_napari_viewer, qtbot, lab_server):
    viewer = make_napari_viewer()
    image, labels, _ = _ultrasound(viewer)
    widget = _connected(viewer, lab_server)
    lab_server.kill()
    result = widget.send(image, labels).wait(60)
    assert "kept" in result and widget._server.waiting.value == "outbox: 1 waiting to be sent"
    assert "unreachable" in widget.status and "waits in the outbox" in widget.status
    snap = widget.refresh().wait(60)
    assert "unreachable" in snap and widget._server.waiting.value == "outbox: 1 waiting to be sent"
    lab_server.start()
    # the poll (every few seconds) sends the outbox first, without a click
    qtbot.waitUntil(lambda: widget._server.waiting.value == "outbox: nothing waiting", timeout=30_000)
    widget.flush().wait(60)
    widget.refresh().wait(60)
    items = _client(lab_server).items()
    assert len(items) == 1 and items[0]["organ"] == "heart"  # delivered exactly once
    assert [row[0] for row in widget._items.data.to_list()] == [items[0]["id"]]


def test_a_micro_ct_correction_goes_to_the_server_with_its_spacing_and_condition(make_napari_viewer, lab_server,
                                                                               monkeypatch):
    viewer = make_napari_viewer()
    scan, image, labels, touched = _ct(viewer)
    monkeypatch.setenv("MOUSESEGMENT_TOKEN", lab_server.tokens["ann2"].read_text().strip())
    widget = _dock(viewer)
    assert widget.use_server(lab_server.url).wait(60)["status"]["items"] == 0  # no token file: the environment's
    result = widget.send(image, labels).wait(60)
    item = result["answer"]["item"]
    assert (item["kind"], item["condition"], item["organ"], item["model"]) == ("ct", "contrast", None,
                                                                               "mosnet-synthetic")
    assert item["model_version"] == "3" and item["author"] == "ann2"  # mosnet-synthetic v3; who sent it, recorded by the server
    assert item["spacing"] == pytest.approx(list(scan.spacing)) and item["touched"] == touched
    assert [i["id"] for i in _client(lab_server).items()] == [item["id"]]


def test_an_annotator_may_not_promote_or_start_a_round_and_sees_the_403(make_napari_viewer, lab_server,
                                                                         monkeypatch):
    viewer = make_napari_viewer()
    widget = _connected(viewer, lab_server)
    shown = []
    monkeypatch.setattr("napari_mousesegment.plugin.widgets.server_panel.show_error", shown.append)
    with pytest.raises(ValueError, match="403"):
        widget.promote(BASE + "-lab", "0").wait(60)
    with pytest.raises(ValueError, match="403"):
        widget.retrain().wait(60)
    assert len(shown) == 2 and all("\n" not in s and "(403)" in s and "maintainer" in s for s in shown), shown
    token = lab_server.tokens["ann1"].read_text().strip()
    assert all(token not in line for line in shown)


@pytest.mark.slow
def test_a_round_on_the_server_is_shown_live_then_pulled_and_repredicted(make_napari_viewer, qtbot, tmp_path,
                                                                         monkeypatch):
    """A maintainer's widget: the correction goes up, the server's worker runs a round (drawn live),
    the promoted version is pulled here and re-predicted; a rollback is pulled too."""
    from napari_mousesegment.store.load import load_unet

    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "client-home"))
    monkeypatch.setenv("MOUSESEGMENT_OUTBOX", str(tmp_path / "client-outbox"))
    server = lab.make_server(tmp_path / "lab", worker=True, extra=("--epochs", "10"))
    try:
        viewer = make_napari_viewer()
        image, labels, truth = new_scanner_correction(viewer)
        widget = _connected(viewer, server, "boss")
        assert widget.send(image, labels).wait(60)["answer"]["created"]
        assert widget.retrain().wait(60) is not None  # a maintainer may ask for a round
        qtbot.waitUntil(lambda: bool(widget._plot.points), timeout=240_000)  # epochs arrive while it runs
        assert "server round" in widget.status and "epoch" in widget.status
        qtbot.waitUntil(lambda: widget.repredicted is not None, timeout=300_000)
        assert widget.last_round.promoted and widget.pulled["name"] == f"{BASE}-lab"
        on_server = [v for v in _client(server, "boss").versions(f"{BASE}-lab") if v["current"]]
        assert widget.pulled["version"] == on_server[0]["version"] == "1"
        assert load_unet(f"{BASE}-lab")[2]["version"] == "1"  # installed here
        new = widget.repredicted.data > 0
        assert 2 * (new & (truth > 0)).sum() / (new.sum() + (truth > 0).sum()) > 0.7
        assert "v1" in widget.repredicted.name
        widget.rollback(f"{BASE}-lab").wait(120)
        assert widget.pulled["version"] == "0" and load_unet(f"{BASE}-lab")[2]["version"] == "0"
    finally:
        server.stop()


def test_server_rounds_are_drawn_live_and_each_promotion_is_pulled_once(make_napari_viewer, monkeypatch):
    from napari_mousesegment.plugin.widgets.server_panel import as_round

    widget = _dock(make_napari_viewer())
    calls = []
    monkeypatch.setattr(widget._server, "call", lambda fn, *args, **_: calls.append((fn.__name__, args)))

    def rounds(*rows):
        return [as_round({"model": "m-lab", "started": "", **row}) for row in rows]

    old = {"id": 1, "state": "done", "version": "1", "metrics": '{"promoted": true}'}  # as SQLite stores it
    widget._follow_rounds(rounds(old))  # there before connecting: history, not news
    running = {"id": 2, "state": "running", "epoch": 3, "epochs": 40, "loss": 0.5, "eta_s": 12.0}
    widget._follow_rounds(rounds(old, running))
    assert calls == [] and widget._plot.points == {3: 0.5}
    assert widget.status == "server round 2: epoch 3/40, loss 0.5000, ETA 12 s"
    widget._follow_rounds(rounds(old, {**running, "epoch": 4, "loss": 0.4}))
    assert widget._plot.points == {3: 0.5, 4: 0.4}
    done = {"id": 2, "state": "done", "version": "2", "metrics": {"promoted": True}, "message": "promoted"}
    widget._follow_rounds(rounds(old, done))
    widget._follow_rounds(rounds(old, done))  # the next poll: the same round is not pulled again
    assert calls == [("pull", ("m-lab",))] and widget.last_round.promoted
    assert widget.status == "server round 2: m-lab v2: promoted"
    failed = {"id": 3, "state": "failed", "message": "CUDA out of memory"}
    widget._follow_rounds(rounds(old, done, failed))
    assert len(calls) == 1 and widget.status == "server round 3: m-lab: round failed: CUDA out of memory"
