"""Annotation & active-learning widget: send corrections (ultrasound or micro-CT), see the queue,
what to correct next, retrain with a live loss plot, and switch model versions.

The queue is a local folder (the default), or a lab server (``mousesegment serve``). Locally,
retraining runs ``mousesegment worker --queue DIR --once`` as a child process (see
:mod:`...active.process`): a crash or an out-of-memory error there cannot take napari down. With a
server, every call runs in a thread (:mod:`.server_panel`): corrections are uploaded (kept in this
machine's outbox while the server cannot be reached, and sent again on each refresh), the server's
rounds are polled and drawn live, and after a promotion the new version is pulled and re-predicted.

From a script::

    al = ActiveLearningWidget(viewer)
    al.queue_dir = "~/mousesegment-queue"
    al.epochs = 20                                   # per round (40); a server's worker uses serve --epochs
    al.send(image_layer, corrected_layer)            # kind, organ or condition and model from the layer
    al.retrain().wait()                              # the child's pass; a promotion re-predicts
    al.rollback("unet-heart-synthetic-lab")

    al.use_server("https://gpu.lab.example:8765", "~/.mousesegment-token")
    al.send(image_layer, corrected_layer).wait()     # a Job: the server's answer, or kept in the outbox
"""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, PushButton, SpinBox, Table
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info

from ...active.process import WorkerPass, run_worker_pass
from ...active.queue import Item, Queue, QueueError, touched_planes
from ...active.ranking import mean_entropy, rank
from ...active.rounds import Round, RoundState
from ...inference.ultrasound import predict_probabilities, segment_frames
from ...models.folder import ModelError
from ...organs import US_ORGANS
from ...store import versions as model_versions
from ...store.load import load_unet
from ...store.registry import list_models, model_config
from ..layers import us_labels_layer
from . import server_panel as remote
from .base import Job, JobWidget, installed
from .corrections import KINDS, correction, layer_condition, layer_kind
from .edits import show_result
from .loss_plot import LossPlot
from .threads import run_reporting

if TYPE_CHECKING:
    import napari

DEFAULT_QUEUE = Path.home() / "mousesegment-queue"
CONDITIONS = ("native", "contrast")  #: offered when the micro-CT model does not list its own


