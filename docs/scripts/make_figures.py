"""Make the pictures in docs/images from the synthetic samples.

Run from the repository root:  xvfb-run -a python docs/scripts/make_figures.py
The napari screenshot needs a display (Xvfb); the other figures need only numpy and imageio.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from scipy import ndimage as ndi

from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.data.phantom_us import ultrasound_series
from napari_mousesegment.io.composites import montage
from napari_mousesegment.organs import CT_COLORS, CT_ORGANS

OUT = Path(__file__).resolve().parents[1] / "images"
US_COLORS = {"heart": (230, 25, 75), "liver": (60, 180, 75), "placenta": (67, 99, 216)}


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)], np.uint8)


def _window(hu: np.ndarray) -> np.ndarray:
    return (np.clip((hu + 500) / 1700, 0, 1) * 255).astype(np.uint8)


def _outline(rgb: np.ndarray, mask: np.ndarray, color) -> None:
    edge = mask & ~ndi.binary_erosion(mask)
    rgb[edge] = color


def ct_figure() -> None:
    """Coronal and axial slices of both conditions, truth outlined in organ colours."""
    panels = []
    for condition in ("native", "contrast"):
        scan = ct_phantom(seed=0, condition=condition)
        views = [(scan.image[:, 58, :], scan.labels[:, 58, :]),
                 (scan.image[42], scan.labels[42]), (scan.image[86], scan.labels[86]),
                 (scan.image[118], scan.labels[118])]
        tiles = []
        for hu, lab in views:
            rgb = np.repeat(_window(hu)[..., None], 3, -1)
            for organ, value in CT_ORGANS.items():
                if organ != "bone":
                    _outline(rgb, lab == value, _rgb(CT_COLORS[organ]))
            tiles.append(np.kron(rgb, np.ones((2, 2, 1), np.uint8)))
        column = np.concatenate(tiles[1:], axis=0)
        height = max(tiles[0].shape[0], column.shape[0])
        pad = lambda a: np.pad(a, ((0, height - a.shape[0]), (0, 8), (0, 0)))  # noqa: E731
        panels.append(np.concatenate([pad(tiles[0]), pad(column)], axis=1))
    iio.imwrite(OUT / "ct_phantom.png", np.concatenate(panels, axis=1))


def voids_figure() -> None:
    """A native phantom of the real map CT280_organs, as drawn before 2026-12-05 (solid muscle where
    the map's organs leave the ellipsoid organs' room, top) and since (fat and soft tissue, bottom),
    on a soft-tissue window. Skipped without ../shared/data/rosenhain."""
    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "rosenhain" / "CT280_organs.segff"
    if not path.is_file():
        print(f"skipped voids.png: no {path}")
        return
    from napari_mousesegment.data.atlas import read_atlas

    atlas = read_atlas(path)
    rows = []
    for voids in ("muscle", "viscera"):
        scan = ct_phantom(seed=200, condition="native", atlas=atlas, voids=voids)
        tiles = []
        for z in (95, 120):
            rgb = np.repeat((np.clip((scan.image[z] + 200) / 400, 0, 1) * 255).astype(np.uint8)[..., None], 3, -1)
            for organ, value in CT_ORGANS.items():
                if organ != "bone":
                    _outline(rgb, scan.labels[z] == value, _rgb(CT_COLORS[organ]))
            tiles.append(np.pad(np.kron(rgb, np.ones((2, 2, 1), np.uint8)), ((0, 8), (0, 8), (0, 0))))
        rows.append(np.concatenate(tiles, axis=1))
    iio.imwrite(OUT / "voids.png", np.concatenate(rows, axis=0))


def ultrasound_figures() -> None:
    """The 5x7 montage as the lab receives it, and three frames with their truth outlined."""
    series = ultrasound_series(seed=0)
    iio.imwrite(OUT / "ultrasound_montage.png", montage(series.frames)[::2, ::2])
    tiles = []
    for f in (0, 2, 4):
        rgb = np.repeat(series.frames[f][..., None], 3, -1)
        for organ, color in US_COLORS.items():
            _outline(rgb, series.labels[organ][f] > 0, color)
        tiles.append(np.pad(rgb, ((0, 0), (0, 6), (0, 0))))
    iio.imwrite(OUT / "ultrasound_truth.png", np.concatenate(tiles, axis=1))


def napari_figure() -> None:
    """napari with the contrast micro-CT sample open: 3D rendering of mosnet-synthetic's organs."""
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1100, 700)
    viewer.open_sample("napari-mousesegment", "ct_contrast")
    viewer.dims.ndisplay = 3
    viewer.layers[0].visible = False
    viewer.layers["organs (mosnet-synthetic)"].opacity = 1.0
    viewer.scene.camera.angles = (0, 20, 80)
    viewer.scene.camera.zoom *= 1.3
    iio.imwrite(OUT / "napari_samples.png", viewer.screenshot(canvas_only=False, flash=False))
    viewer.close()


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    ct_figure()
    voids_figure()
    ultrasound_figures()
    napari_figure()
    print(f"figures written to {OUT}")
