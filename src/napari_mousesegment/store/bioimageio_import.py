"""Installing a bioimage.io model package: ``models import ZIP|URL`` of a package, ours or another lab's.

- **Ours** (its ``config`` carries a ``napari_mousesegment`` block and our ``config.json`` and
  ``weights.safetensors`` ride along as attachments): the model folder is restored from those two
  files, so it predicts exactly what the exported model did and nothing is unpickled.
- **Another lab's**: accepted when it is a segmentation model we can run: one input of one
  channel with 2 or 3 spatial axes (batch optional, no time or index axes), one output of one
  channel on the same axes, and TorchScript (or, with onnxruntime installed, ONNX) weights. It is
  installed as ``package.zip`` plus a config.json of kind "bioimageio" (see
  :mod:`..models.packaged`). Anything else is refused with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from ..io.files import regular_file
from ..io.limits import check_zip_member
from ..models.folder import CONFIG, PACKAGE, WEIGHTS, ModelError, copy_folder, sha256
from ..models.packaged import RUNNABLE

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: Key of our own block in a package's ``config``; its presence marks a package as ours.
CONFIG_KEY = "napari_mousesegment"
INSTALL_HINT = "bioimage.io packages need the bioimageio extra: pip install 'napari-mousesegment[bioimageio]'"


def require_bioimageio() -> None:
    """Import bioimageio.spec and .core, or fail with the one line that says how to install them."""
    try:
        import bioimageio.core
        import bioimageio.spec  # noqa: F401
    except ImportError as exc:
        raise ModelError(INSTALL_HINT) from exc
#: Largest member a package may declare (a weights file of 4 GiB); checked before anything is read.
MAX_MEMBER_BYTES = 4 << 30


def is_package(path: Path) -> bool:
    """Whether ``path`` is a zip with a bioimage.io description at its top level."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if "/" not in n]
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n in RDF_NAMES or n.endswith(".bioimageio.yaml") for n in names)


def import_package(archive: Path, dest: Path, force: bool = False, organ: str | None = None) -> Path:
    """Install the package ``archive`` as the model folder ``dest`` (see the module's docstring)."""
    require_bioimageio()
    _check_members(archive)
    descr = _describe(archive)
    with tempfile.TemporaryDirectory(prefix="mousesegment-import-") as tmp:
        folder = Path(tmp) / dest.name
        folder.mkdir()
        if _ours(descr) is not None:
            _restore(archive, folder)
        else:
            _install_foreign(descr, archive, folder, organ or _guess_organ(descr))
        return copy_folder(folder, dest, force)


def _check_members(archive: Path) -> None:
    """Every member's declared size, against :data:`MAX_MEMBER_BYTES` and what its stored bytes can
    hold, before anything is inflated (see :func:`..io.limits.check_zip_member`)."""
    try:
        with zipfile.ZipFile(regular_file(archive, "package zip")) as zf:
            for member in zf.infolist():
                check_zip_member(archive, member, MAX_MEMBER_BYTES)
    except ValueError as exc:
        raise ModelError(str(exc)) from exc
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{archive}: not a readable zip ({exc})") from exc


def _describe(archive: Path) -> Any:
    """The validated model description, or a ModelError naming the first problem."""
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model import v0_4, v0_5

    try:
        descr = load_description(archive, perform_io_checks=True)
    except Exception as exc:
        raise ModelError(f"{archive}: not a readable bioimage.io package ({type(exc).__name__}: {exc})") from exc
    if isinstance(descr, InvalidDescr):
        errors = descr.validation_summary.errors
        first = f"{'.'.join(map(str, errors[0].loc))}: {errors[0].msg}" if errors else "invalid"
        raise ModelError(f"{archive}: not a valid bioimage.io package ({first})")
    if not isinstance(descr, (v0_4.ModelDescr, v0_5.ModelDescr)):
        raise ModelError(f"{archive}: a bioimage.io {descr.type}, not a model")
    return descr


def _ours(descr: Any) -> dict | None:
    config = getattr(descr, "config", None)
    extra = (config.model_extra or {}) if hasattr(config, "model_extra") else (config or {})
    block = extra.get(CONFIG_KEY)
    return block if isinstance(block, dict) else None


