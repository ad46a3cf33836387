"""Named models: built-in ones shipped in the package, user ones in a cache folder, published ones by URL.

- **Built-in** models live in ``napari_mousesegment/store/builtin/NAME/`` and are installed with
  the package; :data:`SHIPPED_CT` and :data:`SHIPPED_US` name the ones the demo and the sample
  data use.
- **User** models live in ``MODELS_HOME/NAME/``: ``$MOUSESEGMENT_HOME/models`` when that is set,
  else the platform's user data folder (platformdirs). ``mousesegment models import`` puts them
  there after checking that they load.
- **Published** models are registry entries (a URL to a zip of a model folder plus the zip's
  sha256) in ``registry.json`` beside the user models. Asking for such a name downloads the zip
  through pooch, checks its hash, and installs it as a user model.

Looking a name up imports no torch. Every model folder is loaded with
:func:`..models.folder.load_folder`, so its weights' sha256 is checked and nothing is unpickled,
whatever its source.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..io.files import regular_file
from ..io.jsonfile import read_object
from ..io.limits import check_allocation, check_zip_member, human
from ..models.folder import CONFIG, EXTRAS, WEIGHTS, ModelError, copy_folder, is_model, read_config

BUILTIN = Path(__file__).parent / "builtin"
REGISTRY = "registry.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

#: The built-in models the demo and the napari sample data use unless told otherwise.
SHIPPED_CT = "mosnet-synthetic"
SHIPPED_US = {organ: f"unet-{organ}-synthetic" for organ in ("heart", "liver", "placenta")}


@dataclass
class ModelInfo:
    """One row of ``mousesegment models list``."""

    name: str
    kind: str
    organs: list[str]
    version: str
    source: str  #: "builtin", "user" or "registry" (published, not downloaded yet)
    size_bytes: int
    path: str  #: the folder, or the URL of a registry entry


def home() -> Path:
    """The folder of user models (created on first use)."""
    root = os.environ.get("MOUSESEGMENT_HOME")
    if root:
        base = Path(root).expanduser()
    else:
        import platformdirs

        base = platformdirs.user_data_path("napari-mousesegment", appauthor=False)
    return base / "models"


def check_name(name: str) -> str:
    if name == REGISTRY:
        raise ModelError(f"model name {name!r} is reserved (the registry file of published models)")
    if not _NAME.match(name or ""):
        raise ModelError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (at most 100), "
                         "starting with a letter or digit")
    return name


def is_builtin(name: str) -> bool:
    return is_model(BUILTIN / name)


def _folders(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir())
            if p.is_dir() and not p.name.startswith(".") and is_model(p)}


def registry() -> dict[str, dict]:
    """Published models: name -> {"url", "sha256", and optionally "kind", "organs", "version"}.

    A registry.json that is not such a table is a :class:`ModelError` naming the file and the entry.
    """
    path = home() / REGISTRY
    if not path.exists():
        return {}
    try:
        entries = read_object(regular_file(path, "registry file"), "a table of published models")
    except ValueError as exc:
        raise ModelError(str(exc)) from exc
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str) or not entry["url"] \
                or not isinstance(entry.get("sha256"), str) or not entry["sha256"]:
            raise ModelError(f"{path}: entry {name!r} needs a \"url\" and the \"sha256\" of its zip (text)")
        organs = entry.get("organs", [])
        if not isinstance(organs, list) or not all(isinstance(o, str) and o for o in organs):
            raise ModelError(f"{path}: entry {name!r}: \"organs\" must be a list of organ names")
    return entries


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _info(name: str, folder: Path, source: str) -> ModelInfo:
    try:
        meta = read_config(folder)
    except ModelError as exc:
        warnings.warn(str(exc), stacklevel=3)
        meta = {}
    organs = meta.get("organs") or ([meta["organ"]] if meta.get("organ") else [])
    return ModelInfo(name, meta.get("kind", "?"), organs, str(meta.get("version", "?")), source,
                     _size(folder), str(folder))


def list_models() -> list[ModelInfo]:
    """Built-in, user and published models; a name found in two places is listed twice.

    A broken registry.json is reported as a warning (naming the file) and the installed models
    are still listed; so is a model whose config.json breaks the schema (listed with kind "?").
    """
    rows = [_info(n, p, "builtin") for n, p in _folders(BUILTIN).items()]
    user = _folders(home())
    rows += [_info(n, p, "user") for n, p in user.items()]
    try:
        published = registry()
    except ModelError as exc:
        warnings.warn(f"{exc}; its published models are not listed", stacklevel=2)
        published = {}
    for name, entry in published.items():
        if name not in user:
            rows.append(ModelInfo(name, entry.get("kind", "?"), list(entry.get("organs", [])),
                                  str(entry.get("version", "?")), "registry", 0, entry["url"]))
    return rows


def _locations(name: str) -> list[tuple[str, Path]]:
    return [(source, root / name) for source, root in (("builtin", BUILTIN), ("user", home()))
            if is_model(root / name)]


def resolve(spec: str | os.PathLike) -> Path:
    """The model folder meant by ``spec``: a folder path, or the name of an installed or published model."""
    if not str(spec).strip():  # Path("") is the current folder: never meant as a model
        raise ModelError("model '': give a model name (see `mousesegment models list`) or a model folder")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not is_model(path):
            raise ModelError(f"model {path}: no {CONFIG} in this folder")
        return path
    name = str(spec)
    if not _NAME.match(name):
        raise ModelError(f"model {spec}: no such folder, and not a model name")
    _restore_interrupted(name)
    found = _locations(name)
    if len(found) > 1:
        where = "; ".join(f"{s} at {p}" for s, p in found)
        raise ModelError(f"model name {name!r} exists twice ({where}); remove the user copy with "
                         f"`mousesegment models remove {name}` or import it under another name")
    if found:
        return found[0][1]
    entry = registry().get(name)
    if entry is not None:
        return fetch(entry["url"], entry["sha256"], name)
    known = ", ".join(m.name for m in list_models()) or "none"
    raise ModelError(f"model {name!r}: no such folder or model name (installed: {known})")


def model_config(spec: str | os.PathLike) -> dict:
    """config.json of the model ``spec`` names (a folder or a name), without loading its network."""
    return read_config(resolve(spec))


def _restore_interrupted(name: str) -> None:
    """A replacement killed between its two renames leaves only ``.NAME-old``: put it back."""
    folder, old = home() / name, home() / f".{name}-old"
    if not folder.exists() and is_model(old):
        os.replace(old, folder)


#: Largest member of a model zip, by its declared size, checked before anything is unpacked: the
#: weights up to 4 GiB, config.json and the extras (curves, history, README) up to 64 MiB.
MAX_WEIGHTS_BYTES = 4 << 30
MAX_FILE_BYTES = 64 << 20


def _unpack(archive: Path, into: Path) -> Path:
    """The model folder inside a downloaded zip, unpacked without trusting its member names or
    sizes: each member's declared size is checked first, then it is copied in blocks (never whole
    into memory), and a member that inflates past its declared size is refused by zipfile."""
    try:
        with zipfile.ZipFile(regular_file(archive, "model zip")) as zf:
            wanted = {CONFIG, WEIGHTS, *EXTRAS}
            members = [m for m in zf.infolist() if not m.is_dir() and Path(m.filename).name in wanted]
            configs = [m for m in members if Path(m.filename).name == CONFIG]
            if len(configs) != 1:
                raise ModelError(f"{archive}: expected one model folder (one {CONFIG}) in the zip, "
                                 f"found {len(configs)}")
            prefix = str(Path(configs[0].filename).parent)
            members = [m for m in members if str(Path(m.filename).parent) == prefix]  # that one folder
            need = 0
            for m in members:
                weights = Path(m.filename).name == WEIGHTS
                size = check_zip_member(archive, m, MAX_WEIGHTS_BYTES if weights else MAX_FILE_BYTES)
                if weights:  # loaded whole when the model is used: it must fit in memory
                    check_allocation(size, f"{archive}: member {m.filename!r} (the weights)")
                need += size
            into.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(into).free
            if need > free:
                raise ModelError(f"{archive}: unpacking needs {human(need)}; {into.parent} has {human(free)} free")
            for m in members:  # by base name only
                with zf.open(m) as src, open(into / Path(m.filename).name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except ModelError:
        raise
    except (ValueError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
        raise ModelError(str(exc) if str(archive) in str(exc) else
                         f"{archive}: not a zip of a model folder ({type(exc).__name__}: {exc})") from exc
    return into


def install_zip(archive: Path, name: str, force: bool, organ: str | None = None) -> Path:
    """Install a zip as the user model ``name``: a bioimage.io package, or a zip of a model folder."""
    from .bioimageio_import import import_package, is_package

    if is_package(archive):
        return import_package(archive, home() / name, force, organ)
    with tempfile.TemporaryDirectory() as tmp:
        return copy_folder(_unpack(archive, Path(tmp) / name), home() / name, force)


def fetch(url: str, sha256: str | None, name: str, organ: str | None = None) -> Path:
    """Download a published model zip (a model folder or a bioimage.io package) through pooch,
    check its hash, and install it as ``name``."""
    import pooch

    check_name(name)
    # Without a hash pooch would reuse any cached file of that name: download afresh instead.
    downloads = home().parent / "downloads" if sha256 else Path(tempfile.mkdtemp(prefix="mousesegment-"))
    try:
        try:
            archive = Path(pooch.retrieve(url, known_hash=f"sha256:{sha256}" if sha256 else None,
                                          path=downloads, progressbar=False))
        except Exception as exc:  # pooch's hash mismatch, HTTP and network errors
            raise ModelError(f"model {name} from {url}: {exc}") from exc
        return install_zip(archive, name, force=True, organ=organ)
    finally:
        if not sha256:  # a one-off download: nothing of it stays behind
            shutil.rmtree(downloads, ignore_errors=True)
