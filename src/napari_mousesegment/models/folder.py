"""The model folder: safetensors weights plus a JSON config that records their sha256.

A model folder is self-describing: ``config.json`` holds the architecture (a MOSnet or U-Net
config), its version and the weights' hash, and the model is rebuilt from it alone. Loading never
unpickles anything: weights come from safetensors, and the hash is checked before they are used,
so a tampered or truncated file is refused with its name.

Reading a config needs no torch; building or saving a network imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.files import regular_file
from ..io.jsonfile import read_object, write_object
from .schema import KINDS, ConfigError, check_config

if TYPE_CHECKING:
    import torch

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
#: Files a model folder may carry beside its weights and config (kept when a folder is copied).
EXTRAS = ("history.csv", "curves.png", "README.md")
#: The file a "bioimageio" model folder holds instead of WEIGHTS (see models.packaged).
PACKAGE = "package.zip"


class ModelError(ValueError):
    """A model folder that cannot be loaded."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_model(folder: Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def _classes(kind: str) -> tuple[type, type]:
    """The (config class, network class) of a kind."""
    if kind == "mosnet":
        from .mosnet import MOSnet, MOSnetConfig

        return MOSnetConfig, MOSnet
    from .unet import UNet, UNetConfig

    return UNetConfig, UNet


def save_model(folder: str | os.PathLike, model: torch.nn.Module, config: Any,
               extra: dict[str, Any] | None = None) -> Path:
    """Write weights and config atomically; config.json gains the weights' sha256 and a timestamp."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS + ".partial")
    save_file(state, str(tmp))
    meta = json.loads(config.to_json())
    meta.update(extra or {})
    meta["sha256"] = sha256(tmp)
    meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.replace(tmp, folder / WEIGHTS)
    _write_config(folder, meta)
    return folder


def _write_config(folder: Path, meta: dict[str, Any]) -> None:
    """Write config.json atomically, so a crash never leaves half of it."""
    write_object(folder / CONFIG, meta)


def update_config(folder: str | os.PathLike, changes: dict[str, Any]) -> None:
    """Change entries of a model folder's config.json atomically; the weights are untouched."""
    folder = Path(folder)
    _write_config(folder, {**read_config(folder), **changes})


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """config.json of a model folder as a dict, checked against its kind's schema
    (:func:`.schema.check_config`), or a :class:`ModelError` naming the folder and the problem."""
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise ModelError(f"model {folder}: no {CONFIG}")
    try:
        regular_file(path, "model config")
        return check_config(read_object(path, "a model config"))
    except ConfigError as exc:
        raise ModelError(f"model {folder}: {path}: {exc}") from exc
    except ValueError as exc:
        raise ModelError(f"model {folder}: {exc}") from exc


def load_folder(folder: str | os.PathLike, device: str | torch.device = "cpu",
                kind: str | None = None) -> tuple[torch.nn.Module, Any, dict]:
    """Rebuild a model from its folder, checking the hash and that the weights fit the config.

    ``kind`` ("mosnet" or "unet") refuses a folder holding the other kind, by name. Returns the
    network in eval mode, its config and the whole config.json.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_config(folder)
    found = meta.get("kind", "mosnet")
    if found not in KINDS:
        raise ModelError(f"model {folder}: unknown kind {found!r} in {CONFIG}")
    if kind is not None and found != kind:
        raise ModelError(f"model {folder}: is a {found} model, not a {kind} model")
    if found == "bioimageio":
        return _load_package(folder, meta, device)
    config_cls, model_cls = _classes(found)
    config = _parsed(folder, config_cls, meta)
    weights = _verified(folder, meta, WEIGHTS)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ModelError(f"model {folder}: cannot read {WEIGHTS} ({exc})") from exc
    model = model_cls(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"model {folder}: weights do not match its config ({str(exc).splitlines()[0]})") from exc
    return model.to(device).eval(), config, meta


def _parsed(folder: Path, config_cls: type, meta: dict[str, Any]) -> Any:
    """config.json as its kind's config class, or a ModelError naming the folder."""
    try:
        return config_cls.from_dict(meta)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {folder}: {exc}") from exc


def _verified(folder: Path, meta: dict[str, Any], name: str) -> Path:
    """``folder/name`` once its sha256 matches the one config.json records, else a ModelError."""
    path = folder / name
    if not path.is_file():
        raise ModelError(f"model {folder}: no {name}")
    if not meta.get("sha256"):
        raise ModelError(f"model {folder}: {CONFIG} records no sha256 of {name}, so it cannot be verified")
    if sha256(path) != meta["sha256"]:
        raise ModelError(f"model {folder}: {name} does not match the sha256 in {CONFIG} (tampered or truncated)")
    return path


def _load_package(folder: Path, meta: dict[str, Any], device: Any) -> tuple[Any, Any, dict]:
    """An imported bioimage.io package, its hash checked, ready to run (see models.packaged)."""
    from .packaged import PackagedConfig, PackagedModel

    config = _parsed(folder, PackagedConfig, meta)
    package = _verified(folder, meta, PACKAGE)
    try:
        import bioimageio.core  # noqa: F401
    except ImportError as exc:
        raise ModelError(f"model {folder}: a bioimage.io package; running it needs the bioimageio extra "
                         "(pip install 'napari-mousesegment[bioimageio]')") from exc
    try:
        model = PackagedModel(package, config, str(device))
    except Exception as exc:  # bioimageio.core raises many types for packages it cannot run
        raise ModelError(f"model {folder}: its package cannot be run ({type(exc).__name__}: {exc})") from exc
    return model, config, meta


def copy_folder(src: Path, dest: Path, force: bool) -> Path:
    """Copy a model folder's files into ``dest`` through a temporary folder, replacing only when ``force``.

    The copy must load (hash, kind, shapes) before it takes ``dest``'s place; a folder that is not
    a model is never replaced.
    """
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()  # an empty folder given as the destination
    if dest.exists() and not force:
        raise ModelError(f"{dest} exists and is not empty; pass --force to replace it")
    if dest.exists() and not is_model(dest):
        raise ModelError(f"{dest} holds files that are not a model; refusing to replace it even with --force")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        for file in (CONFIG, WEIGHTS, PACKAGE, *EXTRAS):
            if (src / file).is_file():
                shutil.copy2(src / file, tmp / file)
        try:
            load_folder(tmp)  # the copy itself must load: hash, kind and shapes
        except ModelError as exc:
            raise ModelError(str(exc).replace(str(tmp), str(src))) from None
        if dest.exists():
            old = dest.with_name(f".{dest.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
