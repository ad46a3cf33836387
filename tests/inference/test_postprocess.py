import numpy as np

from napari_mousesegment.inference.postprocess import clean_labels


def test_cleanup_keeps_largest_piece_and_drops_fragments():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:5, 1:5, 1:5] = 1  # heart, main piece
    labels[7, 7, 7] = 1  # heart fragment
    labels[1:4, 6:9, 1:4] = 4  # kidney one
    labels[6:9, 1:4, 6:9] = 4  # kidney two
    labels[0, 9, 9] = 4  # kidney speck below the volume threshold
    out = clean_labels(labels, {"heart": 1, "kidneys": 4}, (1.0, 1.0, 1.0), min_volume_mm3=5)
    assert out[7, 7, 7] == 0 and out[2, 2, 2] == 1
    assert out[2, 7, 2] == 4 and out[7, 2, 7] == 4 and out[0, 9, 9] == 0
    assert set(np.unique(out)) <= {0, 1, 4} and (out[labels == 0] == 0).all()
