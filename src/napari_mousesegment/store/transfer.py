"""Installing, sharing and removing named models: ``mousesegment models import|export|remove``."""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path

from ..io.files import regular_file
from ..models.folder import CONFIG, ModelError, copy_folder, is_model
from .registry import check_name, fetch, home, install_zip, is_builtin, resolve
from .versions import remove_versions


def import_model(source: str | os.PathLike, name: str | None = None, force: bool = False,
                 sha256: str | None = None, organ: str | None = None) -> Path:
    """Install a model as a user model called ``name``: a model folder, a zip of one, or a
    bioimage.io package (ours or another lab's, see :mod:`.bioimageio_import`), from disk or a URL.

    ``organ`` names what another lab's package segments (default: guessed from its name and tags).
    """
    text = str(source)
    is_url = re.match(r"^[a-z][a-z0-9+.-]*://", text) is not None
    if name is None:
        name = Path(text.rstrip("/")).name
        name = name[:-4] if name.lower().endswith(".zip") else name
    check_name(name)
    if is_builtin(name):
        raise ModelError(f"model name {name!r} is a built-in model's; choose another with --name")
    dest = home() / name
    if dest.exists() and not force:
        raise ModelError(f"a user model named {name!r} exists ({dest}); pass --force to replace it")
    path = Path(source).expanduser()
    if not is_url and path.exists() and not path.is_dir():
        try:
            regular_file(path, "model zip")  # a named pipe would block the zip reader forever
        except ValueError as exc:
            raise ModelError(str(exc)) from None
    if is_url:
        installed = fetch(text, sha256, name, organ)
    elif path.is_file() and zipfile.is_zipfile(path):
        installed = install_zip(path, name, force, organ)
    elif not path.is_dir():
        raise ModelError(f"{path}: no such model folder or zip")
    elif not is_model(path):
        raise ModelError(f"model {path}: no {CONFIG} in this folder")
    else:
        installed = copy_folder(path, dest, force)
    remove_versions(name)  # a new model under this name starts a new history
    return installed


def export_model(spec: str | os.PathLike, dest: str | os.PathLike, force: bool = False) -> Path:
    """Copy a named (or folder) model to ``dest``, ready to share or to import elsewhere (bioimage.io
    packages: :func:`.bioimageio_export.export_bioimageio`)."""
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
