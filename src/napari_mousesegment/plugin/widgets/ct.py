"""Micro-CT segmentation widget: an HU image layer in, an organ Labels layer and a volume table out.

From a script::

    ct = CTWidget(viewer)   # or viewer.window.add_plugin_dock_widget("napari-mousesegment", "Micro-CT segmentation")
    layer = ct.run(image_layer, model="mosnet-synthetic", condition="contrast").wait()
    ct.export_volumes("volumes.csv")
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, LineEdit, PushButton, Select, Table
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info

# Imported with the widget, not during a run: an import inside the worker thread holds the
# import lock and the GIL long enough to stall the viewer (measured: 350 ms).
from ...inference.ct import predict_volume
from ...io.hu import hu_map, parse_hu
from ...metrics import volume_mm3
from ...models.folder import ModelError
from ...models.preprocess import pick_device
from ...organs import volume_flag, volume_range_text
from ...store.load import load_mosnet
from ...store.registry import model_config
from ..layers import ct_labels_layer
from .base import Job, JobWidget, installed
from .edits import show_result
from .threads import run_reporting

if TYPE_CHECKING:
    import napari


def check_ct_layer(layer, hu: str | tuple[float, float] | None = None) -> tuple[Any, tuple[float, float, float]]:
    """The layer's volume and its voxel size in mm, or a ValueError that says what is wrong.

    The volume is the layer's own array (numpy or lazy dask; the full-resolution level of a
    multiscale layer): nothing is loaded here. Without ``hu`` it must already be in HU; with it
    (``"auto"`` or raw AIR,WATER values, as ``--hu``), any grey values are accepted and mapped
    when the job runs.
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if getattr(layer, "rgb", False):
        raise ValueError(f"{layer.name}: an RGB image is not a CT scan in HU")
    if data.ndim != 3:
        raise ValueError(f"{layer.name}: micro-CT needs a 3D (z, y, x) volume; this layer has {data.ndim} dimensions")
    dtype = np.dtype(data.dtype)
    if not np.issubdtype(dtype, np.number) or dtype == bool:
        raise ValueError(f"{layer.name}: {dtype} data is not an image of grey values")
    if hu is None and (dtype == np.uint8 or getattr(layer, "metadata", {}).get("hu") is False):
        raise ValueError(f"{layer.name}: {dtype} data is not in HU (the reader says so, or the type cannot hold "
                         "HU); choose a calibration in 'grey values' (auto, or the raw values of air and water)")
    units = [str(u) for u in getattr(layer, "units", ())]
    if not units or not all(u in ("mm", "millimeter") for u in units):
        raise ValueError(f"{layer.name}: the layer has no voxel size in mm (units {units or 'unset'}); set "
                         "layer.scale in mm and layer.units = 'mm', or open the scan with this plugin's reader")
    return data, tuple(float(s) for s in layer.scale)


def _flag_text(organ: str, flag: str) -> str:
    """A volume flag for the table: ``ok``, or the flag with the plausible range (``high (80-450 mm³)``)."""
    band = volume_range_text(organ)
    return flag if flag in ("ok", "") or not band else f"{flag} ({band})"


