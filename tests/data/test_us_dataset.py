import json

import numpy as np
import pytest
import tifffile

from napari_mousesegment.data.phantom_us import ultrasound_series, write_us_series
from napari_mousesegment.data.us_dataset import build_us_dataset, load_us_items, split_series

pytestmark = pytest.mark.filterwarnings("ignore:.*not the usual 35:UserWarning")


def test_split_is_by_whole_series_with_five_held_out():
    names = [f"s{k:02d}" for k in range(25)]
    split = split_series(names, test=5, val_fraction=0.2, seed=3)
    counts = {s: sum(v == s for v in split.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 16, "val": 4, "test": 5}
    assert split == split_series(list(reversed(names)), test=5, val_fraction=0.2, seed=3)  # order-free
    with pytest.raises(ValueError, match="smaller --test"):
        split_series(names[:6], test=5)


def test_dataset_folder_keeps_series_whole(tmp_path):
    for seed in range(4):
        write_us_series(tmp_path / "lab" / f"S{seed}", ultrasound_series(seed=seed, n_frames=3, frame_shape=(64, 80)))
    root = build_us_dataset([tmp_path / "lab"], tmp_path / "ds", ["heart", "liver"], test=1, val_fraction=0.34,
                            log=lambda m: None)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["kind"] == "ultrasound" and len(meta["series"]) == 4
    assert sorted(v["split"] for v in meta["series"].values()) == ["test", "train", "train", "val"]
    items = load_us_items([root], "heart")
    assert {i.name: i.split for i in items} == {n: v["split"] for n, v in meta["series"].items() if "heart" in v["organs"]}
    frames = tifffile.imread(root / "series" / "S0" / "frames.tif")
    assert frames.shape == (3, 64, 80) and frames.dtype == np.uint8
    with pytest.raises(FileExistsError):
        build_us_dataset([tmp_path / "lab"], root, ["heart"], test=1)
