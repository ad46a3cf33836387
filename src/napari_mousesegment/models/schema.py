"""The schema of a model's config.json, checked before a model is built or used.

A config.json comes from disk, from another lab or from a download, so nothing in it is trusted:
a list where an object belongs, a width of 100000 (a network of terabytes), a threshold of NaN (a
model that finds nothing, silently), an organ of "" (a queue that cannot list its items) are all
refused here, with the key and the problem, before torch is imported or memory allocated.

Plain checks rather than pydantic: the core needs no extra dependency, and each message says what
a person would change. Keys a config.json carries beside the fields (metrics, training, sha256,
created, ...) are allowed; a key that is not a field but is spelt almost like one is a typo and is
refused, since the field it was meant for would silently take its default.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Callable
from typing import Any

#: What config.json's "kind" may be: our two networks, or another lab's bioimage.io package.
KINDS = ("mosnet", "unet", "bioimageio")
#: MOSnet's ablation variants: models.mosnet keeps the same list (that file stands alone in packages).
VARIANTS = ("full", "bm", "bm_cm", "bm_rb")
#: U-Net architectures (see models.unet).
UNET_ARCHS = ("standard", "deep", "residual")
PLANES = ("axial", "coronal", "sagittal")
#: A MOSnet's "plane": one plane, or several in PLANES order joined by "+" (multi-planar).
PLANE_CHOICES = tuple("+".join(c) for k in (1, 2, 3) for c in itertools.combinations(PLANES, k))
#: Sane bounds of the sizes that decide a network's memory.
WIDTH_RANGE = (1, 512)
DEPTH_RANGE = (1, 8)
IMAGE_SIZE_RANGE = (8, 4096)
#: Voxel size (mm) a MOSnet may resample to: 1 µm to 10 mm, as a scan's (io.readers.SPACING_RANGE_MM).
SPACING_RANGE_MM = (1e-3, 10.0)


class ConfigError(ValueError):
    """A config.json that breaks the schema; the message names the key."""


def _integer(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be a whole number, got {value!r}"
        if not low <= value <= high:
            return f"must be from {low} to {high}, got {value}"
        return None
    return check


def _number(low: float = -math.inf, high: float = math.inf, *, open_high: bool = False,
            positive: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if positive and value <= 0:
            return f"must be positive, got {value}"
        if value < low or value > high or (open_high and value >= high):
            return f"must be from {low:g} to {high:g}{' (exclusive)' if open_high else ''}, got {value}"
        return None
    return check


def _probability(value: Any) -> str | None:
    """A threshold: a number from 0 to 1, not NaN."""
    return _number(0.0, 1.0)(value)


def _choice(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in options else f"must be one of {', '.join(options)}, got {value!r}"
    return check


def _name(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"must be a non-empty name, got {value!r}"
    if value != value.strip() or any(c in value for c in ",=\n\t"):
        return f"must be a name without surrounding spaces, commas, '=' or line breaks, got {value!r}"
    return None


def _names(value: Any) -> str | None:
    """A non-empty list of distinct non-empty names (organs, conditions)."""
    if not isinstance(value, list) or not value:
        return f"must be a non-empty list of names, got {value!r}"
    for item in value:
        problem = _name(item)
        if problem:
            return f"has an entry that {problem}"
    if len(set(value)) != len(value):
        return f"names each entry once, got {value}"
    return None


def _text(value: Any) -> str | None:
    return None if isinstance(value, (str, int)) and not isinstance(value, bool) else f"must be text, got {value!r}"


def _table(check_value: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    """An object whose keys are names and whose values pass ``check_value``."""
    def check(value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"must be an object, got {type(value).__name__}"
        for key, item in value.items():
            problem = _name(key) or check_value(item)
            if problem:
                return f"entry {key!r} {problem}"
        return None
    return check


def _windows(value: Any) -> str | None:
    """Extra HU windows: at most 4 [level, width] or [level, width, sigma], width from 10 HU, sigma
    (model pixels of smoothing) from 0 to 8."""
    if not isinstance(value, list) or len(value) > 4:
        return f"must be a list of at most 4 [level, width] pairs, got {value!r}"
    for pair in value:
        if not isinstance(pair, list) or len(pair) not in (2, 3):
            return f"must hold [level, width] or [level, width, sigma], got {pair!r}"
        problem = (_number(-10000, 100000)(pair[0]) or _number(10, 100000)(pair[1])
                   or (_number(0, 8)(pair[2]) if len(pair) == 3 else None))
        if problem:
            return f"has a window {pair!r} whose level, width or sigma {problem}"
    return None


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {value!r}"


_COMMON = {"kind": _choice(KINDS), "version": _text, "sha256": _text}
#: kind -> (required keys, key -> check).
SCHEMAS: dict[str, tuple[tuple[str, ...], dict[str, Callable[[Any], str | None]]]] = {
    "mosnet": (("organs",), {
        **_COMMON, "organs": _names, "conditions": _names, "variant": _choice(VARIANTS),
        "width": _integer(2, WIDTH_RANGE[1]), "depth": _integer(*DEPTH_RANGE), "embed_dim": _integer(1, 1024),
        "reduction": _integer(1, 1024), "image_size": _integer(*IMAGE_SIZE_RANGE), "plane": _choice(PLANE_CHOICES),
        "context": _integer(0, 8), "context_step": _integer(1, 16), "position": _boolean,
        "spacing_mm": _number(*SPACING_RANGE_MM), "window_level": _number(-10000, 100000),
        "window_width": _number(0, 100000, positive=True), "extra_windows": _windows, "annotated": _table(lambda v: None if v == [] else _names(v)),
        "thresholds": _table(_probability),
    }),
    "unet": (("organ",), {
        **_COMMON, "organ": _name, "arch": _choice(UNET_ARCHS), "width": _integer(*WIDTH_RANGE),
        "image_size": _integer(*IMAGE_SIZE_RANGE), "dropout": _number(0.0, 1.0, open_high=True),
        "threshold": _probability, "min_size": _integer(0, 1 << 30), "frame_size": _integer(0, 4096),
    }),
    "bioimageio": (("organ",), {
        **_COMMON, "organ": _name, "spatial_dims": _integer(2, 3), "weights_format": _text,
        "threshold": _probability, "min_size": _integer(0, 1 << 30),
    }),
}


def check_config(meta: Any) -> dict[str, Any]:
    """``meta`` (a config.json's contents) when it fits its kind's schema, else :class:`ConfigError`.

    A missing "kind" means "mosnet", as configs written before kinds existed.
    """
    if not isinstance(meta, dict):
        raise ConfigError(f"holds a {type(meta).__name__}, not a model config (a JSON object)")
    kind = meta.get("kind", "mosnet")
    if kind not in SCHEMAS:
        raise ConfigError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    required, checks = SCHEMAS[kind]
    missing = [key for key in required if key not in meta]
    if missing:
        raise ConfigError(f"a {kind} config needs {', '.join(repr(k) for k in missing)}")
    for key, value in meta.items():
        if key in checks:
            problem = checks[key](value)
            if problem:
                raise ConfigError(f"{key!r} {problem}")
        else:
            near = difflib.get_close_matches(key, checks, n=1, cutoff=0.8)
            if near and near[0] not in meta:
                raise ConfigError(f"unknown key {key!r}: did you mean {near[0]!r}?")
    if kind == "mosnet":
        _check_mosnet(meta)
    return meta


def _check_mosnet(meta: dict[str, Any]) -> None:
    """What ties a MOSnet's fields together: image size and depth, thresholds of its own organs."""
    depth, size = meta.get("depth", 4), meta.get("image_size", 128)
    if size % (2**depth):
        raise ConfigError(f"'image_size' {size} must be divisible by 2**depth = {2**depth}")
    strangers = sorted(set(meta.get("thresholds", {})) - set(meta["organs"]))
    if strangers:
        raise ConfigError(f"'thresholds' names organs the model does not have: {strangers}")
