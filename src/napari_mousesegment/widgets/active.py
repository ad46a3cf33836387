"""Annotation & active-learning widget: send corrections, see the queue, what to correct next,
retrain in a separate process with a live loss plot, and switch model versions.

Retraining runs ``mousesegment worker --queue DIR --once`` as a child process: a crash or an
out-of-memory error there cannot take napari down, and the same worker can run on a GPU machine
that shares the queue folder. The widget follows it through the queue's round records.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, Table
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QProcess, QTimer

from ..active.queue import Queue, QueueError
from ..active.ranking import mean_entropy, rank
from ..layers import us_labels_layer
from ..models.registry import list_models
from ..models.store import ModelError
from ..models.versions import promote, rollback, versions
from ..organs import US_ORGANS
from ..us_jobs import segment_frames
from ._worker import run_reporting, stop_and_wait

if TYPE_CHECKING:
    import napari

DEFAULT_QUEUE = Path.home() / "mousesegment-queue"


class ActiveLearningWidget(Container):
    """The active-learning loop in napari (ultrasound corrections; micro-CT ones can be queued)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._queue_dir = FileEdit(label="queue folder", mode="d", value=str(DEFAULT_QUEUE))
        self._image = ComboBox(label="image", choices=self._layers_of("Image"))
        self._labels = ComboBox(label="corrected labels", choices=self._layers_of("Labels"))
        self._organ = ComboBox(label="organ", choices=list(US_ORGANS))
        self._model = ComboBox(label="model", choices=lambda _: self._model_names())
        self._send = PushButton(text="Send correction to queue")
        self._items = Table(value={"id": [], "state": [], "organ": [], "model": [], "touched": []})
        self._rank = PushButton(text="Rank frames to correct next")
        self._next = ComboBox(label="correct next", choices=[])
        self._retrain = PushButton(text="Retrain now")
        self._cancel = PushButton(text="Cancel retraining", enabled=False)
        self._progress = ProgressBar(label="round", min=0, max=1, value=0)
        self._round = Label(value="")
        self._version_model = ComboBox(label="versions of", choices=lambda _: self._versioned())
        self._versions = Table(value={"version": [], "current": [], "parent": [], "held-out Dice": []})
        self._version = ComboBox(label="version", choices=lambda _: self._version_ids())
        self._promote = PushButton(text="Promote")
        self._rollback = PushButton(text="Roll back")
        self._status = Label(value="")
        self._plot = _LossPlot()
        self.extend([self._queue_dir, self._image, self._labels, self._organ, self._model, self._send, self._items,
                     self._rank, self._next, self._retrain, self._cancel, self._progress, self._round])
        self.native.layout().addWidget(self._plot.canvas)
        self.extend([self._version_model, self._versions, self._version, self._promote, self._rollback,
                     self._status])
        self._send.clicked.connect(self.send)
        self._rank.clicked.connect(self.rank_frames)
        self._next.changed.connect(self._jump)
        self._retrain.clicked.connect(self.retrain)
        self._cancel.clicked.connect(self.cancel)
        self._version_model.changed.connect(self.refresh_versions)
        self._promote.clicked.connect(lambda: self._switch(promote, self._version_model.value, self._version.value))
        self._rollback.clicked.connect(lambda: self._switch(rollback, self._version_model.value))
        self._labels.changed.connect(self._follow_labels)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._image.reset_choices)
            event.connect(self._labels.reset_choices)
        self._job: dict = {}
        self._queue: Queue | None = None
        self.native.destroyed.connect(lambda *_: self._kill_process())
        self.native.destroyed.connect(lambda *_, job=self._job: stop_and_wait(job))
        self.process: QProcess | None = None
        self._timer = QTimer()
        self._timer.timeout.connect(self._poll)
        self._round_id: int | None = None
        self.last_round: dict | None = None
        self.repredicted = None
        self._follow_labels()
        self.refresh()

    # -- choices -----------------------------------------------------------------------------
    def _layers_of(self, kind: str):
        def choices(_=None) -> list:
            import napari.layers

            cls = getattr(napari.layers, kind)
            return [layer for layer in self.viewer.layers if isinstance(layer, cls)]
        return choices

    @staticmethod
    def _model_names() -> list[str]:
        return [m.name for m in list_models() if m.kind == "unet" and m.source != "registry"]

    def _versioned(self) -> list[str]:
        return [m.name for m in list_models() if m.source == "user" and versions(m.name)]

    def _version_ids(self) -> list[str]:
        name = getattr(self, "_version_model", None) and self._version_model.value
        return [r["version"] for r in versions(name)] if name else []

    def _follow_labels(self, _=None) -> None:
        """A layer made by the ultrasound widget names its organ and model: preselect them."""
        layer = self._labels.value
        meta = getattr(layer, "metadata", {}) or {}
        if meta.get("organ") in US_ORGANS:
            self._organ.value = meta["organ"]
        if meta.get("model") in self._model.choices:
            self._model.value = meta["model"]

    @property
    def queue(self) -> Queue:
        """The chosen queue, opened once per folder (opening checks the schema and cleans up)."""
        root = Path(str(self._queue_dir.value)).expanduser()
        if self._queue is None or self._queue.root != root:
            self._queue = Queue(root)
        return self._queue

    # -- queue -------------------------------------------------------------------------------
    def send(self) -> None:
        """Store the chosen labels layer (with its image and the prediction it started from) in the queue."""
        image, labels = self._image.value, self._labels.value
        try:
            if image is None or labels is None:
                raise QueueError("choose the image and the corrected labels layer")
            data = np.asarray(image.data)
            if getattr(image, "rgb", False):
                raise QueueError(f"{image.name}: convert the RGB image to gray first (the ultrasound widget does)")
            item = self.queue.add(data, np.asarray(labels.data), "ultrasound", organ=self._organ.value,
                                  model=self._model.value, prediction=(labels.metadata or {}).get("prediction"),
                                  source=f"napari layer {labels.name!r}")
        except (QueueError, OSError) as exc:
            show_error(f"not queued: {exc}")
            return
        show_info(f"queued item {item.id}: {len(item.touched)} corrected frame(s)")
        self.refresh()

    def refresh(self) -> None:
        try:
            items = self.queue.items()
        except (OSError, ValueError) as exc:
            self._status.value = f"queue: {exc}"
            return
        self._items.value = {"id": [i.id for i in items], "state": [i.state for i in items],
                             "organ": [i.organ or i.condition for i in items], "model": [i.model for i in items],
                             "touched": [len(i.touched) for i in items]}
        self._version_model.reset_choices()
        self.refresh_versions()

    # -- what to correct next ----------------------------------------------------------------
    def rank_frames(self) -> None:
        image = self._image.value
        if image is None or np.asarray(image.data).ndim != 3:
            show_error("choose a (frames, y, x) image layer to rank")
            return
        self._background(self._probabilities, np.asarray(image.data), self._model.value,
                         done=self._show_ranking, what="ranking")

    def _background(self, make_worker, *args, done, what: str) -> None:
        """Start a thread worker with its own stop flag; its result goes to ``done``, errors to a notification."""
        stop = threading.Event()
        worker = make_worker(*args, stop)
        worker.returned.connect(done)
        worker.errored.connect(lambda exc: show_error(f"{what} failed: {exc}"))
        self._job.update(worker=worker, stop=stop)
        worker.start()

    @thread_worker(ignore_errors=True)
    def _probabilities(self, frames: np.ndarray, model_name: str, stop: threading.Event):
        from ..inference.ultrasound import predict_probabilities
        from ..models.store import load_unet

        model, _, _ = load_unet(model_name)
        return (yield from run_reporting(predict_probabilities, stop, model, frames))

    def _show_ranking(self, probability: np.ndarray) -> None:
        layer = self._labels.value
        done = set()
        if layer is not None and (layer.metadata or {}).get("prediction") is not None:
            from ..active.queue import touched_planes

            done = set(touched_planes(np.asarray(layer.data), layer.metadata["prediction"]))
        self.ranking = rank(mean_entropy(probability), exclude=done)
        self._next.choices = [f"frame {k + 1} (entropy {s:.3f})" for k, s in self.ranking[:10]]
        self._status.value = f"ranked {len(self.ranking)} frames; the most uncertain first"

    def _jump(self, choice: str | None) -> None:
        if choice:
            frame = int(choice.split()[1]) - 1
            step = list(self.viewer.dims.current_step)
            step[0] = frame
            self.viewer.dims.current_step = tuple(step)

    # -- retraining in a separate process ----------------------------------------------------
    def retrain(self) -> None:
        """Run one worker pass on the queue in a child process and follow its progress."""
        if self.process is not None:
            show_error("a retraining round is already running")
            return
        before = {r["id"] for r in self.queue.rounds()}
        self._known_rounds = before
        self._plot.clear()
        self.process = QProcess()
        self.process.setProcessChannelMode(QProcess.MergedChannels)
        self.process.finished.connect(self._finished)
        self.process.start(sys.executable, ["-m", "napari_mousesegment.cli", "worker", "--queue",
                                            str(self.queue.root), "--once"])
        self._retrain.enabled, self._cancel.enabled = False, True
        self._round.value = "retraining (separate process)…"
        self._timer.start(300)

    def _poll(self) -> None:
        rounds = [r for r in self.queue.rounds() if r["id"] not in self._known_rounds]
        if not rounds:
            return
        r = rounds[-1]
        if r["epoch"]:
            self._progress.max, self._progress.value = r["epochs"], r["epoch"]
            self._plot.add(r["epoch"], r["loss"])
            self._round.value = f"{r['model']}: epoch {r['epoch']}/{r['epochs']}, loss {r['loss']:.4f}, " \
                                f"ETA {r['eta_s']:.0f} s"
        self.last_round = r

    def cancel(self) -> None:
        self._kill_process()
        self._round.value = "retraining cancelled; the current version is unchanged"

    def _kill_process(self) -> None:
        if self.process is not None:
            self.process.kill()  # the queue and the store are crash-safe: nothing is lost

    def _finished(self, code: int, _status=None) -> None:
        self._timer.stop()
        self._poll()
        output = bytes(self.process.readAll()).decode(errors="replace").strip() if self.process else ""
        self.process = None
        self._retrain.enabled, self._cancel.enabled = True, False
        self.refresh()
        last = self.last_round
        if code != 0 and not (last and last.get("state") == "done"):
            lines = [line for line in output.splitlines() if line.strip()]
            self._round.value = f"retraining stopped (exit {code}): {lines[-1] if lines else ''}"
            return
        if not last or last.get("state") != "done":
            self._round.value = output.splitlines()[-1] if output else "nothing to retrain"
            return
        self._round.value = f"{last['model']} v{last['version']}: {last['message']}"
        if "promoted" == last["message"]:
            self.repredict(last["model"])

    def repredict(self, model_name: str) -> None:
        """After a promotion: predict the current image with the new current version, as a new layer."""
        image = self._image.value
        if image is None or np.asarray(image.data).ndim != 3:
            return
        self._background(self._predict, np.asarray(image.data), model_name, done=self._show_prediction,
                         what="re-prediction")

    @thread_worker(ignore_errors=True)
    def _predict(self, frames: np.ndarray, model_name: str, stop: threading.Event):
        from ..models.store import load_unet

        model, config, meta = load_unet(model_name)
        _, labels = segment_frames(model, frames)
        return labels, config.organ, f"{model_name} v{meta.get('version')}", model_name

    def _show_prediction(self, result) -> None:
        labels, organ, label, model_name = result
        data, kwargs, _ = us_labels_layer(labels, organ, f"{organ} ({label})")
        kwargs["metadata"].update(model=model_name, prediction=labels.copy())
        self.repredicted = self.viewer.add_labels(data, **kwargs)

    # -- versions ----------------------------------------------------------------------------
    def refresh_versions(self, _=None) -> None:
        name = self._version_model.value
        rows = versions(name) if name else []
        self._versions.value = {
            "version": [r["version"] for r in rows], "current": ["*" if r["current"] else "" for r in rows],
            "parent": [r["parent"] or "" for r in rows],
            "held-out Dice": [f"{r['metrics']['dice_before']:.3f} -> {r['metrics']['dice_after']:.3f}"
                              if (r.get("metrics") or {}).get("dice_after") is not None else "" for r in rows]}
        self._version.reset_choices()

    def _switch(self, action, *args) -> None:
        try:
            result = action(*[a for a in args if a is not None])
        except ModelError as exc:
            show_error(str(exc))
            return
        self._status.value = f"{args[0]}: now version {result if isinstance(result, str) else args[-1]}"
        self.refresh_versions()


class _LossPlot:
    """A small matplotlib plot of the round's loss per epoch, redrawn as epochs arrive."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3, 1.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.axes = self.figure.add_subplot()
        self.points: dict[int, float] = {}
        self.clear()

    def clear(self) -> None:
        self.points.clear()
        self._draw()

    def add(self, epoch: int, loss: float) -> None:
        if self.points.get(epoch) != loss:
            self.points[epoch] = loss
            self._draw()

    def _draw(self) -> None:
        self.axes.clear()
        self.axes.set_xlabel("epoch", fontsize=8)
        self.axes.set_ylabel("loss", fontsize=8)
        if self.points:
            epochs = sorted(self.points)
            self.axes.plot(epochs, [self.points[e] for e in epochs], "-o", markersize=2)
        self.canvas.draw_idle()
