"""Annotation & active-learning widget: send corrections, see the queue, what to correct next,
retrain in a separate process with a live loss plot, and switch model versions.

Retraining runs ``mousesegment worker --queue DIR --once`` as a child process (see
:mod:`...active.process`): a crash or an out-of-memory error there cannot take napari down, and the
same worker can run on a GPU machine that shares the queue folder. A thread follows the child
through the queue's round records.

From a script::

    al = ActiveLearningWidget(viewer)
    al.queue_dir = "~/mousesegment-queue"
    al.send(image_layer, corrected_layer)            # organ and model from the layer the ultrasound widget made
    al.retrain().wait()                              # the child's pass; a promotion re-predicts
    al.rollback("unet-heart-synthetic-lab")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, PushButton, Table
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info

from ...active.process import WorkerPass, run_worker_pass
from ...active.queue import Item, Queue, QueueError, touched_planes
from ...active.ranking import mean_entropy, rank
from ...active.rounds import Round
from ...inference.ultrasound import predict_probabilities, segment_frames
from ...models.folder import ModelError
from ...organs import US_ORGANS
from ...store import versions as model_versions
from ...store.load import load_unet
from ...store.registry import list_models
from ..layers import us_labels_layer
from .base import Job, JobWidget, installed
from .edits import show_result
from .loss_plot import LossPlot
from .threads import run_reporting

if TYPE_CHECKING:
    import napari

DEFAULT_QUEUE = Path.home() / "mousesegment-queue"


class ActiveLearningWidget(JobWidget):
    """The active-learning loop in napari (ultrasound corrections; micro-CT ones can be queued)."""

    job_name = "active learning"
    cancelled_status = "cancelled; the queue and the current version are as they were"

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self._queue_dir = FileEdit(label="queue folder", mode="d", value=str(DEFAULT_QUEUE))
        self._image = ComboBox(label="image", choices=lambda _: self._layers("Image"))
        self._labels = ComboBox(label="corrected labels", choices=lambda _: self._layers("Labels"))
        self._organ = ComboBox(label="organ", choices=list(US_ORGANS))
        self._model = ComboBox(label="model", choices=lambda _: installed("unet"))
        self._send = PushButton(text="Send correction to queue")
        self._items = Table(value={"id": [], "state": [], "organ": [], "model": [], "touched": []})
        self._rank = PushButton(text="Rank frames to correct next")
        self._next = ComboBox(label="correct next", choices=[])
        self._retrain = PushButton(text="Retrain now")
        self._version_model = ComboBox(label="versions of", choices=lambda _: self._versioned())
        self._versions = Table(value={"version": [], "current": [], "parent": [], "held-out Dice": []})
        self._version = ComboBox(label="version", choices=lambda _: self._version_ids())
        self._promote = PushButton(text="Promote")
        self._rollback = PushButton(text="Roll back")
        self._plot = LossPlot()
        self.extend([self._queue_dir, self._image, self._labels, self._organ, self._model, self._send, self._items,
                     self._rank, self._next, self._retrain, self._cancel, self._progress, self._status])
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
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._image.reset_choices)
            event.connect(self._labels.reset_choices)
        self._queue: Queue | None = None
        self.ranking: list[tuple[int, float]] = []  #: (frame, entropy), the most uncertain first
        self.last_round: Round | None = None  #: the last round the widget's retraining ran
        self.repredicted = None  #: the layer predicted with the version a round promoted
        self._follow_labels()
        self.refresh()

    # -- choices -----------------------------------------------------------------------------
    def _versioned(self) -> list[str]:
        return [m.name for m in list_models() if m.source == "user" and model_versions.versions(m.name)]

    def _version_ids(self) -> list[str]:
        name = getattr(self, "_version_model", None) and self._version_model.value
        return [r["version"] for r in model_versions.versions(name)] if name else []

    def _follow_labels(self, _=None) -> None:
        """A layer made by the ultrasound widget names its organ and model: preselect them."""
        layer = self._labels.value
        meta = getattr(layer, "metadata", {}) or {}
        if meta.get("organ") in US_ORGANS:
            self._organ.value = meta["organ"]
        if meta.get("model") in self._model.choices:
            self._model.value = meta["model"]

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
    def queue(self) -> Queue:
        """The chosen queue, opened once per folder (opening checks the schema and cleans up)."""
        if self._queue is None or self._queue.root != self.queue_dir:
            self._queue = Queue(self.queue_dir)
        return self._queue

    def items(self) -> list[Item]:
        """The queue's items, as the table shows them."""
        return self.queue.items()

    # -- queue -------------------------------------------------------------------------------
    def send(self, image: Any = None, labels: Any = None, *, organ: str | None = None,
             model: str | None = None) -> Item | None:
        """Store a corrected labels layer, with its image and the prediction it started from, in the queue.

        By default the layers chosen in the widget; the organ and model default to those the
        ultrasound widget recorded on the labels layer. Returns the queued item (None when refused,
        with the reason shown).
        """
        for box, value in ((self._image, image), (self._labels, labels)):
            if value is not None:
                box.reset_choices()
                box.value = value
        if organ is not None:
            self._organ.value = organ
        if model is not None:
            self._model.value = model
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
            return None
        show_info(f"queued item {item.id}: {len(item.touched)} corrected frame(s)")
        self.refresh()
        return item

    def refresh(self) -> None:
        """Reload the queue's items and the versions table."""
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
        a version, the current image is predicted with it as a new layer (a second job).
        """
        job = self._start(self._run_worker, str(self.queue.root), show=self._show_pass, name="retraining",
                          buttons=self._starters())
        if job is None:
            return None
        self._plot.clear()  # before the first epoch arrives: progress comes through the event loop
        return job.then(self._after_pass)

    @thread_worker(ignore_errors=True)
    def _run_worker(self, queue_dir: str, stop):
        return (yield from run_reporting(run_worker_pass, stop, queue_dir))

    def _on_progress(self, event: tuple) -> None:
        super()._on_progress(event)
        if len(event) > 2:  # a round's epoch, loss and ETA
            epoch, epochs, loss, eta_s = event
            self._plot.add(epoch, loss)
            self._status.value = f"retraining: epoch {epoch}/{epochs}, loss {loss:.4f}, ETA {eta_s:.0f} s"

    def _show_pass(self, result: WorkerPass) -> WorkerPass:
        self.refresh()
        self.last_round = result.rounds[-1] if result.rounds else None
        last = self.last_round
        if last is None:
            self._status.value = (f"retraining stopped (exit {result.exit_code}): {result.last_line}"
                                  if result.exit_code else result.last_line or "nothing to retrain")
        else:
            self._status.value = f"{last.model} v{last.version}: {last.message}" if last.version else \
                f"{last.model}: round {last.state}: {last.message or result.last_line}"
        return result

    def _after_pass(self, result: WorkerPass) -> None:
        if self.last_round is not None and self.last_round.promoted:
            self.repredict(self.last_round.model)

    def repredict(self, model_name: str) -> Job | None:
        """Predict the current image with ``model_name``'s current version, as a Labels layer."""
        image = self._image.value
        if image is None or np.asarray(image.data).ndim != 3:
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
        rows = model_versions.versions(name) if name else []
        self._versions.value = {
            "version": [r["version"] for r in rows], "current": ["*" if r["current"] else "" for r in rows],
            "parent": [r["parent"] or "" for r in rows],
            "held-out Dice": [f"{r['metrics']['dice_before']:.3f} -> {r['metrics']['dice_after']:.3f}"
                              if (r.get("metrics") or {}).get("dice_after") is not None else "" for r in rows]}
        self._version.reset_choices()

    def versions(self, name: str) -> list[dict]:
        """The versions of a retrained model, oldest first (``current`` marks the one in use)."""
        return model_versions.versions(name)

    def promote(self, name: str, version: str) -> str | None:
        """Make ``version`` of ``name`` the current one; returns it (None when refused)."""
        return self._switch(name, version)

    def rollback(self, name: str) -> str | None:
        """Return ``name`` to the version that was current before; returns it (None when refused)."""
        return self._switch(name, None)

    def _switch(self, name: str | None, version: str | None) -> str | None:
        """Promote ``version``, or roll back when it is None; errors are shown, not raised."""
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