class CTWidget(JobWidget):
    """Segment the organs of a micro-CT scan with a MOSnet model, off the GUI thread."""

    job_name = "micro-CT segmentation"

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self._image = ComboBox(label="image", choices=lambda _: self._layers("Image"))
        names = installed("mosnet")
        self._model = ComboBox(label="model", choices=names, value=names[0] if names else None)
        self._folder = FileEdit(label="or folder", mode="d", value="")
        self._meta: dict = {}
        self._condition = ComboBox(label="condition", choices=lambda _: self._meta.get("conditions", []))
        self._organs = Select(label="organs", choices=lambda _: self._meta.get("organs", []))
        self._hu = LineEdit(label="grey values", value="HU",
                            tooltip="HU: the scan is in HU. auto: find air and soft tissue in the histogram. "
                                    "AIR,WATER: the raw values of air and water (as --hu)")
        self._run = PushButton(text="Run")
        self._table = Table(value={"organ": [], "volume (mm³)": [], "voxels": [], "flag": []})
        self._export = PushButton(text="Export volumes as CSV…", enabled=False)
        self.extend([self._image, self._model, self._folder, self._condition, self._organs, self._hu, self._run,
                     self._cancel, self._progress, self._status, self._table, self._export])
        self._run.clicked.connect(lambda: self.run())
        self._model.changed.connect(self._load_model_info)
        self._folder.changed.connect(self._load_model_info)
        self._export.clicked.connect(self._ask_export)
        napari_viewer.layers.events.inserted.connect(self._image.reset_choices)
        napari_viewer.layers.events.removed.connect(self._image.reset_choices)
        self.result_layer = None
        #: the last run's organ volumes: organ, volume_mm3, voxels, flag (:func:`~...organs.volume_flag`)
        self.volumes: list[dict] = []
        self._load_model_info()

    # -- the inputs, for scripts -------------------------------------------------------------
    @property
    def image_layer(self):
        """The image layer (HU, scale in mm) to segment."""
        return self._image.value

    @image_layer.setter
    def image_layer(self, layer) -> None:
        self._image.reset_choices()
        self._image.value = layer

    @property
    def model(self) -> str:
        """The MOSnet: an installed model's name, or a model folder."""
        folder = self._folder.line_edit.value.strip()  # the typed text: an empty box is no folder
        return folder or (self._model.value or "")

    @model.setter
    def model(self, spec: str | Path) -> None:
        if str(spec) in self._model.choices:
            self._folder.line_edit.value = ""
            self._model.value = str(spec)
        else:
            self._folder.value = str(spec)
        self._load_model_info()
        if not self._meta:
            raise ValueError(self._status.value)

    @property
    def condition(self) -> str | None:
        """The condition of the scan (native, contrast, or another the model knows)."""
        return self._condition.value

    @condition.setter
    def condition(self, value: str) -> None:
        if value not in self._condition.choices:
            raise ValueError(f"model {self.model} knows conditions {list(self._condition.choices)}, not {value!r}")
        self._condition.value = value

    @property
    def organs(self) -> list[str]:
        """The organs to keep in the result (default: all the model's)."""
        return list(self._organs.value)

    @organs.setter
    def organs(self, names: list[str]) -> None:
        unknown = sorted(set(names) - set(self._organs.choices))
        if unknown:
            raise ValueError(f"model {self.model} segments {list(self._organs.choices)}, not {unknown}")
        self._organs.value = list(names)

    @property
    def hu(self) -> str | tuple[float, float] | None:
        """How grey values become HU: None (already HU), ``"auto"`` or raw ``(AIR, WATER)``."""
        text = self._hu.value.strip()
        return None if text.upper() in ("", "HU") else parse_hu(text)

    @hu.setter
    def hu(self, value: str | tuple[float, float] | None) -> None:
        text = "HU" if value is None else value if isinstance(value, str) else f"{value[0]:g},{value[1]:g}"
        if text.upper() != "HU":
            parse_hu(text)  # refuse a bad value here, not when the job starts
        self._hu.value = text

    def _load_model_info(self, _=None) -> None:
        try:
            self._meta = model_config(self.model)
        except (ModelError, OSError) as exc:
            self._meta = {}
            self._status.value = f"model: {exc}"
        self._condition.reset_choices()
        self._organs.reset_choices()
        self._organs.value = self._meta.get("organs", [])
        if self._meta:
            self._status.value = f"model {self.model}: {len(self._organs.choices)} organs"

    # -- the job -----------------------------------------------------------------------------
    def run(self, layer=None, *, model: str | None = None, condition: str | None = None,
            organs: list[str] | None = None, hu: str | tuple[float, float] | None = None) -> Job | None:
        """Segment ``layer`` (default: the chosen image layer) in the background.

        ``hu`` calibrates a scan that is not in HU (``"auto"`` or raw ``(AIR, WATER)``, as the CLI's
        ``--hu``); a lazy (dask) or multiscale layer is read slab by slab, never loaded whole.

        Returns the :class:`Job`, whose result is the new organ Labels layer; None when the input
        is refused (the reason is shown).
        """
        try:
            if layer is not None:
                self.image_layer = layer
            if model is not None:
                self.model = model
            if condition is not None:
                self.condition = condition
            if organs is not None:
                self.organs = organs
            if hu is not None:
                self.hu = hu
            source = self.image_layer
            if source is None:
                raise ValueError("choose an image layer in HU first")
            volume, spacing = check_ct_layer(source, self.hu)
            if not self.organs:
                raise ValueError("choose at least one organ")
        except ValueError as exc:
            show_error(str(exc))
            return None
        return self._start(self._segment, volume, spacing, self.model, self.condition, self.organs, source,
                           self.hu, show=self._show, buttons=(self._run,))

    @thread_worker(ignore_errors=True)  # errors reach the job as a message, not a crash
    def _segment(self, volume, spacing, model_spec, condition, organs, layer, hu, stop):
        model, _, _ = load_mosnet(model_spec, pick_device("auto"))
        if hu is not None:
            volume = hu_map(volume, hu, layer.name).apply(volume)  # lazy on dask; a copy in float32 otherwise
        pred = yield from run_reporting(predict_volume, stop, model, volume, spacing, condition)
        keep = {o: v for o, v in pred.organs.items() if o in organs}
        labels = np.where(np.isin(pred.labels, list(keep.values())), pred.labels, 0).astype(np.uint8)
        return labels, keep, spacing, layer, model_spec, condition

    def _show(self, result) -> Any:
        labels, organs, spacing, source, model_spec, condition = result
        data, kwargs, _ = ct_labels_layer(labels, organs, spacing, f"{source.name} organs ({model_spec})")
        kwargs["translate"] = tuple(source.translate)
        kwargs["metadata"].update(model=model_spec, condition=condition, spacing_mm=tuple(spacing), source=source.name)
        self.result_layer = show_result(self.viewer, self.result_layer, data, kwargs)
        self.volumes = []
        for o, v in organs.items():
            mm3 = round(volume_mm3(labels == v, spacing), 2)
            self.volumes.append({"organ": o, "volume_mm3": mm3, "voxels": int((labels == v).sum()),
                                 "flag": volume_flag(o, mm3)})
        self._table.value = {"organ": [r["organ"] for r in self.volumes],
                             "volume (mm³)": [r["volume_mm3"] for r in self.volumes],
                             "voxels": [r["voxels"] for r in self.volumes],
                             "flag": [_flag_text(r["organ"], r["flag"]) for r in self.volumes]}
        self._export.enabled = True
        flagged = [r["organ"] for r in self.volumes if r["flag"] not in ("ok", "")]
        self._status.value = f"done: {len(organs)} organs" + (
            f"; check {', '.join(flagged)}: volume outside the plausible range, or absent" if flagged else "")
        return self.result_layer

    def export_volumes(self, path: str | Path) -> Path:
        """Write the last run's organ volumes as CSV (organ, volume_mm3, voxels, flag)."""
        path = Path(path)
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["organ", "volume_mm3", "voxels", "flag"])
            writer.writeheader()
            writer.writerows(self.volumes)
        return path

    def _ask_export(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self.native, "Export organ volumes", "volumes.csv", "CSV (*.csv)")
        if path:
            show_info(f"volumes written to {self.export_volumes(path)}")
