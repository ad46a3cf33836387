"""Synthetic whole-body mouse micro-CT in Hounsfield units, with organ labels.

The anatomy follows a real Rosenhain et al. (2018) label map (thorax at the top of the scan, liver
under the diaphragm, kidneys dorsal on either side of the spine, bladder caudal and ventral) and
organ volumes close to a real mouse's. Each seed draws a different animal: body size, organ sizes
and positions, the intestine's path and a smooth elastic deformation all vary.

Axes are (z, y, x): z runs head to tail, y back (dorsal, low y) to belly (ventral, high y), x
across. Voxels are isotropic, 0.28 mm by default, as in the database's native scans.

Given a real label map (:class:`~.atlas.LabelAtlas`), the phantom draws the organs the map has
from the map's own shapes instead: fitted to the phantom's organ layout, then warped by a random
affine (scale, small rotation, shift) and a smooth elastic field, each organ varied on its own
(size, stretch, turn, shift), and resampled to the phantom's grid.
The organs the map lacks keep the ellipsoid model's shapes, so every phantom holds all 9 organs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from ..organs import CT_ORGANS

if TYPE_CHECKING:
    from .atlas import LabelAtlas

CONDITIONS = ("native", "contrast")
DEFAULT_SHAPE = (200, 110, 150)
DEFAULT_SPACING = 0.28

# Materials beyond the labelled organs (organ materials reuse the organ's label value).
AIR, FAT, MUSCLE, BED, GAS, MARROW, CONTENT = 20, 21, 22, 23, 24, 25, 26

# Mean HU per material and condition. Native soft organs differ by a few HU only, so in native
# scans fat planes (perirenal, pericardial, pelvic) outline the organs, as in real mice; the
# database's contrast agent (ExiTron nano) makes liver and spleen bright.
_HU_NATIVE = {
    AIR: -1000, FAT: -110, MUSCLE: 45, BED: 120, GAS: -880, MARROW: 380, CONTENT: 70,
    CT_ORGANS["heart"]: 42, CT_ORGANS["lungs"]: -420, CT_ORGANS["liver"]: 58,
    CT_ORGANS["kidneys"]: 38, CT_ORGANS["spleen"]: 52, CT_ORGANS["bladder"]: 12,
    CT_ORGANS["intestine"]: 30, CT_ORGANS["stomach"]: 25, CT_ORGANS["bone"]: 1350,
}
_HU_CONTRAST = {
    **_HU_NATIVE,
    CT_ORGANS["liver"]: 330, CT_ORGANS["spleen"]: 430, CT_ORGANS["heart"]: 85,
}
_TEXTURE_HU = {CT_ORGANS["lungs"]: 90.0, CT_ORGANS["bone"]: 150.0, CONTENT: 60.0}


@dataclass(frozen=True)
class CTPhantom:
    """One synthetic scan: HU image, organ labels and their metadata."""

    image: np.ndarray  #: (z, y, x) int16, Hounsfield units
    labels: np.ndarray  #: (z, y, x) uint8, values as in ``organs``
    spacing: tuple[float, float, float]  #: voxel size in mm, (z, y, x)
    organs: dict[str, int]  #: organ name -> label value
    condition: str  #: "native" or "contrast"
    seed: int
    anatomy: str = "ellipsoids"  #: the label map the organs came from, or "ellipsoids"
    #: organ -> the map its shape came from, where that is not ``anatomy`` (``mix``)
    borrowed: dict[str, str] = dataclasses.field(default_factory=dict)
    #: what fills the room the map's organs leave (:data:`VOIDS`); without a map nothing is replaced
    #: and the value changes nothing
    voids: str = "viscera"

    def organ_volumes(self) -> dict[str, float]:
        """Volume in mm³ of each organ in the truth labels."""
        counts = np.bincount(self.labels.ravel(), minlength=max(self.organs.values()) + 1)
        voxel = float(np.prod(self.spacing))
        return {name: float(counts[value]) * voxel for name, value in self.organs.items()}


def _check_args(shape: tuple[int, ...], spacing: float, condition: str, seed: int) -> tuple[int, int, int]:
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if len(shape) != 3 or any(not isinstance(n, (int, np.integer)) for n in shape):
        raise ValueError(f"shape must be three integers (z, y, x), got {shape!r}")
    if min(shape) < 24:
        raise ValueError(f"shape {tuple(shape)} is too small: each axis needs at least 24 voxels")
    if max(shape) > 1024:
        raise ValueError(f"shape {tuple(shape)} is too large: at most 1024 voxels per axis")
    if not np.isfinite(spacing) or spacing <= 0:
        raise ValueError(f"spacing must be a positive number of mm, got {spacing!r}")
    return tuple(int(n) for n in shape)  # type: ignore[return-value]


class _Canvas:
    """Paints ellipsoids and tubes into material and label volumes, in default-scan voxel units.

    Geometry is written for the 200×110×150 default scan and scaled to the requested shape, so a
    small test phantom is the same animal seen at a coarser grid.
    """

    def __init__(self, shape: tuple[int, int, int], rng: np.random.Generator) -> None:
        self.shape = shape
        self.rng = rng
        self.scale = np.array(shape, float) / np.array(DEFAULT_SHAPE, float)
        self.material = np.full(shape, AIR, np.uint8)
        self.labels = np.zeros(shape, np.uint8)

    def region(self, center, radii, rotation=None):
        """Slices of the bounding box and the boolean ellipsoid inside it."""
        c = np.asarray(center, float) * self.scale
        r = np.maximum(np.asarray(radii, float) * self.scale, 0.5)
        reach = r.max() if rotation is not None else r
        lo = np.maximum(np.floor(c - reach - 1), 0).astype(int)
        hi = np.minimum(np.ceil(c + reach + 2), self.shape).astype(int)
        if np.any(hi <= lo):
            return None, None
        grids = np.meshgrid(*(np.arange(a, b) - cc for a, b, cc in zip(lo, hi, c)), indexing="ij")
        pts = np.stack(grids, axis=-1)
        if rotation is not None:
            pts = pts @ rotation
        inside = ((pts / r) ** 2).sum(-1) <= 1.0
        return tuple(slice(a, b) for a, b in zip(lo, hi)), inside

    def ellipsoid(self, center, radii, material, label=0, rotation=None, within=None) -> None:
        sl, inside = self.region(center, radii, rotation)
        if sl is None:
            return
        if within is not None:
            inside &= np.isin(self.material[sl], within)
        self.material[sl][inside] = material
        if label or within is not None:
            self.labels[sl][inside] = label

    def tube(self, points, radius, material, label=0, within=None) -> np.ndarray:
        """Paint a tube of the given radius along a polyline; returns the painted mask."""
        pts = np.asarray(points, float) * self.scale
        lo = np.maximum(np.floor(pts.min(0) - radius * self.scale.max() - 2), 0).astype(int)
        hi = np.minimum(np.ceil(pts.max(0) + radius * self.scale.max() + 3), self.shape).astype(int)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        seeds = np.ones(hi - lo, bool)
        idx = np.round(pts - lo).astype(int)
        idx = idx[np.all((idx >= 0) & (idx < hi - lo), axis=1)]
        seeds[tuple(idx.T)] = False
        inside = ndi.distance_transform_edt(seeds, sampling=1.0 / self.scale) <= radius
        if within is not None:
            inside &= np.isin(self.material[sl], within)
        self.material[sl][inside] = material
        self.labels[sl][inside] = label
        full = np.zeros(self.shape, bool)
        full[sl] = inside
        return full


def _rotation(rng: np.random.Generator, degrees: float) -> np.ndarray:
    """A random rotation matrix of at most ``degrees`` about each axis."""
    a, b, c = np.deg2rad(rng.uniform(-degrees, degrees, 3))
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _body_profile(z: np.ndarray) -> np.ndarray:
    """Relative body radius along z: shoulders, wider abdomen, tapering pelvis."""
    knots_z = [0, 20, 60, 110, 150, 180, 200]
    knots_r = [0.78, 0.84, 0.92, 1.0, 0.95, 0.78, 0.6]
    return np.interp(z, knots_z, knots_r)


def _paint_body(cv: _Canvas, size: float) -> tuple[float, float, float, float]:
    """Body outline with skin fat and muscle, and the scanner bed under the belly."""
    z_len, y_len, x_len = cv.shape
    zz = np.arange(z_len) / cv.scale[0]
    prof = _body_profile(zz)
    yc, xc = 55 + cv.rng.uniform(-2, 2), 75 + cv.rng.uniform(-3, 3)
    ry, rx = 29 * size, 47 * size
    y = (np.arange(y_len) / cv.scale[1] - yc)[None, :, None]
    x = (np.arange(x_len) / cv.scale[2] - xc)[None, None, :]
    p = prof[:, None, None]
    # flatter belly: ventral half slightly wider in x
    r2 = (y / (ry * p)) ** 2 + (x / (rx * p * (1 + 0.06 * (y > 0)))) ** 2
    cv.material[r2 <= 1.0] = FAT
    cv.material[r2 <= 0.86] = MUSCLE
    bed = (y >= ry * 1.05 + 2) & (y <= ry * 1.05 + 5) & (np.abs(x) <= 60)
    cv.material[np.broadcast_to(bed, cv.shape) & (cv.material == AIR)] = BED
    return yc, xc, ry, rx


def _paint_bone(cv: _Canvas, yc: float, xc: float, ry: float, rx: float, size: float) -> None:
    """Spine with vertebrae, ribs and sternum, shoulder blades, pelvis and femurs."""
    rng, bone = cv.rng, CT_ORGANS["bone"]
    spine_y = yc - 0.62 * ry
    z = 0.0
    while z < 200:
        length = rng.uniform(8, 11) * size
        cv.ellipsoid((z + length / 2, spine_y, xc), (length / 2 - 0.8, 4.8, 5.4), bone, bone)
        cv.ellipsoid((z + length / 2, spine_y + 1, xc), (length / 4, 1.6, 9.0), bone, bone)
        cv.ellipsoid((z + length / 2, spine_y - 5, xc), (length / 3, 3.5, 1.6), bone, bone)
        z += length
    canal = [(zz, spine_y, xc) for zz in np.arange(0, 200, 2.0)]
    cv.tube(canal, 1.6, MUSCLE, 0)
    for zr in np.arange(4, 72, 7.5 * size):  # ribs: half-rings from the spine round to the sternum
        t = np.linspace(-0.05 * np.pi, 0.95 * np.pi, 60)
        for side in (-1, 1):
            prof = _body_profile(np.array([zr]))[0]
            pts = [(zr + 4 * np.sin(tt) * 0.3, yc - 0.8 * ry * prof * np.cos(tt),
                    xc + side * 0.86 * rx * prof * np.sin(tt) * 0.82) for tt in t]
            cv.tube(pts, 1.1, bone, bone)
    cv.tube([(zz, yc + 0.8 * ry * 0.9, xc) for zz in np.arange(6, 70, 2.0)], 1.6, bone, bone)
    for side in (-1, 1):
        cv.ellipsoid((18, spine_y + 2, xc + side * 22), (16, 2, 9), bone, bone, _rotation(rng, 10))
        cv.tube([(8 + t, yc + 0.2 * t, xc + side * (30 + 0.2 * t)) for t in range(0, 24, 2)], 2.0, bone, bone)
        cv.ellipsoid((165, spine_y + 6, xc + side * 13), (16, 4, 3), bone, bone, _rotation(rng, 8))
        cv.tube([(170 + t, yc + 6 + 0.3 * t, xc + side * (22 + 0.5 * t)) for t in range(0, 30, 2)], 2.3, bone, bone)


def _paint_organs(cv: _Canvas, yc: float, xc: float, ry: float, rx: float, size: float,
                  fill_rng: np.random.Generator) -> None:
    """Thoracic and abdominal organs, each jittered in size, position and orientation.
    ``fill_rng`` draws how full the stomach and bladder are."""
    rng = cv.rng
    soft = [FAT, MUSCLE]

    def j(v: float, spread: float = 3.0) -> float:
        return v + rng.uniform(-spread, spread)

    def s(r: tuple[float, float, float], spread: float = 0.1) -> tuple[float, ...]:
        return tuple(v * size * rng.uniform(1 - spread, 1 + spread) for v in r)

    def fat_capsule(center, radii, rotation, margin: float) -> None:
        """Fat around an organ, as the perirenal, pericardial and pelvic fat of real mice."""
        cv.ellipsoid(center, tuple(r + margin for r in radii), FAT, 0, rotation, within=[MUSCLE])

    o = CT_ORGANS
    # Lungs first, then the heart cut into them.
    for side in (-1, 1):
        cv.ellipsoid((j(36), yc - 2, xc + side * j(16, 2)), s((25, 13, 11)), o["lungs"], o["lungs"],
                     _rotation(rng, 8), within=soft)
    heart = ((j(40), yc + 8, j(xc + 4)), s((17, 12, 13)), _rotation(rng, 15))
    fat_capsule(*heart, 1.5)
    cv.ellipsoid(*heart[:2], o["heart"], o["heart"], heart[2], within=soft + [o["lungs"]])
    # Trachea: air, unlabelled.
    cv.tube([(zz, yc - 4, xc) for zz in np.arange(0, 18, 2.0)], 1.4, GAS, 0)
    # Liver: three lobes under the diaphragm, never into the thorax.
    liver_z = j(80)
    for dz, dy, dx, r in ((0, 4, -8, (20, 26, 32)), (4, 10, 18, (15, 19, 23)), (-2, 6, -26, (13, 17, 16))):
        cv.ellipsoid((liver_z + dz, yc + dy, xc + dx), s(r), o["liver"], o["liver"], _rotation(rng, 12),
                     within=soft)
    # Stomach on the left with a gas cap and food, spleen lateral to it. Hollow organs fill and
    # empty: their volume varies as a map organ's does (ORGAN_VOLUME), from a stream of its own.
    fill = {organ: np.cbrt(fill_rng.uniform(*ORGAN_VOLUME[organ])) for organ in ("stomach", "bladder")}

    def full(organ: str, r: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(v * fill[organ] for v in r)

    z, y, x = stomach = (j(86), yc - 2, xc + j(22))
    cv.ellipsoid(stomach, s(full("stomach", (13, 12, 13))), o["stomach"], o["stomach"], _rotation(rng, 15),
                 within=soft + [o["liver"]])
    for offset, radii, material in (((0, -8, 0), (6, 4, 7), GAS), ((3, 3, 0), (6, 5, 6), CONTENT)):
        dz, dy, dx = full("stomach", offset)
        cv.ellipsoid((z + dz, y + dy, x + dx), full("stomach", radii), material, o["stomach"], within=[o["stomach"]])
    cv.ellipsoid((j(104), yc + 2, xc + j(35, 2)), s((21, 5, 8)), o["spleen"], o["spleen"],
                 _rotation(rng, 20), within=soft)
    # Kidneys, dorsal on either side of the spine, the right one a little more cranial.
    for side, dz in ((-1, -4), (1, 4)):
        kidney = ((j(118 + dz), yc - 13, xc + side * j(18, 2)), s((18, 10, 11)), _rotation(rng, 15))
        fat_capsule(*kidney, 2.5)
        cv.ellipsoid(*kidney[:2], o["kidneys"], o["kidneys"], kidney[2], within=soft)
    # Bladder, caudal and ventral, in pelvic fat.
    bladder = ((j(172), yc + 13, j(xc, 2)), s(full("bladder", (11, 9, 9)), 0.25))
    fat_capsule(*bladder, None, 2.0)
    cv.ellipsoid(*bladder, o["bladder"], o["bladder"], within=soft)
    _paint_intestine(cv, yc, xc, size)


def _paint_intestine(cv: _Canvas, yc: float, xc: float, size: float) -> None:
    """Gut loops packed into the lower abdomen, with gas and faeces, in visceral fat."""
    rng, gut = cv.rng, CT_ORGANS["intestine"]
    soft = [FAT, MUSCLE]
    # Abdominal cavity inside the muscle wall: mesentery and visceral fat around the loops.
    sl, cavity = cv.region((140, yc + 3, xc), (42, 22 * size, 36 * size))
    if sl is not None:
        cavity &= cv.material[sl] == MUSCLE
        fatty = ndi.gaussian_filter(rng.standard_normal(cavity.shape), 2.0) > -0.1
        cv.material[sl][cavity & fatty] = FAT
    t = np.linspace(0, 1, 4000)
    freqs = rng.uniform(4, 12, (3, 3))
    phases = rng.uniform(0, 2 * np.pi, (3, 3))
    wave = [np.sum(np.sin(2 * np.pi * np.outer(t, freqs[i]) + phases[i]), axis=1) / 2.2 for i in range(3)]
    pts = np.stack([140 + 30 * wave[0], yc + 5 + 16 * wave[1], xc + 30 * wave[2]], axis=1)
    pts[:, 0] = np.clip(pts[:, 0], 104, 172)
    inside = cv.tube(pts, 4.4 * size, gut, gut, within=soft)
    _gut_contents(cv, pts, ndi.binary_erosion(inside, iterations=1), rng)


def _gut_contents(cv: _Canvas, points: np.ndarray, lumen: np.ndarray, rng: np.random.Generator) -> None:
    """Balls of gas or faeces at random ``points`` (default-scan voxels) of a gut, inside its ``lumen``."""
    count = int(rng.integers(18, 30))
    for k in rng.choice(len(points), min(count, len(points)), replace=False):
        material = GAS if rng.random() < 0.4 else CONTENT
        sl, ball = cv.region(points[k], (5, 5, 5))
        if sl is not None:
            ball &= lumen[sl]
            cv.material[sl][ball] = material


def _displacement(shape: tuple[int, int, int], rng: np.random.Generator, amplitude: float,
                  scale: np.ndarray) -> list[np.ndarray]:
    """A smooth random displacement field, one (z, y, x) array per axis, at most ``amplitude`` x
    ``scale[axis]`` voxels along each axis."""
    coarse = tuple(max(4, n // 16) for n in shape)
    fields = []
    for axis in range(3):
        field = rng.standard_normal(coarse).astype(np.float32)
        field = ndi.zoom(ndi.gaussian_filter(field, 1.0), np.array(shape) / np.array(coarse), order=1)
        field = field[: shape[0], : shape[1], : shape[2]]
        field *= amplitude / (np.abs(field).max() + 1e-6) * scale[axis]
        pad = [(0, n - f) for n, f in zip(shape, field.shape)]
        fields.append(np.pad(field, pad, mode="edge"))
    return fields


def _deform(cv: _Canvas, amplitude: float) -> None:
    """Smooth random elastic deformation of materials and labels (nearest-neighbour)."""
    coords = list(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in cv.shape), indexing="ij"))
    for axis, field in enumerate(_displacement(cv.shape, cv.rng, amplitude, cv.scale)):
        coords[axis] += field
    cv.material = ndi.map_coordinates(cv.material, coords, order=0, mode="nearest")
    cv.labels = ndi.map_coordinates(cv.labels, coords, order=0, mode="nearest")


# How a real label map is fitted and warped: rotation (degrees), per-axis scale, shift and elastic
# displacement (default-scan voxels, 0.28 mm each). Fat margins (default-scan voxels) around the
# map's organs, as ``_paint_organs`` puts around its own.
ATLAS_ROTATION, ATLAS_SCALE, ATLAS_SHIFT, ATLAS_ELASTIC = 12.0, (0.8, 1.25), 5.0, 6.0
_FAT_MARGINS = {"heart": 1.5, "kidneys": 2.5, "bladder": 2.0}
# Each organ of the map then varies on its own, as organs do between mice: a volume factor (hollow
# organs fill and empty), a per-axis stretch, a rotation (degrees) and a shift (default-scan
# voxels) about its own centre. Bone spans the body and keeps the map's frame.
ORGAN_VOLUME = {"stomach": (0.5, 2.5), "bladder": (0.4, 2.5), "intestine": (0.7, 1.5)}
ORGAN_VOLUME_DEFAULT, ORGAN_STRETCH, ORGAN_ROTATION, ORGAN_SHIFT = (0.7, 1.4), (0.88, 1.14), 10.0, 4.0
#: ``variation`` scales those warps (elastic field, organ rotations and shifts) and raises the
#: organs' volume and stretch ranges to its power: 1 is the ranges above, 0 the map's own shapes
#: (still fitted, turned and scaled as a whole), 2 twice the spread. Training data may use more
#: than 1 so that a network meets shapes wider than any one map's; test phantoms keep 1.
MAX_VARIATION = 3.0
#: Painting order of the varied organs: the larger first, so a smaller one is never buried.
_ORGAN_ORDER = ("liver", "intestine", "lungs", "stomach", "kidneys", "spleen", "heart", "bladder")


def _organ_variation(coords: np.ndarray, atlas: LabelAtlas, voxels_per_mm: float, rng: np.random.Generator,
                     variation: float = 1.0, borrowed: dict[str, LabelAtlas] | None = None) -> np.ndarray:
    """The map's labels at ``coords`` (map voxels, (3, z, y, x)), each organ moved on its own.
    ``voxels_per_mm``: the fit's scale, default-scan voxels per mm of the map; ``variation``: see
    :data:`MAX_VARIATION` (the random draws are the same at any value).

    Each organ's points are mapped by the inverse of a random similarity-plus-stretch about the
    organ's centre in the map, so the organ grows, turns and shifts in place; organs are painted
    larger first. Bone (and any organ not in ``_ORGAN_ORDER``) is sampled unmoved.
    ``borrowed``: organs whose shape comes from another map (:func:`borrowed_organs`), scaled to this
    map's volume of the organ and centred where this map has it; the same draws move it.
    """
    spacing = np.asarray(atlas.spacing, np.float32)
    out = ndi.map_coordinates(atlas.labels, coords, order=0, mode="constant", cval=0)
    moving = [o for o in _ORGAN_ORDER if o in atlas.organs]
    out[np.isin(out, [CT_ORGANS[o] for o in moving])] = 0
    for organ in moving:
        low, high = ORGAN_VOLUME.get(organ, ORGAN_VOLUME_DEFAULT)
        volume = np.exp(rng.uniform(variation * np.log(low), variation * np.log(high)))
        stretch = rng.uniform(*(np.power(ORGAN_STRETCH, variation)), 3)
        local = _rotation(rng, variation * ORGAN_ROTATION) @ np.diag(np.cbrt(volume / np.prod(stretch)) * stretch)
        shift = rng.uniform(-ORGAN_SHIFT, ORGAN_SHIFT, 3) * variation / voxels_per_mm  # mm of the map
        centre = atlas.centroids[organ]  # mm in the map
        source = (borrowed or {}).get(organ, atlas)  # the map whose shape is drawn
        size = np.cbrt(atlas.volumes[organ] / source.volumes[organ])  # its organ to this map's volume
        source_spacing = np.asarray(source.spacing, np.float32)
        inverse = (np.linalg.inv(local) / size * (1 / source_spacing)[:, None] * spacing[None, :]).astype(np.float32)
        centre_vox = (centre / spacing).astype(np.float32)
        shift_vox = (shift / spacing).astype(np.float32)
        moved = np.tensordot(inverse, coords - (centre_vox + shift_vox)[:, None, None, None], axes=1)
        moved += (source.centroids[organ] / source_spacing).astype(np.float32)[:, None, None, None]
        mask = ndi.map_coordinates((source.labels == CT_ORGANS[organ]).astype(np.uint8), moved, order=0,
                                   mode="constant", cval=0)
        out[mask > 0] = CT_ORGANS[organ]
    return out


def _warp_atlas(cv: _Canvas, atlas: LabelAtlas, rng: np.random.Generator, variation: float = 1.0,
                borrowed: dict[str, LabelAtlas] | None = None) -> np.ndarray:
    """The map's labels on the canvas grid: fitted to the phantom's own organs, then warped.

    The fit matches the centre and total volume of the organs the map has (bone aside, whose
    extent depends on the scan's field of view) with the same organs of the ellipsoid model, so
    the map's shapes and proportions land where the phantom's body holds them. A random affine
    and elastic field warp the whole map; :func:`_organ_variation` then varies each organ.
    ``variation`` scales the elastic field and each organ's variation (:data:`MAX_VARIATION`);
    ``borrowed`` organs take another map's shape (:func:`_organ_variation`).
    """
    fit = [o for o in atlas.organs if o != "bone"] or list(atlas.organs)
    values = [CT_ORGANS[o] for o in fit]
    counts = np.bincount(cv.labels.ravel(), minlength=256)
    ours = float(counts[values].sum()) / float(np.prod(cv.scale))  # default-scan voxels
    per_mm = np.cbrt(ours / sum(atlas.volumes[o] for o in fit))
    centres = ndi.center_of_mass(np.ones(cv.shape, bool), cv.labels, values)
    target = np.mean([np.asarray(c) / cv.scale for c in centres], axis=0) + rng.uniform(-ATLAS_SHIFT, ATLAS_SHIFT, 3)
    source = np.mean([atlas.centroids[o] for o in fit], axis=0)
    matrix = per_mm * _rotation(rng, ATLAS_ROTATION) @ np.diag(rng.uniform(*ATLAS_SCALE, 3))
    to_atlas = np.linalg.inv(matrix) / np.asarray(atlas.spacing)[:, None]  # default voxels -> map voxels
    points = np.indices(cv.shape, dtype=np.float32)
    for axis, field in enumerate(_displacement(cv.shape, rng, variation * ATLAS_ELASTIC, np.ones(3))):
        points[axis] = points[axis] / cv.scale[axis] + field - target[axis]
    coords = np.tensordot(to_atlas.astype(np.float32), points, axes=1)
    coords += (source / np.asarray(atlas.spacing)).astype(np.float32)[:, None, None, None]
    return _organ_variation(coords, atlas, per_mm, rng, variation, borrowed)


def borrowed_organs(atlas: LabelAtlas, donors: Sequence[LabelAtlas], mix: float, rng: np.random.Generator
                    ) -> dict[str, LabelAtlas]:
    """Which of the map's organs take their shape from another map: each varied organ, with
    probability ``mix``, from one of the ``donors`` (other maps) that has it, drawn uniformly.

    Two maps give an animal's organs in more combinations than either alone: one mouse's heart
    with another's lungs and liver. The map keeps its layout (where each organ sits, and its
    volume); only the shape is borrowed. Bone spans the body and is never borrowed.
    """
    borrowed = {}
    for organ in _ORGAN_ORDER:
        if organ not in atlas.organs:
            continue
        others = [d for d in donors if d.name != atlas.name and organ in d.organs]
        if rng.random() < mix and others:
            borrowed[organ] = others[int(rng.integers(len(others)))]
    return borrowed


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The bounding box of a mask, grown by ``margin`` voxels, or None for an empty mask."""
    hits = np.nonzero(mask.any(axis=(1, 2)))[0], np.nonzero(mask.any(axis=(0, 2)))[0], np.nonzero(mask.any(axis=(0, 1)))[0]
    if not len(hits[0]):
        return None
    return tuple(slice(max(int(h[0]) - margin, 0), min(int(h[-1]) + margin + 1, n)) for h, n in zip(hits, mask.shape))


