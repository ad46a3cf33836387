"""Installing, sharing and removing named models: ``mousesegment models import|export|remove``."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..models.folder import CONFIG, ModelError, copy_folder, is_model
from .registry import check_name, fetch, home, is_builtin, resolve
from .versions import remove_versions


def import_model(source: str | os.PathLike, name: str | None = None, force: bool = False,
                 sha256: str | None = None) -> Path:
    """Install a model folder, or a zip of one at a URL, as a user model called ``name``."""
    text = str(source)
    is_url = re.match(r"^[a-z][a-z0-9+.-]*://", text) is not None
    if name is None:
        name = Path(text.rstrip("/")).name
        name = name[:-4] if name.endswith(".zip") else name
    check_name(name)
    if is_builtin(name):
        raise ModelError(f"model name {name!r} is a built-in model's; choose another with --name")
    dest = home() / name
    if dest.exists() and not force:
        raise ModelError(f"a user model named {name!r} exists ({dest}); pass --force to replace it")
    if is_url:
        return fetch(text, sha256, name)
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such model folder")
    if not is_model(folder):
        raise ModelError(f"model {folder}: no {CONFIG} in this folder")
    installed = copy_folder(folder, dest, force)
    remove_versions(name)  # a new model under this name starts a new history
    return installed


def export_model(spec: str, dest: str | os.PathLike, force: bool = False) -> Path:
    """Copy a named (or folder) model to ``dest``, ready to share or to import elsewhere."""
    return copy_folder(resolve(spec), Path(dest).expanduser(), force)


def remove_model(name: str) -> Path:
    """Delete a user model; built-in models cannot be removed."""
    check_name(name)
    folder = home() / name
    if not is_model(folder):
        if is_builtin(name):
            raise ModelError(f"model {name!r} is built in and cannot be removed")
        raise ModelError(f"no user model named {name!r} in {home()}")
    shutil.rmtree(folder)
    remove_versions(name)  # its history would otherwise come back to life under a new model of that name
    return folder