class ActiveLearningWidget(JobWidget):
    """The active-learning loop in napari, on a local queue folder or a lab server."""

    job_name = "active learning"
    cancelled_status = "cancelled; the queue and the current version are as they were"

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self._server = remote.ServerPanel(self.native, self._poll, lambda text: setattr(self._status, "value", text))
        self._queue_dir = FileEdit(label="queue folder", mode="d", value=str(DEFAULT_QUEUE))
        self._image = ComboBox(label="image", choices=lambda _: self._layers("Image"))
        self._labels = ComboBox(label="corrected labels", choices=lambda _: self._layers("Labels"))
        self._kind = ComboBox(label="kind", choices=list(KINDS))
        self._organ = ComboBox(label="organ", choices=list(US_ORGANS))
        self._condition = ComboBox(label="condition", choices=lambda _: self._conditions(), nullable=True,
                                   tooltip="the micro-CT scan's condition (taken from the layer when it says)")
        self._model = ComboBox(label="model", choices=lambda _: installed("mosnet" if self.kind == "ct" else "unet"))
        self._send = PushButton(text="Send correction to queue")
        self._items = Table(value={"id": [], "state": [], "organ": [], "model": [], "touched": []})
        self._rank = PushButton(text="Rank frames to correct next")
        self._next = ComboBox(label="correct next", choices=[])
        self._epochs = SpinBox(label="epochs per round", value=40, min=1, max=100_000,
                               tooltip="fine-tuning epochs of a round on the local queue (`worker --epochs`); "
                                       "a server's worker uses its own `serve --epochs`")
        self._retrain = PushButton(text="Retrain now")
        self._version_model = ComboBox(label="versions of", choices=lambda _: self._versioned())
        self._versions = Table(value={"version": [], "current": [], "parent": [], "held-out Dice": []})
        self._version = ComboBox(label="version", choices=lambda _: self._version_ids())
        self._promote = PushButton(text="Promote")
        self._rollback = PushButton(text="Roll back")
        self._plot = LossPlot()
        self.extend([self._server.mode, self._queue_dir, *self._server.widgets[1:], self._image, self._labels,
                     self._kind, self._organ, self._condition, self._model, self._send, self._items, self._rank,
                     self._next, self._epochs, self._retrain, self._cancel, self._progress, self._status])
        self.native.layout().addWidget(self._plot.canvas)
        self.extend([self._version_model, self._versions, self._version, self._promote, self._rollback])
        self._send.clicked.connect(lambda: self.send())
        self._rank.clicked.connect(lambda: self.rank_frames())
        self._next.changed.connect(self._jump)
        self._retrain.clicked.connect(lambda: self.retrain())
        self._version_model.changed.connect(self.refresh_versions)
        self._promote.clicked.connect(lambda: self.promote(self._version_model.value, self._version.value))
        self._rollback.clicked.connect(lambda: self.rollback(self._version_model.value))
        self._labels.changed.connect(self._follow_labels)
        self._image.changed.connect(self._follow_labels)
        self._kind.changed.connect(self._show_kind)
        self._model.changed.connect(self._condition.reset_choices)
        self._server.mode.changed.connect(self._switch_mode)
        self._server.url.changed.connect(self._forget_server)  # typed: the next poll connects
        self._server.token_file.changed.connect(self._forget_server)
        self._server.resend.clicked.connect(lambda: self.flush())
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._image.reset_choices)
            event.connect(self._labels.reset_choices)
        self._queue: Queue | None = None
        self.ranking: list[tuple[int, float]] = []  #: (frame, entropy), the most uncertain first
        self.last_round: Round | None = None  #: the last round the widget's retraining ran
        self.repredicted = None  #: the layer predicted with the version a round promoted
        self.pulled: dict | None = None  #: the last version pulled from the server: name, version, path
        self._remote: dict = {}  # the server's last snapshot: items, rounds, versions
        self._refreshing: Job | None = None  # the server refresh in flight
        self._rounds_seen: int | None = None  # the last server round already there when connecting
        self._rounds_done: set[int] = set()  # server rounds whose end was shown
        self._plot_round: int | None = None  # the server round the loss plot draws
        self._generation = 0  # counts server switches: a snapshot of an earlier server is dropped
        self._show_kind()
        self._follow_labels()
        self.refresh()

    # -- choices -----------------------------------------------------------------------------
    def _versioned(self) -> list[str]:
        if self._server.on:
            return [name for name, rows in self._remote.get("versions", {}).items() if rows]
        return [m.name for m in list_models() if m.source == "user" and model_versions.versions(m.name)]

    def _version_ids(self) -> list[str]:
        name = getattr(self, "_version_model", None) and self._version_model.value
        return [r["version"] for r in self.versions(name)] if name else []

    def _conditions(self) -> list[str]:
        """The conditions the chosen micro-CT model knows (native and contrast when it does not say)."""
        name = getattr(self, "_model", None) and self._model.value
        try:
            known = model_config(name).get("conditions") if name and self.kind == "ct" else None
        except (ModelError, OSError):
            known = None
        return list(known or CONDITIONS)

    @property
    def kind(self) -> str:
        """The kind of correction: "ultrasound" or "ct" (taken from the labels layer when it says)."""
        return KINDS[self._kind.value]

    def _show_kind(self, _=None) -> None:
        """An organ for ultrasound, a condition for micro-CT; the models of that kind."""
        self._organ.visible, self._condition.visible = self.kind == "ultrasound", self.kind == "ct"
        self._model.reset_choices()
        self._condition.reset_choices()

    def _follow_labels(self, _=None) -> None:
        """A layer made by the ultrasound or micro-CT widget says its kind, organ or condition, and
        model: preselect them (the condition stays empty for the user to pick when unknown)."""
        layer, image = self._labels.value, self._image.value
        meta = getattr(layer, "metadata", {}) or {}
        kind = layer_kind(layer, image)
        if kind is not None:
            self._kind.value = next(label for label, k in KINDS.items() if k == kind)
        if meta.get("organ") in US_ORGANS:
            self._organ.value = meta["organ"]
        if meta.get("model") in self._model.choices:
            self._model.value = meta["model"]
        if self.kind == "ct" and layer is not None:
            condition = layer_condition(layer, image)
            self._condition.value = condition if condition in self._condition.choices else None

    # -- the inputs, for scripts -------------------------------------------------------------
    @property
    def queue_dir(self) -> Path:
        """The queue folder (created on first use)."""
        return Path(str(self._queue_dir.value)).expanduser()

    @queue_dir.setter
    def queue_dir(self, folder: str | Path) -> None:
        self._queue_dir.value = str(folder)
        self.refresh()

    @property
    def epochs(self) -> int:
        """Fine-tuning epochs of each round :meth:`retrain` runs on the local queue (40)."""
        return int(self._epochs.value)

    @epochs.setter
    def epochs(self, value: int) -> None:
        self._epochs.value = value

    @property
    def queue(self) -> Queue:
        """The chosen queue, opened once per folder (opening checks the schema and cleans up)."""
        if self._queue is None or self._queue.root != self.queue_dir:
            self._queue = Queue(self.queue_dir)
        return self._queue

    def items(self) -> list[Item] | list[dict]:
        """The queue's items, as the table shows them (with a server: its items as of the last refresh)."""
        return self._remote.get("items", []) if self._server.on else self.queue.items()

    def use_server(self, url: str, token_file: str | Path | None = None) -> Job | None:
        """Work against the lab server at ``url`` (token from ``token_file``, else MOUSESEGMENT_TOKEN);
        returns the first refresh's job."""
        with self._server.mode.changed.blocked(), self._server.url.changed.blocked(), \
                self._server.token_file.changed.blocked():
            self._server.url.value = url
            self._server.token_file.line_edit.value = str(token_file or "")  # empty: the environment's
            self._server.mode.value = remote.MODES[1]
        return self._switch_mode()

    def use_local(self, folder: str | Path | None = None) -> None:
        """Work on a local queue folder again (the default one, or ``folder``)."""
        with self._server.mode.changed.blocked():
            self._server.mode.value = remote.MODES[0]
            if folder is not None:
                self._queue_dir.value = str(folder)
        self._switch_mode()

    def _switch_mode(self, _=None) -> Job | None:
        """The queue choice changed: show the fields of that choice and load the queue's items."""
        on = self._server.on
        self._queue_dir.visible = not on
        self._server.show(on)
        self._forget_server()
        return self.refresh()

    def _forget_server(self, _=None) -> None:
        """Another server, token or mode: nothing of the last server's state is kept (an answer
        still on its way is dropped)."""
        self._remote, self._rounds_seen, self._rounds_done, self._plot_round = {}, None, set(), None
        self._refreshing, self._generation = None, self._generation + 1
        self._server.waiting.value = ""
        self._version_model.reset_choices()

    # -- queue -------------------------------------------------------------------------------
    def send(self, image: Any = None, labels: Any = None, *, organ: str | None = None,
             model: str | None = None, condition: str | None = None) -> Item | Job | None:
        """Send a corrected labels layer, with its image and the prediction it started from, to the queue.

        By default the layers chosen in the widget. The kind (ultrasound or micro-CT), the organ or
        the scan's condition and voxel size, and the model default to what the segmentation widget
        recorded on the labels layer. Locally, returns the queued item; with a server, the
        :class:`Job` of the upload, whose result is ``{"answer": ...}`` once the server holds the
        item, or ``{"kept": reason}`` when it waits in the outbox. None when refused (the reason shown).
        """
        for box, value in ((self._image, image), (self._labels, labels)):
            if value is not None:
                box.reset_choices()
                box.value = value
        for box, value in ((self._organ, organ), (self._model, model), (self._condition, condition)):
            if value is not None:
                if box is self._condition:
                    box.reset_choices()
                box.value = value
        try:
            fix = correction(self._image.value, self._labels.value, self.kind, organ=self._organ.value,
                             condition=self._condition.value, model=self._model.value)
            if self._server.on:
                return self._server.call(remote.upload, fix, name="sending", show=self._show_sent)
            item = self.queue.add(fix.image, fix.labels, fix.kind, **fix.fields())
        except (QueueError, OSError) as exc:
            show_error(f"not queued: {exc}")
            return None
        show_info(f"queued item {item.id}: {fix.what}, {len(item.touched)} corrected "
                  f"{'frame' if fix.kind == 'ultrasound' else 'slice'}(s)")
        self.refresh()
        return item

    def _show_sent(self, result: dict) -> dict:
        self._server.set_waiting(result)
        if "kept" in result:
            self._status.value = f"server unreachable ({result['kept']}): the correction waits in the outbox"
            show_error(f"not sent yet: {result['kept']}; kept in the outbox ({result['waiting']} waiting)")
        else:
            item = result["answer"].get("item", result["answer"])
            held = "already held" if result["answer"].get("created") is False else "sent"
            self._status.value = f"{held}: item {item.get('id')} on the server"
            show_info(f"{held}: item {item.get('id')}, {len(item.get('touched') or [])} corrected plane(s)")
            self.refresh()
        return result

    def flush(self) -> Job | None:
        """Send the corrections waiting in this machine's outbox for the chosen server."""
        if not self._server.on:
            show_error("the outbox is for a lab server: choose 'server' as the queue")
            return None
        return self._server.call(remote.flush, name="sending the outbox", show=self._show_flushed)

    def _show_flushed(self, result: dict) -> dict:
        self._server.set_waiting(result)
        self._status.value = f"outbox: {result['sent']} sent, {result['failed']} not sent, {result['waiting']} waiting"
        self.refresh()
        return result

    def refresh(self) -> Job | None:
        """Reload the queue's items and the versions table. With a server this runs in a thread
        (returned as a Job whose result is the server's snapshot), and first sends what waits in
        the outbox."""
        if self._server.on:
            return self._refresh_remote(quiet=False)
        try:
            items = self.queue.items()
        except (OSError, ValueError) as exc:
            self._status.value = f"queue: {exc}"
            return None
        self._fill_items([asdict(i) for i in items])
        self._version_model.reset_choices()
        self.refresh_versions()
        return None

    def _fill_items(self, items: list[dict]) -> None:
        self._items.value = {"id": [i["id"] for i in items], "state": [i["state"] for i in items],
                             "organ": [i["organ"] or i["condition"] for i in items],
                             "model": [i["model"] for i in items], "touched": [len(i["touched"]) for i in items]}

    # -- the server: refreshes and its rounds, live ------------------------------------------
    def _poll(self) -> None:
        if self._server.on and (self._refreshing is None or self._refreshing.done()):
            self._refresh_remote(quiet=True)

    def _refresh_remote(self, quiet: bool) -> Job | None:
        if self._refreshing is not None and not self._refreshing.done():
            return self._refreshing
        self._refreshing = self._server.call(remote.snapshot, name="server refresh", quiet=quiet,
                                             show=partial(self._show_snapshot, self._generation))
        return self._refreshing

    def _show_snapshot(self, generation: int, snap: dict) -> dict:
        if generation != self._generation:  # the answer of a server no longer chosen
            return snap
        self._server.set_waiting(snap)
        if "unreachable" in snap:
            self._status.value = f"server unreachable ({snap['unreachable']}); {snap['waiting']} waiting to be sent"
            return snap
        if self._status.value.startswith(("server unreachable", "server refresh:")):  # it answers again
            self._status.value = (f"server: {snap['status'].get('items', 0)} items, "
                                  f"{snap['status'].get('pending', 0)} pending")
        self._remote = snap
        self._fill_items(snap["items"])
        self._version_model.reset_choices()
        self.refresh_versions()
        self._follow_rounds([remote.as_round(r) for r in snap["rounds"]])
        if snap["sent"]:
            self._status.value = f"outbox: {snap['sent']} sent; {snap['waiting']} waiting"
        return snap

    def _follow_rounds(self, rounds: list[Round]) -> None:
        """Draw the server's running round; show each round that ended since connecting, and
        re-predict with a version one promoted (pulled first)."""
        last = max((r.id for r in rounds), default=0)
        if self._rounds_seen is None:  # rounds from before connecting are history, not news
            self._rounds_seen = last if not rounds or rounds[-1].state is not RoundState.RUNNING else last - 1
        for r in rounds:
            if r.state is RoundState.RUNNING:
                if r.id != self._plot_round:
                    self._plot.clear()
                    self._plot_round = r.id
                if r.epoch is not None and r.loss is not None:
                    self._plot.add(r.epoch, r.loss)
                    eta = f", ETA {r.eta_s:.0f} s" if r.eta_s is not None else ""
                    self._status.value = f"server round {r.id}: epoch {r.epoch}/{r.epochs}, loss {r.loss:.4f}{eta}"
            elif r.id > self._rounds_seen and r.id not in self._rounds_done:
                self._rounds_done.add(r.id)
                self.last_round = r
                self._status.value = f"server round {r.id}: " + round_line(r)
                if r.promoted and r.model:
                    self._server.call(remote.pull, r.model, name="pulling", show=self._show_pulled)

    # -- what to correct next ----------------------------------------------------------------
    def rank_frames(self, image: Any = None, model: str | None = None) -> Job | None:
        """Rank the frames of ``image`` (default: the chosen image layer) by ``model``'s uncertainty.

        The job's result is :attr:`ranking`; the ten most uncertain frames fill "correct next".
        """
        if image is not None:
            self._image.reset_choices()
            self._image.value = image
        if model is not None:
            self._model.value = model
        image = self._image.value
        if image is None or np.asarray(image.data).ndim != 3:
            show_error("choose a (frames, y, x) image layer to rank")
            return None
        return self._start(self._probabilities, np.asarray(image.data), self._model.value, show=self._show_ranking,
                           name="ranking", buttons=self._starters())

    @thread_worker(ignore_errors=True)
    def _probabilities(self, frames: np.ndarray, model_name: str, stop):
        model, _, _ = load_unet(model_name)
        return (yield from run_reporting(predict_probabilities, stop, model, frames))

    def _show_ranking(self, probability: np.ndarray) -> list[tuple[int, float]]:
        layer = self._labels.value
        done = set()
        if layer is not None and (layer.metadata or {}).get("prediction") is not None:
            done = set(touched_planes(np.asarray(layer.data), layer.metadata["prediction"]))
        self.ranking = rank(mean_entropy(probability), exclude=done)
        self._next.choices = [f"frame {k + 1} (entropy {s:.3f})" for k, s in self.ranking[:10]]
        self._status.value = f"ranked {len(self.ranking)} frames; the most uncertain first"
        return self.ranking

    def _jump(self, choice: str | None) -> None:
        if choice:
            frame = int(choice.split()[1]) - 1
            step = list(self.viewer.dims.current_step)
            step[0] = frame
            self.viewer.dims.current_step = tuple(step)

    # -- retraining in a separate process ----------------------------------------------------
    def retrain(self) -> Job | None:
        """One worker pass on the queue in a child process, followed live (loss plot, progress).

        The job's result is the :class:`~...active.process.WorkerPass`; when its last round promoted
        a version, the current image is predicted with it as a new layer (a second job). With a
        server, the job asks the server's worker for a round (maintainers only); the round is then
        followed through the server's round records, and a promoted version is pulled and
        re-predicted.
        """
        if self._server.on:
            return self._server.call(remote.request_round, name="round request", show=self._show_requested)
        job = self._start(self._run_worker, str(self.queue.root), self.epochs, show=self._show_pass,
                          name="retraining", buttons=self._starters())
        if job is None:
            return None
        self._plot.clear()  # before the first epoch arrives: progress comes through the event loop
        return job.then(self._after_pass)

    @thread_worker(ignore_errors=True)
    def _run_worker(self, queue_dir: str, epochs: int, stop):
        return (yield from run_reporting(run_worker_pass, stop, queue_dir, worker_args=("--epochs", str(epochs))))

    def _on_progress(self, event: tuple) -> None:
        super()._on_progress(event)
        if len(event) > 2:  # a round's epoch, loss and ETA
            epoch, epochs, loss, eta_s = event
            self._plot.add(epoch, loss)
            self._status.value = f"retraining: epoch {epoch}/{epochs}, loss {loss:.4f}, ETA {eta_s:.0f} s"

    def _show_requested(self, answer: Any) -> Any:
        self._plot.clear()
        self._status.value = "round requested: the server's worker runs it; its epochs appear here"
        self.refresh()
        return answer

    def _show_pass(self, result: WorkerPass) -> WorkerPass:
        self.refresh()
        self.last_round = result.rounds[-1] if result.rounds else None
        last = self.last_round
        if last is None:
            self._status.value = (f"retraining stopped (exit {result.exit_code}): {result.last_line}"
                                  if result.exit_code else result.last_line or "nothing to retrain")
        else:
            self._status.value = round_line(last, result.last_line)
        return result

    def _after_pass(self, result: WorkerPass) -> None:
        if self.last_round is not None and self.last_round.promoted:
            self.repredict(self.last_round.model)

    def _show_pulled(self, result: dict) -> dict:
        """A version pulled from the server: re-predict the current image with it (ultrasound U-Nets;
        a micro-CT model is run from the micro-CT widget)."""
        self._status.value = f"{result['name']}: now version {result['version']} (pulled from the server)"
        show_info(self._status.value)
        self.refresh_versions()
        self.pulled = result
        self.repredict(result["name"])
        return result

    def repredict(self, model_name: str) -> Job | None:
        """Predict the current image with ``model_name``'s current version, as a Labels layer
        (ultrasound U-Nets; None for other models and images)."""
        image = self._image.value
        if image is None or model_name not in installed("unet") or np.asarray(image.data).ndim != 3:
            return None
        return self._start(self._predict, np.asarray(image.data), model_name, show=self._show_prediction,
                           name="re-prediction", buttons=self._starters())

    @thread_worker(ignore_errors=True)
    def _predict(self, frames: np.ndarray, model_name: str, stop):
        model, config, meta = load_unet(model_name)
        _, labels = yield from run_reporting(segment_frames, stop, model, frames)
        return labels, config.organ, f"{model_name} v{meta.get('version')}", model_name

    def _show_prediction(self, result) -> Any:
        labels, organ, label, model_name = result
        data, kwargs, _ = us_labels_layer(labels, organ, f"{organ} ({label})")
        kwargs["metadata"]["model"] = model_name
        self.repredicted = show_result(self.viewer, self.repredicted, data, kwargs)
        return self.repredicted

    def _starters(self) -> tuple[PushButton, ...]:
        """The buttons a job disables; Send stays, so corrections can be queued while a round runs."""
        return (self._rank, self._retrain, self._promote, self._rollback)

    # -- versions ----------------------------------------------------------------------------
    def refresh_versions(self, _=None) -> None:
        name = self._version_model.value
        rows = self.versions(name) if name else []
        self._versions.value = {
            "version": [r["version"] for r in rows], "current": ["*" if r["current"] else "" for r in rows],
            "parent": [r["parent"] or "" for r in rows],
            "held-out Dice": [f"{r['metrics']['dice_before']:.3f} -> {r['metrics']['dice_after']:.3f}"
                              if (r.get("metrics") or {}).get("dice_after") is not None else "" for r in rows]}
        self._version.reset_choices()

    def versions(self, name: str) -> list[dict]:
        """The versions of a retrained model, oldest first (``current`` marks the one in use); with a
        server, its versions as of the last refresh."""
        if self._server.on:
            return self._remote.get("versions", {}).get(name, [])
        return model_versions.versions(name)

    def promote(self, name: str, version: str) -> str | Job | None:
        """Make ``version`` of ``name`` the current one; returns it (None when refused). With a
        server (maintainers only), a Job that then pulls the version and re-predicts with it."""
        return self._switch(name, version)

    def rollback(self, name: str) -> str | Job | None:
        """Return ``name`` to the version that was current before; returns it (None when refused).
        With a server, as :meth:`promote`."""
        return self._switch(name, None)

    def _switch(self, name: str | None, version: str | None) -> str | Job | None:
        """Promote ``version``, or roll back when it is None; errors are shown, not raised."""
        if self._server.on:
            if not name:
                show_error("choose a model with versions first")
                return None
            what = "promote" if version is not None else "roll back"
            return self._server.call(remote.switch_and_pull, name, version, name=what, show=self._show_pulled)
        try:
            if not name:
                raise ModelError("choose a model with versions first")
            if version is None:
                version = model_versions.rollback(name)
            else:
                model_versions.promote(name, str(version))
        except ModelError as exc:
            show_error(str(exc))
            return None
        self._status.value = f"{name}: now version {version}"
        self.refresh_versions()
        return version


def round_line(r: Round, fallback: str | None = None) -> str:
    """A round's end, for the status line."""
    if r.version:
        return f"{r.model} v{r.version}: {r.message}"
    return f"{r.model}: round {r.state}: {r.message or fallback or ''}".rstrip(": ")