def _near(cv: _Canvas, mask: np.ndarray, margin: float) -> tuple[tuple[slice, ...], np.ndarray] | tuple[None, None]:
    """Voxels within ``margin`` default-scan voxels of a mask (the mask included), in its grown box."""
    sl = _box(mask, int(np.ceil(margin * cv.scale.max())) + 1)
    if sl is None:
        return None, None
    return sl, ndi.distance_transform_edt(~mask[sl], sampling=1.0 / cv.scale) <= margin


def _hold(cv: _Canvas, organs: np.ndarray) -> None:
    """Grow the body where the map's organs reach outside it: muscle around them, skin fat outside."""
    sl, near = _near(cv, organs, 3.0)
    if sl is None:
        return
    added = near & np.isin(cv.material[sl], [AIR, BED])
    if not added.any():
        return
    cv.material[sl][added] = MUSCLE
    body = ~np.isin(cv.material[sl], [AIR, BED])
    skin = body & ~ndi.binary_erosion(body, iterations=2, border_value=1) & (cv.material[sl] == MUSCLE)
    cv.material[sl][skin] = FAT


def _clear_capsules(cv: _Canvas, labels_before: np.ndarray, atlas: LabelAtlas) -> None:
    """Take away the fat capsules of the ellipsoid organs the map replaces.

    Left behind, a capsule would outline a "ghost" organ in unlabelled muscle, which in native
    scans looks just like a kidney or a heart: a label that contradicts the image. Fat near the
    skin is the body's own and stays.
    """
    replaced = [organ for organ in _FAT_MARGINS if organ in atlas.organs]
    if not replaced:
        return
    deep = ndi.binary_erosion(~np.isin(cv.material, [AIR, BED]), iterations=4)
    for organ in replaced:
        sl, near = _near(cv, labels_before == CT_ORGANS[organ], _FAT_MARGINS[organ] + 1.0)
        if sl is not None:
            capsule = near & deep[sl] & (cv.material[sl] == FAT) & (cv.labels[sl] == 0)
            cv.material[sl][capsule] = MUSCLE


