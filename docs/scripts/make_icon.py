"""The plugin's icon (napari hub, plugin manager): a synthetic mouse seen from above, organs in their colours.

    python docs/scripts/make_icon.py   # writes src/napari_mousesegment/icon.png

The organs are the front-most soft-organ label along the belly axis of a contrast phantom, so the picture is
made from the same phantom and colours the plugin shows, not drawn by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.organs import CT_COLORS

OUT = Path(__file__).resolve().parents[2] / "src" / "napari_mousesegment" / "icon.png"
SIZE = 256


def main() -> Path:
    phantom = ct_phantom(seed=0, condition="contrast")
    names = {value: organ for organ, value in phantom.organs.items()}
    labels = phantom.labels  # (z, y, x): z head to tail, y the belly axis
    body = (phantom.image > -500).any(axis=1)  # the animal's outline seen from above
    hit = (labels > 0) & (labels != phantom.organs.get("bone", -1))  # soft organs; bone hides them
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), 0)  # the front-most organ along y
    top = np.take_along_axis(labels, first[:, None, :], axis=1)[:, 0, :]
    rgba = np.zeros((*top.shape, 4), np.uint8)
    rgba[body] = (70, 70, 80, 255)
    for value, organ in names.items():
        colour = CT_COLORS.get(organ, "#ffffff").lstrip("#")
        rgba[top == value] = (*(int(colour[i:i + 2], 16) for i in (0, 2, 4)), 255)
    rows, cols = np.nonzero(rgba[..., 3])
    crop = rgba[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    image = Image.fromarray(crop)
    image.thumbnail((SIZE - 16, SIZE - 16), Image.Resampling.NEAREST)
    canvas = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    canvas.paste(image, ((SIZE - image.width) // 2, (SIZE - image.height) // 2))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(OUT)
    return OUT


if __name__ == "__main__":
    print(main())
