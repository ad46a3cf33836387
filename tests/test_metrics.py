import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from napari_mousesegment.metrics import dice, hd95, jaccard, organ_scores, volume_mm3


def _brute_hd95(a, b, spacing):
    """Independent HD95: all surface voxels (6-neighbour boundary) by brute-force distances."""
    def surface(m):
        padded = np.pad(m, 1)
        inner = np.ones_like(m)
        for axis in range(m.ndim):
            for shift in (-1, 1):
                inner &= np.roll(padded, shift, axis=axis)[tuple(slice(1, -1) for _ in range(m.ndim))]
        return np.argwhere(m & ~inner) * np.asarray(spacing)
    d = cdist(surface(a), surface(b))
    return np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_independent_computation(seed):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:12, :14, :16]
    a = ((zz - 6) / 4.0) ** 2 + ((yy - 7) / 5.0) ** 2 + ((xx - 8) / 6.0) ** 2 < 1 + rng.uniform(-0.2, 0.2)
    b = ((zz - 6.5) / 4.5) ** 2 + ((yy - 6) / 4.0) ** 2 + ((xx - 9) / 5.0) ** 2 < 1 + rng.uniform(-0.2, 0.2)
    spacing = (0.5, 0.28, 0.28)
    inter, sa, sb = (a & b).sum(), a.sum(), b.sum()
    assert dice(a, b) == pytest.approx(2 * inter / (sa + sb))
    assert jaccard(a, b) == pytest.approx(inter / (sa + sb - inter))
    assert hd95(a, b, spacing) == pytest.approx(_brute_hd95(a, b, spacing), rel=1e-6)
    assert volume_mm3(a, spacing) == pytest.approx(sa * 0.5 * 0.28 * 0.28)


def test_empty_mask_conventions():
    empty, full = np.zeros((4, 4), bool), np.ones((4, 4), bool)
    assert dice(empty, empty) == 1 and jaccard(empty, empty) == 1 and hd95(empty, empty, (1, 1)) == 0
    assert dice(full, empty) == 0 and math.isnan(hd95(full, empty, (1, 1)))


def test_organ_scores_map_names_between_numberings():
    pred = np.array([[1, 1, 2, 0]])
    truth = np.array([[5, 5, 0, 7]])
    rows = organ_scores(pred, truth, {"heart": 1, "liver": 2}, {"heart": 5, "bladder": 7}, (1.0, 1.0))
    assert [r["organ"] for r in rows] == ["heart"] and rows[0]["dsc"] == 1.0


def test_instance_matching_against_brute_force_iou():
    from napari_mousesegment.metrics import match_instances, segmentation_scores

    rng = np.random.default_rng(5)
    for _ in range(20):
        truth = np.zeros((30, 30), int)
        pred = np.zeros((30, 30), int)
        for k in range(1, 4):
            y, x = rng.integers(0, 24, 2)
            truth[y:y + 6, x:x + 6] = k
            dy, dx = rng.integers(-3, 4, 2)
            pred[max(y + dy, 0):y + dy + 6, max(x + dx, 0):x + dx + 6] = k + 10
        brute = 0
        for p in np.unique(pred[pred > 0]):
            for t in np.unique(truth[truth > 0]):
                inter = np.sum((pred == p) & (truth == t))
                union = np.sum((pred == p) | (truth == t))
                brute += inter / union >= 0.5
        matched, n_pred, n_true = match_instances(pred, truth)
        assert matched == brute and n_pred == len(np.unique(pred[pred > 0]))
    scores = segmentation_scores(tp=0, fp=0, fn=0, matched=0, n_pred=0, n_true=0)
    assert scores["dice"] == 1.0 and scores["instance_f1"] == 1.0  # nothing to find, nothing found


def test_an_iou_tie_matches_one_to_one():
    from napari_mousesegment.metrics import match_instances

    truth = np.zeros((4, 8), int)
    truth[:, 0:2], truth[:, 2:4] = 1, 2
    pred = np.zeros((4, 8), int)
    pred[:, 1:3] = 1  # IoU 1/3 with each: no match
    assert match_instances(pred, truth) == (0, 1, 2)
    pred = np.zeros((4, 8), int)
    pred[:, 0:4] = 1  # IoU exactly 0.5 with each of two truths: one match, not two
    assert match_instances(pred, truth) == (1, 1, 2)