def _paint_atlas(cv: _Canvas, warped: np.ndarray, atlas: LabelAtlas, rng: np.random.Generator,
                 void_rng: np.random.Generator | None) -> None:
    """Replace the ellipsoid organs the map has by the map's warped ones.

    The map's organs take their place over soft tissue and the other organs, not over the
    phantom's skeleton unless the map brings its own bone. An organ the map lacks keeps its
    ellipsoid shape; where the map's organs would cover more than half of it, it is drawn back.
    ``void_rng`` draws the fat of the places the replaced ellipsoid organs held and the map's do
    not (``viscera``, :data:`VOIDS`); None leaves them muscle.
    """
    o = CT_ORGANS
    mine = [o[n] for n in atlas.organs]
    labels_before, material_before = cv.labels.copy(), cv.material.copy()
    old = np.isin(cv.labels, mine)
    cv.material[old], cv.labels[old] = MUSCLE, 0
    _clear_capsules(cv, labels_before, atlas)
    _hold(cv, warped > 0)
    for organ, margin in _FAT_MARGINS.items():
        if organ in atlas.organs:
            sl, near = _near(cv, warped == o[organ], margin)
            if sl is not None:
                cv.material[sl][near & (cv.material[sl] == MUSCLE)] = FAT
    free = ~np.isin(cv.material, [AIR, BED]) & (cv.labels != o["bone"])
    for value in mine:
        inside = (warped == value) & free
        cv.material[inside], cv.labels[inside] = value, value
    if void_rng is not None:
        _fill_voids(cv, old & (cv.labels == 0) & (cv.material == MUSCLE), void_rng)
    _fill_hollow_organs(cv, atlas, rng)
    before = np.bincount(labels_before.ravel(), minlength=256)
    after = np.bincount(cv.labels.ravel(), minlength=256)
    for organ, value in o.items():
        if organ not in atlas.organs and after[value] < 0.5 * before[value]:
            back = labels_before == value
            cv.material[back], cv.labels[back] = material_before[back], value


