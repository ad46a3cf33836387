"""Model folders: safetensors weights plus a JSON config that records their sha256.

Loading never unpickles anything: weights come from safetensors, and the hash in config.json is
checked before they are used, so a tampered or truncated file is refused with its name.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .mosnet import MOSnet, MOSnetConfig
from .unet import UNet, UNetConfig

#: config "kind" -> (config class, model class)
KINDS: dict[str, tuple[type, type]] = {"mosnet": (MOSnetConfig, MOSnet), "unet": (UNetConfig, UNet)}

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"


class ModelError(ValueError):
    """A model folder that cannot be loaded."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(folder: str | os.PathLike, model: torch.nn.Module, config: MOSnetConfig | UNetConfig,
               extra: dict[str, Any] | None = None) -> Path:
    """Write weights and config atomically; config.json gains the weights' sha256 and a timestamp."""
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
    """Write config.json through a temporary file, so a crash never leaves half of it."""
    (folder / (CONFIG + ".partial")).write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(folder / (CONFIG + ".partial"), folder / CONFIG)


def update_config(folder: str | os.PathLike, changes: dict[str, Any]) -> None:
    """Change entries of a model folder's config.json atomically; the weights are untouched."""
    folder = Path(folder)
    _write_config(folder, {**read_config(folder), **changes})


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise ModelError(f"model {folder}: no {CONFIG}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"model {folder}: {CONFIG} is not valid JSON ({exc})") from exc


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu",
               kind: str | None = None) -> tuple[torch.nn.Module, Any, dict]:
    """Rebuild a model from its folder, checking the hash and that the weights fit the config.

    ``folder`` is a model folder or the name of an installed model (see :mod:`.registry`).
    ``kind`` ("mosnet" or "unet") refuses a folder holding the other kind, by name.
    """
    from .registry import resolve

    folder = resolve(folder)
    meta = read_config(folder)
    found = meta.get("kind", "mosnet")
    if found not in KINDS:
        raise ModelError(f"model {folder}: unknown kind {found!r} in {CONFIG}")
    if kind is not None and found != kind:
        raise ModelError(f"model {folder}: is a {found} model, not a {kind} model")
    config_cls, model_cls = KINDS[found]
    try:
        config = config_cls.from_dict(meta)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {folder}: {exc}") from exc
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"model {folder}: no {WEIGHTS}")
    if not meta.get("sha256"):
        raise ModelError(f"model {folder}: {CONFIG} records no sha256 of {WEIGHTS}, so the weights cannot be verified")
    if sha256(weights) != meta["sha256"]:
        raise ModelError(f"model {folder}: {WEIGHTS} does not match the sha256 in {CONFIG} (tampered or truncated)")
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


def load_mosnet(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MOSnet, MOSnetConfig, dict]:
    """A MOSnet model folder (see :func:`load_model`)."""
    return load_model(folder, device, kind="mosnet")  # type: ignore[return-value]


def load_unet(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[UNet, UNetConfig, dict]:
    """An ultrasound U-Net model folder (see :func:`load_model`)."""
    return load_model(folder, device, kind="unet")  # type: ignore[return-value]
