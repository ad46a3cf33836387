"""Instance labels that a single outline cannot carry: pieces, holes, islands, corner contacts."""

from __future__ import annotations

import numpy as np


def nasty_instances() -> np.ndarray:
    """(5, 40, 48) instance labels, one kind of trouble per frame (ids restart per frame)."""
    labels = np.zeros((5, 40, 48), np.uint16)
    two = labels[0]  # two pieces, one with a hole, beside a plain square
    two[3:15, 3:15] = 1
    two[7:10, 6:12] = 0
    two[20:30, 25:33] = 1
    two[30:36, 5:12] = 2
    diagonal = labels[1]  # pieces that meet only at corners: a checkerboard, a staircase, two squares
    diagonal[2:10, 2:10] = (np.indices((8, 8)).sum(0) % 2 == 0)
    diagonal[np.arange(14, 24), np.arange(3, 13)] = 2
    diagonal[26:31, 20:25] = 3
    diagonal[31:36, 25:30] = 3
    diagonal[5:8, 30:33] = 4  # and a ring closed only through corners: its inside is outside
    diagonal[8, 33], diagonal[9, 34], diagonal[10, 33], diagonal[11, 32] = 4, 4, 4, 4
    diagonal[10, 31], diagonal[9, 30] = 4, 4
    nested = labels[2]  # a hole with an island in it, the island with its own hole
    nested[2:30, 2:30] = 1
    nested[6:26, 6:26] = 0
    nested[10:22, 10:22] = 1
    nested[14:18, 14:18] = 0
    nested[15, 15] = 1  # a one-pixel island in the island's hole
    nested[8:10, 35:45] = 2  # another instance inside nothing, and one inside instance 1's hole
    nested[7, 7] = 3
    holes = labels[3]  # holes that touch each other, and the outside, only at corners
    holes[2:20, 2:20] = 1
    holes[5, 5] = holes[6, 6] = holes[7, 5] = 0
    holes[2, 10] = holes[3, 11] = 0  # a notch reaching in through a corner
    holes[25:38, 30:46] = 2
    holes[28:35, 33:43] = 0
    holes[28:35, 33:43][::2, ::2] = 2  # a sieve: islands in one hole
    edges = labels[4]  # single pixels, one-pixel lines, the image border
    edges[0, 0] = 1
    edges[0, 47] = 1
    edges[39, 0:48:3] = 2
    edges[10:30, 47] = 3
    edges[20, 20] = 4
    return labels


def in_roi_order(labels: np.ndarray) -> np.ndarray:
    """Instances renumbered 1.. frame by frame, in id order: the values ROIs of them fill with."""
    out = np.zeros(labels.shape, np.uint16)
    value = 0
    for frame, plane in enumerate(labels):
        for instance in np.unique(plane[plane > 0]):
            value += 1
            out[frame][plane == instance] = value
    return out