#: What fills a void, a place a replaced ellipsoid organ held and the map's organs do not:
#: ``viscera`` (the default since 2026-12-05), a sponge of fat and unlabelled soft tissue, as
#: mesentery, fat and gut loops fill a mouse's body cavity; ``muscle``, the solid block of soft
#: tissue shaped like the ellipsoid organ that earlier phantoms left there.
VOIDS = ("viscera", "muscle")
#: Share of a void that becomes fat, and the Gaussian sigma of the random field that places it
#: (default-scan voxels: 0.56 mm, which gives fat strands about 2 mm thick, 1-4 mm).
VOID_FAT, VOID_SCALE = 0.5, 2.0


def _fill_voids(cv: _Canvas, voids: np.ndarray, rng: np.random.Generator) -> None:
    """Turn about :data:`VOID_FAT` of the ``voids`` into fat, in strands about 2 mm thick: a
    smoothed random field cut at its quantile inside the voids. The rest stays soft tissue."""
    sl = _box(voids, 0)
    if sl is None:
        return
    inside = voids[sl]
    field = ndi.gaussian_filter(rng.standard_normal(inside.shape).astype(np.float32), VOID_SCALE * cv.scale)
    fat = inside & (field < np.quantile(field[inside], VOID_FAT))
    cv.material[sl][fat] = FAT


