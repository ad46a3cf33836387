"""Loading a model by name or folder: the one way every job, widget and worker gets a network."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

from ..models.folder import ModelError, load_folder
from .registry import resolve

if TYPE_CHECKING:
    import torch

    from ..models.mosnet import MOSnet, MOSnetConfig
    from ..models.unet import UNet, UNetConfig


def load_model(spec: str | os.PathLike, device: str | torch.device = "cpu",
               kind: str | None = None) -> tuple[torch.nn.Module, Any, dict]:
    """The network, config and config.json of a model folder or an installed or published name
    (see :func:`.registry.resolve` and :func:`..models.folder.load_folder`)."""
    return load_folder(resolve(spec), device, kind)


def load_mosnet(spec: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MOSnet, MOSnetConfig, dict]:
    """A MOSnet by name or folder (see :func:`load_model`)."""
    return load_model(spec, device, kind="mosnet")  # type: ignore[return-value]


def load_unet(spec: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[UNet, UNetConfig, dict]:
    """An ultrasound U-Net by name or folder (see :func:`load_model`)."""
    return load_model(spec, device, kind="unet")  # type: ignore[return-value]


def load_organ_model(spec: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Any, Any, dict]:
    """What segments one ultrasound organ: our U-Net, or another lab's 2D bioimage.io package
    imported with ``models import`` (see :mod:`..models.packaged`)."""
    model, config, meta = load_model(spec, device)
    if config.kind == "unet" or (config.kind == "bioimageio" and config.spatial_dims == 2):
        return model, config, meta
    what = "a 3D bioimage.io package" if config.kind == "bioimageio" else f"a {config.kind} model"
    raise ModelError(f"model {spec}: is {what}, not an ultrasound U-Net or 2D bioimage.io package")


def load_unets(models: dict[str, str], organs: list[str], device: str = "auto") -> dict[str, UNet]:
    """One U-Net per organ (organ -> name or folder), on ``device`` ("auto": a GPU when torch sees one).

    A model trained for another organ is used with a warning; an organ without a model is refused.
    """
    from ..models.preprocess import pick_device

    missing = [o for o in organs if o not in models]
    if missing:
        raise ValueError(f"no model for {', '.join(missing)}; pass --model ORGAN=MODEL for each organ "
                         "(a model folder, or a name such as unet-heart-synthetic: see `mousesegment models list`)")
    dev = pick_device(device)
    loaded = {}
    for organ in organs:
        model, config, _ = load_organ_model(models[organ], dev)
        if config.organ != organ:
            warnings.warn(f"model {models[organ]} was trained for {config.organ!r}, used here for {organ!r}",
                          stacklevel=2)
        loaded[organ] = model
    return loaded