def _restore(archive: Path, folder: Path) -> None:
    """Our config.json and weights.safetensors from the package's top level, by name only."""
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        missing = [f for f in (CONFIG, WEIGHTS) if f not in names]
        if missing:
            raise ModelError(f"{archive}: says it is a napari-mousesegment package but lacks {missing}")
        for file in (CONFIG, WEIGHTS):  # in blocks: the weights are never held whole in memory here
            with zf.open(file) as src, open(folder / file, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def _axes(tensor: Any, inputs: Any = ()) -> list[tuple[str, str, int | None]]:
    """(type, id, size or None) of each axis of a tensor description, in both format versions;
    ``inputs`` are the model's inputs, which a 0.4 output's implicit shape refers to."""
    from bioimageio.core.digest_spec import get_axes_infos
    from bioimageio.spec.model import v0_4, v0_5

    out = []
    for k, info in enumerate(get_axes_infos(tensor)):
        size = None
        if isinstance(tensor, (v0_4.InputTensorDescr, v0_4.OutputTensorDescr)):
            shape = tensor.shape
            if isinstance(shape, (list, tuple)):
                size = int(shape[k])
            elif isinstance(shape, v0_4.ParameterizedInputShape) and not shape.step[k]:
                size = int(shape.min[k])
            elif isinstance(shape, v0_4.ImplicitOutputShape):  # reference size * scale + 2 * offset
                ref = next((t for t in inputs if t.name == shape.reference_tensor), None)
                letter = tensor.axes[k]  # 0.4 axes are letters, "bcyx"
                ref_size = _axes(ref)[ref.axes.index(letter)][2] if ref is not None and letter in ref.axes else None
                if ref_size is not None and shape.scale[k] is not None:
                    size = int(ref_size * shape.scale[k] + 2 * shape.offset[k])
        else:
            axis = tensor.axes[k]
            if isinstance(axis, v0_5.ChannelAxis):
                size = len(axis.channel_names)
            elif isinstance(getattr(axis, "size", None), int):
                size = int(axis.size)
        out.append((str(info.type), str(info.id), size))
    return out


def runnable_format(descr: Any) -> str:
    """The weight format we will run, or a ModelError saying why none will do."""
    present = [f for f in ("torchscript", "onnx", "pytorch_state_dict", "tensorflow_saved_model_bundle",
                           "keras_hdf5", "tensorflow_js") if getattr(descr.weights, f, None) is not None]
    for fmt, module in RUNNABLE.items():
        if fmt in present and importlib.util.find_spec(module) is not None:
            return fmt
    why = ("pytorch_state_dict weights run the package's own Python code, which napari-mousesegment "
           "does not execute; ask for TorchScript weights" if "pytorch_state_dict" in present else
           "napari-mousesegment runs TorchScript, or ONNX with onnxruntime installed")
    raise ModelError(f"its weights are {', '.join(present) or 'missing'}: {why}")


def check_segmentation(descr: Any) -> int:
    """The number of spatial axes (2 or 3) of a single-channel segmentation model we can feed, or a
    ModelError naming what does not fit."""
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise ModelError(f"it has {len(descr.inputs)} inputs and {len(descr.outputs)} outputs; "
                         "we run models with one image in and one map out")
    spaces = []
    for role, tensor in (("input", descr.inputs[0]), ("output", descr.outputs[0])):
        axes = _axes(tensor, descr.inputs)
        odd = [f"{kind} axis {ident!r}" for kind, ident, _ in axes if kind not in ("batch", "channel", "space")]
        if odd:
            raise ModelError(f"its {role} has {', '.join(odd)}; we run 2D or 3D images without time or index axes")
        channels = [size for kind, _, size in axes if kind == "channel"]
        if channels and channels[0] != 1:
            raise ModelError(f"its {role} has {channels[0] or 'a variable number of'} channels; "
                             "we run single-channel models")
        spaces.append(sorted(ident for kind, ident, _ in axes if kind == "space"))
    if spaces[0] not in (["x", "y"], ["x", "y", "z"]):
        raise ModelError(f"its input's spatial axes are {spaces[0]}; we run 2D (y, x) or 3D (z, y, x) models")
    if spaces[1] != spaces[0]:
        raise ModelError(f"its output's spatial axes {spaces[1]} differ from its input's {spaces[0]}")
    return len(spaces[0])


def _guess_organ(descr: Any) -> str:
    """An organ word from the package's name and tags when it names one of ours, else "organ"."""
    from ..organs import CT_ORGANS, US_ORGANS

    words = (" ".join([descr.name, *map(str, getattr(descr, "tags", []))])).lower()
    return next((o for o in (*US_ORGANS, *CT_ORGANS) if o in words), "organ")


def _install_foreign(descr: Any, archive: Path, folder: Path, organ: str) -> None:
    try:
        dims = check_segmentation(descr)
        fmt = runnable_format(descr)
    except ModelError as exc:
        raise ModelError(f"{archive}: cannot be imported: {exc}") from None
    target = folder / PACKAGE
    target.write_bytes(archive.read_bytes())
    config = {"kind": "bioimageio", "organ": organ, "spatial_dims": dims, "weights_format": fmt,
              "threshold": 0.5, "min_size": 30, "version": str(getattr(descr, "version", None) or "0"),
              "name": descr.name, "description": descr.description, "sha256": sha256(target),
              "source": archive.name}
    (folder / CONFIG).write_text(json.dumps(config, indent=2))
