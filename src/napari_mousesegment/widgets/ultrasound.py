"""Fetal-ultrasound widget: a composite in, one instance Labels layer per organ out, RoiSets for Fiji.

The organ probabilities of the last run are kept, so the threshold slider re-derives the
instances without running the networks again.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, FileEdit, FloatSlider, LineEdit, PushButton)
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning

# Imported with the widget, not during a run (an import in a worker thread stalls the viewer).
from ..inference.ultrasound import instances, predict_probabilities
from ..io.composites import read_composite, split_montage, to_gray
from ..io.roi import read_rois, rois_to_labels
from ..layers import us_labels_layer
from ..models.registry import list_models
from ..models.store import load_unet
from ..organs import US_ORGANS
from ..us_jobs import write_rois
from ._base import JobWidget
from ._worker import run_reporting

if TYPE_CHECKING:
    import napari


def frames_from_layer(layer, grid: tuple[int, int] | None = None) -> tuple[np.ndarray, str]:
    """(n, H, W) gray frames from an image layer: a frame stack, or a montage to split (by ``grid``
    or detected); and a note of what was done."""
    data = np.asarray(layer.data)
    note = ""
    if getattr(layer, "rgb", False):
        rgb = data[..., :3]
        note = "RGB converted to gray" + ("" if np.all(rgb == rgb[..., :1]) else " (luminance; the channels differed)")
        data = np.stack([to_gray(f) for f in data]) if data.ndim == 4 else to_gray(data)
    if data.ndim == 2:
        frames, grid = split_montage(data, grid)
        return frames, f"{note}; " * bool(note) + f"montage split {grid[0]}x{grid[1]}"
    if data.ndim != 3:
        raise ValueError(f"{layer.name}: expected a montage or a (frames, y, x) stack, got shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise ValueError(f"{layer.name}: {data.dtype} data is not an image")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise ValueError(f"{layer.name}: the frames contain NaN or infinite values")
    return data, note


class UltrasoundWidget(JobWidget):
    """Split a composite, run the organ U-Nets, tune the threshold, export and import RoiSets."""

    job_name = "ultrasound segmentation"

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._probabilities: dict[str, np.ndarray] = {}
        self._source = ComboBox(label="composite layer", choices=self._images)
        self._file = FileEdit(label="or file", mode="r", filter="*.tif *.tiff *.png *.jpg *.jpeg", value="")
        self._grid = LineEdit(label="grid RxC", value="")
        self._split = PushButton(text="Split into frames")
        self._use = {o: CheckBox(text=o, value=True) for o in US_ORGANS}
        self._models = {o: ComboBox(label=f"{o} model", choices=partial(self._unet_names, o)) for o in US_ORGANS}
        self._threshold_organ = ComboBox(label="threshold of", choices=lambda _: list(self._probabilities))
        self._threshold = FloatSlider(label="threshold", min=0.05, max=0.99, step=0.01, value=0.5, enabled=False)
        self._folder = FileEdit(label="RoiSet folder", mode="d", value="")
        self._export = PushButton(text="Export RoiSets", enabled=False)
        self._import_file = FileEdit(label="import RoiSet", mode="r", filter="*.zip *.roi", value="")
        self._import = PushButton(text="Import as labels")
        self.extend([self._source, self._file, self._grid, self._split, *self._use.values(), *self._models.values(),
                     self._run, self._cancel, self._progress, self._threshold_organ, self._threshold, self._folder, self._export,
                     self._import_file, self._import, self._status])
        self._split.clicked.connect(self.split)
        self._threshold.changed.connect(self._rethreshold)
        self._threshold_organ.changed.connect(self._show_threshold)
        self._export.clicked.connect(lambda: self.export_rois(self._folder.value))
        self._import.clicked.connect(lambda: self.import_rois(self._import_file.value))
        napari_viewer.layers.events.inserted.connect(self._source.reset_choices)
        napari_viewer.layers.events.removed.connect(self._source.reset_choices)
        self.frames_layer = None
        self.organ_layers: dict[str, object] = {}
        self._min_size: dict[str, int] = {}
        self.thresholds: dict[str, float] = {}

    def _images(self, _=None) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    @staticmethod
    def _unet_names(organ: str, _=None) -> list[str]:
        rows = [m for m in list_models() if m.kind == "unet" and m.source != "registry"]
        return sorted((m.name for m in rows), key=lambda n: (organ not in n, n))

    def _parse_grid(self) -> tuple[int, int] | None:
        text = self._grid.value.strip().lower()
        if not text:
            return None
        rows, _, cols = text.partition("x")
        try:
            grid = int(rows), int(cols)
        except ValueError:
            raise ValueError(f"grid must look like 5x7, got {self._grid.value!r}") from None
        if min(grid) < 1:
            raise ValueError(f"grid must be at least 1x1, got {self._grid.value!r}")
        return grid

    def split(self) -> None:
        """The chosen file or layer as a (frames, y, x) image layer."""
        try:
            path = str(self._file.value or "")
            if path not in ("", "."):
                composite = read_composite(path, self._parse_grid())
                frames, name, note = composite.frames, Path(path).stem, f"{len(composite.frames)} frames"
            else:
                layer = self._source.value
                if layer is None:
                    raise ValueError("choose a composite layer or a file first")
                if np.asarray(layer.data).ndim == 3 and not getattr(layer, "rgb", False) and not self._grid.value:
                    frames_from_layer(layer)  # checks dtype and values
                    self.frames_layer = layer  # already a frame stack: used as it is
                    self._status.value = f"{layer.name}: {len(layer.data)} frames"
                    return
                frames, note = frames_from_layer(layer, self._parse_grid())
                name = layer.name
        except (ValueError, OSError) as exc:
            show_error(str(exc))
            return
        if len(frames) != 35:
            show_warning(f"{name}: {len(frames)} frames, not the usual 35")
        self.frames_layer = self.viewer.add_image(frames, name=f"{name} frames", axis_labels=("frame", "y", "x"),
                                                  colormap="gray")
        self._status.value = f"{name}: {len(frames)} frames ({note})" if note else f"{name}: {len(frames)} frames"

    def run(self) -> None:
        """Run each chosen organ's U-Net on the frames; instances arrive as one Labels layer per organ."""
        organs = [o for o, box in self._use.items() if box.value]
        if self.frames_layer is None or self.frames_layer not in self.viewer.layers:
            self.split()
            if self.frames_layer is None:
                return
        frames = np.asarray(self.frames_layer.data)
        try:
            if not organs:
                raise ValueError("choose at least one organ")
            models = {o: self._models[o].value for o in organs}
            missing = [o for o, m in models.items() if not m]
            if missing:
                raise ValueError(f"no U-Net installed for {', '.join(missing)}; see `mousesegment models list`")
        except ValueError as exc:
            show_error(str(exc))
            return
        self._start(self._predict, frames, models)

    @thread_worker(ignore_errors=True)  # errors reach _on_error as a message, not a crash
    def _predict(self, frames: np.ndarray, models: dict[str, str]):
        results = {}
        for organ, spec in models.items():
            model, config, _ = load_unet(spec)
            prob = yield from run_reporting(predict_probabilities, self._stop, model, frames)
            results[organ] = (prob, config.threshold, config.min_size, instances(prob, config.threshold,
                                                                                   config.min_size))
        return results



    def _on_done(self, result) -> None:
        results = result
        for organ, (prob, threshold, min_size, labels) in results.items():
            self._probabilities[organ], self._min_size[organ] = prob, min_size
            self.thresholds[organ] = threshold
            data, kwargs, _ = us_labels_layer(labels, organ, f"{organ} instances")
            # What the correction starts from: the active-learning widget sends only the frames that differ.
            kwargs["metadata"].update(model=self._models[organ].value, prediction=labels.copy())
            old = self.organ_layers.get(organ)
            if old is not None and old in self.viewer.layers:
                self.viewer.layers.remove(old)
            self.organ_layers[organ] = self.viewer.add_labels(data, **kwargs)
        self._threshold_organ.reset_choices()
        self._threshold_organ.value = next(iter(results))
        self._show_threshold()
        self._threshold.enabled = self._export.enabled = True
        counts = ", ".join(f"{o} {int(sum(len(np.unique(f)) - 1 for f in r[3]))}" for o, r in results.items())
        self._status.value = f"done: {counts} instances"

    def _show_threshold(self, _=None) -> None:
        organ = self._threshold_organ.value
        if organ in self.thresholds:
            with self._threshold.changed.blocked():
                self._threshold.value = self.thresholds[organ]

    def set_threshold(self, organ: str, value: float) -> None:
        """New instances of ``organ`` from its kept probabilities; the network does not run again."""
        layer = self.organ_layers.get(organ)
        if organ not in self._probabilities or layer is None or layer not in self.viewer.layers:
            return
        self.thresholds[organ] = float(value)
        layer.data = instances(self._probabilities[organ], float(value), self._min_size[organ])
        layer.metadata["prediction"] = np.array(layer.data, copy=True)
        self._status.value = f"{organ}: threshold {value:.2f}"

    def _rethreshold(self, value: float) -> None:
        if self._threshold_organ.value:
            self.set_threshold(self._threshold_organ.value, value)



    def export_rois(self, folder) -> list[Path]:
        """One ORGAN_RoiSet.zip per organ layer in ``folder``, replacing older ones."""
        folder = Path(folder)
        if str(folder) in ("", ".") or not folder.is_dir():
            show_error(f"choose an existing folder for the RoiSets (got {str(folder)!r})")
            return []
        written = []
        for organ, layer in self.organ_layers.items():
            if layer in self.viewer.layers:
                written.append(write_rois(folder / f"{organ}_RoiSet.zip", np.asarray(layer.data), organ,
                                          log=lambda m: show_info(m.strip())))
        self._status.value = f"wrote {len(written)} RoiSet(s) to {folder}"
        return written

    def import_rois(self, path) -> object | None:
        """A RoiSet as instance labels over the current frames (ROIs on their frames)."""
        path = Path(path)
        try:
            if self.frames_layer is None or self.frames_layer not in self.viewer.layers:
                raise ValueError("split a composite into frames first: the ROIs need its frame size")
            shape = np.asarray(self.frames_layer.data).shape
            labels = rois_to_labels(read_rois(path), shape, source=path.name)
        except (ValueError, OSError) as exc:
            show_error(str(exc))
            return None
        organ = next((o for o in US_ORGANS if o in path.stem.lower()), path.stem)
        data, kwargs, _ = us_labels_layer(labels, organ, f"{path.stem} (imported)")
        return self.viewer.add_labels(data, **kwargs)
