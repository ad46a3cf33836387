"""A correction arriving at the server: its meta and TIFFs checked at the door, then queued once.

Everything a client sends is checked before the queue sees it, and every refusal is a
:class:`Refused` whose text names the field and the problem (the server answers it as 400).
Names are only ever stored as text: the queue keeps arrays under ``items/<id>``, and a model must
be a model name (the store's rule) held by this server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..active.queue import KINDS, Item, Queue, QueueError, StorageError
from ..io.tiff import read_array
from ..models.folder import ModelError, is_model, read_config
from ..remote.protocol import META, content_hash
from ..store.registry import BUILTIN, check_name, home

#: A TIFF plane may decode to at most this many times the upload limit (a damaged or hostile
#: header can declare gigabytes in a few bytes).
DECODE_FACTOR = 32
_TEXT_MAX = 1000


#: HTTP 507: the server has no room to store a good upload; clients keep it and send it again.
INSUFFICIENT_STORAGE = 507


class Refused(ValueError):
    """An upload the server will not queue: ``status`` (400 unless said) and one line naming why."""

    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.status = status


def model_folder(name: str) -> Path | None:
    """The folder of the model ``name`` on this server (a user model, else a built-in one), or None.

    Only names are looked up, never paths: a name that breaks the store's rule is refused.
    """
    try:
        check_name(name)
    except ModelError as exc:
        raise Refused(str(exc)) from None
    return next((root / name for root in (home(), BUILTIN) if is_model(root / name)), None)


def _text(meta: Mapping, key: str) -> str | None:
    """A text field of the meta ("" counts as absent)."""
    value = meta.get(key)
    if value is not None and (not isinstance(value, str) or len(value) > _TEXT_MAX):
        raise Refused(f"meta.{key}: expected a text of at most {_TEXT_MAX} characters, got {value!r:.80}")
    return value or None


def parse_meta(text: str) -> dict:
    """The meta JSON object as sent (the content hash is of this)."""
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise Refused(f"meta: not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise Refused("meta: expected a JSON object")
    return meta


def check_meta(meta: Mapping) -> dict:
    """The meta of an upload as :meth:`Queue.add_once` takes it, its names and model checked."""
    fields = {key: _text(meta, key) for key in META if key != "spacing"}
    if fields["kind"] not in KINDS:
        raise Refused(f"meta.kind: expected one of {', '.join(KINDS)}, got {fields['kind']!r}")
    spacing = meta.get("spacing")
    if spacing is not None:
        if (not isinstance(spacing, list) or len(spacing) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spacing)):
            raise Refused(f"meta.spacing: expected [z, y, x] in mm, got {spacing!r:.80}")
        spacing = tuple(float(v) for v in spacing)
    if fields["model"] is not None:
        _check_model(fields["model"], fields["kind"])
    return {**fields, "spacing": spacing}


def _check_model(name: str, kind: str) -> None:
    folder = model_folder(name)
    if folder is None:
        raise Refused(f"meta.model: no model {name!r} on this server (see GET /models)")
    found = read_config(folder).get("kind")
    wanted = {"ct": "mosnet", "ultrasound": "unet"}[kind]
    if found != wanted:
        raise Refused(f"meta.model: {name} is a {found} model; {kind} corrections need a {wanted} model")


def read_tiff_field(field: str, data: bytes, folder: Path, max_plane: int, like: np.ndarray | None) -> np.ndarray:
    """The array of one uploaded TIFF, read with the package's reader; a damaged file, a plane of
    another size than the image's, or one too large to decode is refused by field name."""
    import tifffile

    path = folder / f"{field}.tif"
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise Refused(f"the server could not store the correction ({exc.strerror}); send it again later",
                      INSUFFICIENT_STORAGE) from None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            plane, itemsize = tuple(page.shape), page.dtype.itemsize
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types for damaged files
        raise Refused(f"{field}: not a readable TIFF ({' '.join(str(exc).split())[:200] or type(exc).__name__})") from None
    if like is not None and plane[-2:] != like.shape[-2:]:
        raise Refused(f"{field}: frames of shape {plane[-2:]} do not match the image's {like.shape[-2:]}")
    if int(np.prod(plane)) * itemsize > max_plane:
        raise Refused(f"{field}: a plane of shape {plane} is too large for this server")
    try:
        return read_array(path)
    except ValueError as exc:
        raise Refused(str(exc).replace(str(path), field)) from None


def queue_upload(queue: Queue, meta_text: str, files: Mapping[str, bytes | None], *, author: str,
                 claimed_hash: str | None, max_bytes: int) -> tuple[Item, bool]:
    """Check an upload and queue it once; returns the item and whether it is new."""
    sent = parse_meta(meta_text)
    meta = check_meta(sent)
    for field in ("image", "labels"):
        if files.get(field) is None:
            raise Refused(f"{field}: missing (send it as a multipart file)")
    digest = content_hash(sent, files)
    if claimed_hash is not None and claimed_hash != digest:
        raise Refused(f"content_hash: the upload received hashes to {digest}, not to the {claimed_hash:.64} "
                      "sent (changed on the way?)")
    held = queue.find(digest)
    if held is not None:
        return held, False
    try:  # recorded in the queue, so a crash's leftover is cleaned at the next start
        folder = queue.scratch_folder("upload-")
    except (OSError, StorageError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "its queue cannot record it"
        raise Refused(f"the server could not store the correction ({why}); send it again later",
                      INSUFFICIENT_STORAGE) from None
    try:
        max_plane = DECODE_FACTOR * max_bytes
        image = read_tiff_field("image", files["image"], folder, max_plane, None)
        arrays = {field: read_tiff_field(field, files[field], folder, max_plane, image)
                  for field in ("labels", "prediction") if files.get(field) is not None}
    finally:
        queue.drop_scratch(folder)
    try:
        return queue.add_once(image, arrays["labels"], meta["kind"], organ=meta["organ"],
                              condition=meta["condition"], model=meta["model"],
                              model_version=meta["model_version"], prediction=arrays.get("prediction"),
                              source=meta["source"], spacing=meta["spacing"], author=author,
                              content_hash=digest)
    except StorageError as exc:  # a full disk is the server's trouble, not the correction's: the client keeps it
        raise Refused(str(exc).replace(str(queue.root), "the server's queue"), INSUFFICIENT_STORAGE) from None
    except QueueError as exc:
        raise Refused(str(exc).replace(str(queue.root), "the server's queue")) from None


def current_model(name: str) -> Path:
    """The folder of the current version of ``name``, or a 404 :class:`Refused`."""
    folder = model_folder(name)
    if folder is None:
        raise Refused(f"no model {name!r} on this server", 404)
    return folder
