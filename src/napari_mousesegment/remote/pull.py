"""Installing a model pulled from a lab server as a user model of the same name.

A pulled copy is marked in its config.json (``pulled_from``: the server's URL), so that pulling
again replaces it, while a user model of that name made here (imported, or retrained by local
rounds) is never replaced by one from a server.
"""

from __future__ import annotations

from pathlib import Path

from ..models.folder import ModelError, is_model, read_config, update_config
from ..store.registry import check_name, home, install_zip, is_builtin
from ..store.versions import versions

PULLED_KEY = "pulled_from"


def check_pullable(name: str) -> Path:
    """The folder ``name`` will be installed to, or a ModelError saying why it may not be."""
    check_name(name)
    if is_builtin(name):
        raise ModelError(f"model {name!r} is built in here too; there is nothing to pull "
                         "(its retrained versions are published as NAME-lab)")
    dest = home() / name
    if is_model(dest) and (not read_config(dest).get(PULLED_KEY) or versions(name)):
        raise ModelError(f"a user model named {name!r} exists here ({dest}) and is not a copy pulled from a "
                         f"server; remove it first (mousesegment models remove {name})")
    return dest


def install_pulled(archive: Path, name: str, sha256: str, version: str | None, url: str) -> tuple[Path, str]:
    """Install a downloaded zip (its sha256 already checked) as ``name``; (folder, version).

    :func:`..store.registry.install_zip` loads the unpacked folder, checking its weights against
    the sha256 its config records, before it takes the place of an earlier copy.
    """
    dest = check_pullable(name)  # again: another process may have installed a model meanwhile
    folder = install_zip(archive, name, force=True)
    config = read_config(folder)
    update_config(folder, {PULLED_KEY: url, "pulled_sha256": sha256})
    return dest, str(version or config.get("version", "?"))