def _fill_hollow_organs(cv: _Canvas, atlas: LabelAtlas, rng: np.random.Generator) -> None:
    """Gas and food in the map's stomach, gas and faeces in its gut, as in the ellipsoid model."""
    if "stomach" in atlas.organs:
        stomach = cv.labels == CT_ORGANS["stomach"]
        if stomach.any():
            ys = np.nonzero(stomach)[1]
            gas = stomach & (np.arange(cv.shape[1])[None, :, None] <= np.quantile(ys, 0.2))  # gas rises dorsally
            cv.material[gas] = GAS
            points = np.argwhere(stomach & ~gas)
            if len(points):
                sl, ball = cv.region(points[rng.integers(len(points))] / cv.scale, (6, 5, 6))
                if sl is not None:
                    cv.material[sl][ball & stomach[sl] & ~gas[sl]] = CONTENT
    if "intestine" in atlas.organs:
        lumen = ndi.binary_erosion(cv.labels == CT_ORGANS["intestine"], iterations=1)
        points = np.argwhere(lumen) / cv.scale
        if len(points):
            _gut_contents(cv, points, lumen, rng)


def _render(cv: _Canvas, condition: str) -> np.ndarray:
    """Materials to HU: per-material texture, partial-volume blur and scanner noise."""
    table = _HU_CONTRAST if condition == "contrast" else _HU_NATIVE
    lut = np.zeros(256, np.float32)
    for material, hu in table.items():
        lut[material] = hu
    hu = lut[cv.material]
    texture_amp = np.full(256, 12.0, np.float32)
    texture_amp[AIR] = 0.0
    for material, amp in _TEXTURE_HU.items():
        texture_amp[material] = amp
    texture = ndi.gaussian_filter(cv.rng.standard_normal(cv.shape).astype(np.float32), 1.5)
    texture /= texture.std() + 1e-6
    hu += texture * texture_amp[cv.material]
    # Cortical rim: bone surfaces brighter than the marrow-filled interior.
    bone = cv.labels == CT_ORGANS["bone"]
    interior = ndi.binary_erosion(bone, iterations=2)
    hu[interior] = table[MARROW] + 0.3 * (hu[interior] - table[CT_ORGANS["bone"]])
    hu = ndi.gaussian_filter(hu, 0.8)
    noise = ndi.gaussian_filter(cv.rng.standard_normal(cv.shape).astype(np.float32), 0.6)
    hu += noise * (38.0 / (noise.std() + 1e-6))
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)


