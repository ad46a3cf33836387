"""A bioimage.io model package from elsewhere, run by bioimageio.core inside our pipeline.

``mousesegment models import`` installs another lab's package (a 2D or 3D single-channel
segmentation model) as a folder holding ``package.zip`` and a ``config.json`` of kind
"bioimageio". The package's own pre- and postprocessing run as it describes them; we add what
the format leaves out: the threshold, instances and RoiSets (2D models take the place of an organ
U-Net in ``predict ultrasound`` and the ultrasound widget).

Only TorchScript and ONNX weights are run: a ``pytorch_state_dict`` entry would import the
package's own Python architecture file, code from another lab that this plugin will not execute.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Weight formats we run, best first, and the module each needs.
RUNNABLE = {"torchscript": "torch", "onnx": "onnxruntime"}


@dataclass
class PackagedConfig:
    """What config.json records of an imported package."""

    organ: str = "organ"
    spatial_dims: int = 2
    weights_format: str = "torchscript"
    threshold: float = 0.5  #: probability above which a pixel is the organ
    min_size: int = 30  #: instances smaller than this many pixels are dropped (2D)
    kind: str = "bioimageio"
    version: str = "0"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PackagedConfig:
        from .schema import check_config

        check_config({**data, "kind": "bioimageio"})
        names = cls.__dataclass_fields__
        config = cls(**{k: v for k, v in data.items() if k in names})
        if config.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {config.spatial_dims!r}")
        if config.weights_format not in RUNNABLE:
            raise ValueError(f"weights_format must be one of {sorted(RUNNABLE)}, got {config.weights_format!r}")
        if not 0.0 < float(config.threshold) < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {config.threshold!r}")
        return config


class PackagedModel:
    """Probabilities from a bioimage.io package: (N, H, W) frames one by one, or a (Z, Y, X) volume.

    An input of a size the package does not take is mirror-padded to the next size it does and
    cropped back; an axis longer than a fixed size is tiled by bioimageio.core.
    """

    def __init__(self, package: Path, config: PackagedConfig, device: str = "cpu") -> None:
        from bioimageio.core import create_prediction_pipeline, load_description
        from bioimageio.spec.model import v0_4, v0_5

        descr = load_description(package, perform_io_checks=False)
        if not isinstance(descr, (v0_4.ModelDescr, v0_5.ModelDescr)):
            raise ValueError(f"{package}: not a bioimage.io model description")
        self.config = config
        self.descr = descr
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit.load
            self.pipeline = create_prediction_pipeline(descr, devices=[str(device)],
                                                       weights_format=config.weights_format)

    def eval(self) -> PackagedModel:
        """For symmetry with torch networks: a package always runs in inference mode."""
        return self

    def _run(self, array: np.ndarray) -> np.ndarray:
        """One 2D frame (y, x) or 3D volume (z, y, x) to the package's probability of the same shape."""
        from bioimageio.core import Sample, Tensor, predict
        from bioimageio.core.digest_spec import get_axes_infos, get_member_id

        ours = ["z", "y", "x"][-array.ndim:]
        descr_in = self.descr.inputs[0]
        axes = [str(a.id) for a in get_axes_infos(descr_in)]
        present = [a for a in axes if a in ours]
        moved = np.transpose(array, [ours.index(a) for a in present])
        rules = [_size_rule(descr_in, a) for a in present]
        padded, crop = _pad_to_valid(moved, rules)
        data = padded.reshape([padded.shape[present.index(a)] if a in present else 1 for a in axes])
        sample = Sample(members={get_member_id(descr_in): Tensor.from_numpy(data.astype(np.float32), dims=axes)},
                        stat={}, id="input")
        tiled = any(isinstance(rule, int) and n > rule for rule, n in zip(rules, padded.shape))
        result = predict(model=self.pipeline, inputs=sample, blocksize_parameter=0 if tiled else None)
        tensor = result.members[get_member_id(self.descr.outputs[0])]
        dims = [str(d) for d in tensor.dims]
        values = np.asarray(tensor.data)
        keep = [dims.index(a) for a in present]
        values = np.transpose(values, [i for i in range(values.ndim) if i not in keep] + keep)
        values = values.reshape(values.shape[-len(present):])[crop]
        return np.transpose(values, [present.index(a) for a in ours])

    def probabilities(self, data: np.ndarray, progress=None, should_stop=lambda: False) -> np.ndarray:
        """Float32 probabilities shaped like ``data``: (N, H, W) frames for a 2D package, a (Z, Y, X)
        volume for a 3D one."""
        data = np.asarray(data)
        if data.ndim != 3:
            raise ValueError(f"expected (frames, height, width) or (z, y, x), got shape {data.shape}")
        if self.config.spatial_dims == 3:
            return self._run(data).astype(np.float32)
        out = np.empty(data.shape, np.float32)
        for k, frame in enumerate(data):
            if should_stop():
                raise InterruptedError("prediction cancelled")
            out[k] = self._run(frame)
            if progress:
                progress(k + 1, len(data))
        return out


def _size_rule(descr_in, axis: str) -> int | tuple[int, int] | None:
    """An input axis's allowed sizes: a fixed int, (min, step), or None when any size goes."""
    from bioimageio.spec.model import v0_4, v0_5

    if isinstance(descr_in, v0_4.InputTensorDescr):
        shape = descr_in.shape
        index = descr_in.axes.index(axis)
        if isinstance(shape, v0_4.ParameterizedInputShape):
            return int(shape.min[index]), int(shape.step[index]) or 0
        return int(shape[index])
    size = next(a for a in descr_in.axes if str(a.id) == axis).size
    if isinstance(size, v0_5.ParameterizedSize):
        return int(size.min), int(size.step)
    return int(size) if isinstance(size, int) else None


def _pad_to_valid(array: np.ndarray, rules: list) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Mirror-pad each axis at its end up to the smallest size its (min, step) rule allows, or up to
    its fixed size; an axis longer than a fixed size is left to bioimageio.core's tiling. Returns the
    padded array and the crop that undoes it.

    Mirroring, not zeros: a package's own per-image statistics (zero mean, unit variance, percentile
    ranges) then barely move, and the border sees image-like context."""
    pads = []
    for n, rule in zip(array.shape, rules):
        if isinstance(rule, tuple):
            low, step = rule
            target = low if n <= low or step == 0 else low + -(-(n - low) // step) * step
            pads.append((0, max(target - n, 0)))
        else:
            pads.append((0, max(rule - n, 0) if isinstance(rule, int) else 0))
    mode = "reflect" if all(after < n for (_, after), n in zip(pads, array.shape)) else "symmetric"
    padded = np.pad(array, pads, mode=mode) if any(after for _, after in pads) else array
    return padded, tuple(slice(0, n) for n in array.shape)
