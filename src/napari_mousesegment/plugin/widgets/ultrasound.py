"""Fetal-ultrasound widget: a composite in, one instance Labels layer per organ out, RoiSets for Fiji.

The organ probabilities of the last run are kept, so the threshold slider re-derives the
instances without running the networks again. A layer the user has painted into is never
overwritten: a new threshold or a new run then arrives as a new layer.

From a script::

    us = UltrasoundWidget(viewer)
    us.split("series_07/composite.tif")
    layers = us.run(organs=["heart", "liver"]).wait()     # organ -> Labels layer
    us.set_threshold("heart", 0.6)
    us.export_rois("roisets/")
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSlider, LineEdit, PushButton
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning

# Imported with the widget, not during a run (an import in a worker thread stalls the viewer).
from ...inference.ultrasound import instances, organ_probabilities
from ...io.composites import parse_grid, read_composite, split_montage, to_gray
from ...io.roi import read_rois, rois_to_labels
from ...jobs.rois import write_fiji_files, write_rois
from ...organs import US_FRAMES, US_ORGANS
from ...store.load import load_organ_model
from ..layers import us_labels_layer
from .base import Job, JobWidget, installed
from .edits import is_edited, set_labels, show_result
from .threads import run_reporting

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
        super().__init__(napari_viewer)
        self._probabilities: dict[str, np.ndarray] = {}
        self._source = ComboBox(label="composite layer", choices=lambda _: self._layers("Image"))
        self._file = FileEdit(label="or file", mode="r", filter="*.tif *.tiff *.png *.jpg *.jpeg", value="")
        self._grid = LineEdit(label="grid RxC", value="")
        self._split = PushButton(text="Split into frames")
        self._use = {o: CheckBox(text=o, value=True) for o in US_ORGANS}
        self._models = {o: ComboBox(label=f"{o} model", choices=partial(self._unet_names, o)) for o in US_ORGANS}
        self._run = PushButton(text="Run")
        self._threshold_organ = ComboBox(label="threshold of", choices=lambda _: list(self._probabilities))
        self._threshold = FloatSlider(label="threshold", min=0.05, max=0.99, step=0.01, value=0.5, enabled=False)
        self._folder = FileEdit(label="RoiSet folder", mode="d", value="")
        self._export = PushButton(text="Export RoiSets", enabled=False)
        self._import_file = FileEdit(label="import RoiSet", mode="r", filter="*.zip *.roi", value="")
        self._import = PushButton(text="Import as labels")
        self.extend([self._source, self._file, self._grid, self._split, *self._use.values(), *self._models.values(),
                     self._run, self._cancel, self._progress, self._threshold_organ, self._threshold, self._folder,
                     self._export, self._import_file, self._import, self._status])
        self._split.clicked.connect(lambda: self.split())
        self._run.clicked.connect(lambda: self.run())
        self._threshold.changed.connect(self._rethreshold)
        self._threshold_organ.changed.connect(self._show_threshold)
        self._export.clicked.connect(lambda: self.export_rois(self._folder.value))
        self._import.clicked.connect(lambda: self.import_rois(self._import_file.value))
        napari_viewer.layers.events.inserted.connect(self._source.reset_choices)
        napari_viewer.layers.events.removed.connect(self._source.reset_choices)
        self.frames_layer = None  #: the (frames, y, x) image layer the U-Nets run on
        self.organ_layers: dict[str, Any] = {}  #: organ -> the Labels layer the slider and export act on
        self._min_size: dict[str, int] = {}
        self.thresholds: dict[str, float] = {}

    @staticmethod
    def _unet_names(organ: str, _=None) -> list[str]:
        return sorted(installed("unet") + installed("bioimageio"), key=lambda n: (organ not in n, n))

    # -- the inputs, for scripts -------------------------------------------------------------
    @property
    def organs(self) -> list[str]:
        """The organs a run segments."""
        return [o for o, box in self._use.items() if box.value]

    @organs.setter
    def organs(self, names: list[str]) -> None:
        unknown = sorted(set(names) - set(self._use))
        if unknown:
            raise ValueError(f"this widget segments {', '.join(US_ORGANS)}, not {unknown}")
        for organ, box in self._use.items():
            box.value = organ in names

    @property
    def models(self) -> dict[str, str]:
        """Organ -> the installed U-Net that segments it."""
        return {o: box.value for o, box in self._models.items()}

    @models.setter
    def models(self, chosen: dict[str, str]) -> None:
        for organ, name in chosen.items():
            if organ not in self._models or name not in self._models[organ].choices:
                raise ValueError(f"no installed U-Net {name!r} for {organ!r}; see `mousesegment models list`")
            self._models[organ].value = name

    # -- frames ------------------------------------------------------------------------------
    def split(self, source: Any = None, grid: tuple[int, int] | str | None = None) -> Any:
        """The composite as a (frames, y, x) image layer, which later runs use; returns the layer.

        ``source`` is a file or folder path, or an image layer (a montage, or a frame stack used as
        it is); by default the file chosen in the widget, else its chosen layer. None when refused
        (the reason is shown).
        """
        try:
            grid = parse_grid(grid) if isinstance(grid, str) else grid
            if grid is None:
                grid = parse_grid(self._grid.value)
            if source is None:
                path = str(self._file.value or "")
                source = path if path not in ("", ".") else self._source.value
            if source is None:
                raise ValueError("choose a composite layer or a file first")
            if isinstance(source, (str, Path)):
                composite = read_composite(source, grid)
                frames, name, note = composite.frames, Path(source).stem, f"{len(composite.frames)} frames"
            else:
                self._source.reset_choices()
                self._source.value = source  # the widget shows what a script chose
                data = np.asarray(source.data)
                if data.ndim == 3 and not getattr(source, "rgb", False) and grid is None:
                    frames_from_layer(source)  # checks dtype and values
                    self.frames_layer = source  # already a frame stack: used as it is
                    self._status.value = f"{source.name}: {len(data)} frames"
                    return source
                frames, note = frames_from_layer(source, grid)
                name = source.name
        except (ValueError, OSError) as exc:
            show_error(str(exc))
            return None
        if len(frames) != US_FRAMES:
            show_warning(f"{name}: {len(frames)} frames, not the usual {US_FRAMES}")
        self.frames_layer = self.viewer.add_image(frames, name=f"{name} frames", axis_labels=("frame", "y", "x"),
                                                  colormap="gray")
        self._status.value = f"{name}: {len(frames)} frames ({note})" if note else f"{name}: {len(frames)} frames"
        return self.frames_layer

    # -- the job -----------------------------------------------------------------------------
    def run(self, frames: Any = None, *, organs: list[str] | None = None,
            models: dict[str, str] | None = None) -> Job | None:
        """Run each chosen organ's U-Net on ``frames`` (a frame-stack layer; default: the last split).

        Returns the :class:`Job`, whose result is {organ: Labels layer}; None when refused (the
        reason is shown).
        """
        try:
            if organs is not None:
                self.organs = organs
            if models is not None:
                self.models = models
            if not self.organs:
                raise ValueError("choose at least one organ")
            chosen = {o: self._models[o].value for o in self.organs}
            missing = [o for o, m in chosen.items() if not m]
            if missing:
                raise ValueError(f"no U-Net installed for {', '.join(missing)}; see `mousesegment models list`")
        except ValueError as exc:
            show_error(str(exc))
            return None
        if frames is not None and self.split(frames) is None:
            return None
        if self.frames_layer is None or self.frames_layer not in self.viewer.layers:
            if self.split() is None:
                return None
        return self._start(self._predict, np.asarray(self.frames_layer.data), chosen, self.frames_layer.name,
                           show=self._show, buttons=(self._run, self._split))

    @thread_worker(ignore_errors=True)  # errors reach the job as a message, not a crash
    def _predict(self, frames: np.ndarray, models: dict[str, str], source: str, stop):
        results = {}
        for organ, spec in models.items():
            model, config, _ = load_organ_model(spec)
            prob = yield from run_reporting(organ_probabilities, stop, model, frames)
            results[organ] = (spec, prob, config.threshold, config.min_size,
                              instances(prob, config.threshold, config.min_size))
        return results, source

    def _show(self, outcome) -> dict[str, Any]:
        results, source = outcome
        for organ, (spec, prob, threshold, min_size, labels) in results.items():
            self._probabilities[organ], self._min_size[organ] = prob, min_size
            self.thresholds[organ] = threshold
            data, kwargs, _ = us_labels_layer(labels, organ, f"{organ} instances")
            # What the correction starts from: the active-learning widget sends only the frames that differ.
            kwargs["metadata"].update(model=spec, source=source)
            self.organ_layers[organ] = show_result(self.viewer, self.organ_layers.get(organ), data, kwargs)
        self._threshold_organ.reset_choices()
        self._threshold_organ.value = next(iter(results))
        self._show_threshold()
        self._threshold.enabled = self._export.enabled = True
        counts = ", ".join(f"{o} {int(sum(len(np.unique(f)) - 1 for f in r[4]))}" for o, r in results.items())
        self._status.value = f"done: {counts} instances"
        return {organ: self.organ_layers[organ] for organ in results}

    # -- threshold ---------------------------------------------------------------------------
    def _show_threshold(self, _=None) -> None:
        organ = self._threshold_organ.value
        if organ in self.thresholds:
            with self._threshold.changed.blocked():
                self._threshold.value = self.thresholds[organ]

    def set_threshold(self, organ: str, value: float) -> Any:
        """New instances of ``organ`` from its kept probabilities (the network does not run again).

        The organ's layer changes in place as one undoable step; when the user has painted into it,
        the new instances go to a new layer instead and the painted one is left as it is. Returns
        the layer that holds them (None when ``organ`` has no result yet).
        """
        layer = self.organ_layers.get(organ)
        if organ not in self._probabilities or layer is None or layer not in self.viewer.layers:
            return None
        value = float(value)
        self.thresholds[organ] = value
        labels = instances(self._probabilities[organ], value, self._min_size[organ])
        if is_edited(layer):
            data, kwargs, _ = us_labels_layer(labels, organ, f"{organ} instances (threshold {value:.2f})")
            kwargs["metadata"].update(model=layer.metadata.get("model"), source=layer.metadata.get("source"),
                                      prediction=labels.copy())
            self.organ_layers[organ] = self.viewer.add_labels(data, **kwargs)
            self._status.value = (f"{organ}: {layer.name!r} holds your edits and is kept; threshold {value:.2f} "
                                  f"went to a new layer")
        else:
            set_labels(layer, labels)
            self._status.value = f"{organ}: threshold {value:.2f} (Ctrl+Z undoes it)"
        return self.organ_layers[organ]

    def _rethreshold(self, value: float) -> None:
        if self._threshold_organ.value:
            self.set_threshold(self._threshold_organ.value, value)

    # -- ROIs --------------------------------------------------------------------------------
    def export_rois(self, folder: str | Path) -> list[Path]:
        """One ORGAN_RoiSet.zip per organ layer in ``folder``, replacing older ones; with the frames
        at hand, also frames.tif and a README.txt for Fiji. Returns the RoiSets written."""
        folder = Path(folder)
        if str(folder) in ("", ".") or not folder.is_dir():
            show_error(f"choose an existing folder for the RoiSets (got {str(folder)!r})")
            return []
        written = {}
        for organ, layer in self.organ_layers.items():
            if layer in self.viewer.layers:
                written[organ] = write_rois(folder / f"{organ}_RoiSet.zip", np.asarray(layer.data), organ,
                                            log=lambda m: show_info(m.strip()))
        if written and self.frames_layer is not None and self.frames_layer in self.viewer.layers:
            write_fiji_files(folder, np.asarray(self.frames_layer.data), written, labels=False)
        self._status.value = f"wrote {len(written)} RoiSet(s) to {folder}"
        return list(written.values())

    def import_rois(self, path: str | Path) -> Any:
        """A RoiSet as instance labels over the current frames (ROIs on their frames), as a new layer."""
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