def ct_phantom(
    seed: int = 0,
    condition: str = "native",
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: float = DEFAULT_SPACING,
    atlas: LabelAtlas | None = None,
    variation: float = 1.0,
    donors: Sequence[LabelAtlas] = (),
    mix: float = 0.0,
    voids: str = "viscera",
) -> CTPhantom:
    """Make one synthetic whole-body mouse micro-CT scan with organ labels.

    Parameters
    ----------
    seed : int
        Draws the animal: the same seed gives the same anatomy and noise, for both conditions.
    condition : {"native", "contrast"}
        Native soft organs are barely distinguishable; with contrast, liver and spleen are bright.
    shape : (z, y, x)
        Grid size in voxels. The default is about the size of a native Rosenhain scan.
    spacing : float
        Isotropic voxel size in mm.
    atlas : LabelAtlas, optional
        A real label map (:func:`~.atlas.read_atlas`): its organs are drawn from its warped
        shapes, the others from the ellipsoid model. The ellipsoid parts, the body and the noise
        are those of the same seed without a map.
    variation : float
        How far a map's organs are warped, 0 to :data:`MAX_VARIATION`: 1 (the default) is the
        spread of one mouse to the next as drawn so far, 2 twice that, for training data that
        should cover shapes no single map has. The same seed gives the same draws at any value;
        without ``atlas`` it changes nothing.
    donors, mix : sequence of LabelAtlas, float
        Other maps, and the chance (0 to 1) that each organ of ``atlas`` takes its shape from one of
        them that has it (:func:`borrowed_organs`), keeping ``atlas``'s layout and volumes. The draws
        have their own random stream: ``mix=0`` is the phantom without donors, bit for bit.
    voids : {"viscera", "muscle"}
        What fills the places where ``atlas``'s organs leave the ellipsoid organs' room empty
        (:data:`VOIDS`): a sponge of fat and soft tissue (the default), or the solid muscle of
        phantoms drawn before 2026-12-05, bit for bit. Its draws have their own random stream.

    Returns
    -------
    CTPhantom
        HU image (int16), labels (uint8) numbered as in :data:`~napari_mousesegment.organs.CT_ORGANS`.

    Examples
    --------
    >>> scan = ct_phantom(seed=1, condition="contrast")
    >>> scan.image.shape, scan.spacing
    ((200, 110, 150), (0.28, 0.28, 0.28))
    """
    shape = _check_args(shape, spacing, condition, seed)
    if not 0.0 <= float(variation) <= MAX_VARIATION:  # NaN fails too
        raise ValueError(f"variation must be between 0 and {MAX_VARIATION:g}, got {variation!r}")
    rng = np.random.default_rng([int(seed), 20181105])
    cv = _Canvas(shape, rng)
    size = rng.uniform(0.93, 1.07)
    yc, xc, ry, rx = _paint_body(cv, size)
    _paint_bone(cv, yc, xc, ry, rx, size)
    _paint_organs(cv, yc, xc, ry, rx, size, np.random.default_rng([int(seed), 20181105, 3]))
    if not 0.0 <= float(mix) <= 1.0:
        raise ValueError(f"mix must be between 0 and 1, got {mix!r}")
    if voids not in VOIDS:
        raise ValueError(f"voids must be one of {VOIDS}, got {voids!r}")
    borrowed: dict[str, LabelAtlas] = {}
    if atlas is not None:  # its own random stream: the rest of the animal stays the seed's
        if mix > 0:
            borrowed = borrowed_organs(atlas, donors, float(mix), np.random.default_rng([int(seed), 20181105, 4]))
        atlas_rng = np.random.default_rng([int(seed), 20181105, 2])
        _paint_atlas(cv, _warp_atlas(cv, atlas, atlas_rng, float(variation), borrowed), atlas, atlas_rng,
                     np.random.default_rng([int(seed), 20181105, 5]) if voids == "viscera" else None)
    _deform(cv, amplitude=2.5)
    # Noise depends on the condition too, but anatomy does not: reseed from (seed, condition).
    cv.rng = np.random.default_rng([int(seed), CONDITIONS.index(condition), 7])
    image = _render(cv, condition)
    return CTPhantom(image, cv.labels, (float(spacing),) * 3, dict(CT_ORGANS), condition, int(seed),
                     atlas.name if atlas is not None else "ellipsoids", {o: d.name for o, d in borrowed.items()},
                     voids)
