"""Crop rows -> images: the one grouping every per-image figure uses (featurize --crops).

A store featurized with `--crops K` holds K rows per image; `image` (N,) names each row's image.
Prediction, the image-level threshold and the leave-one-generator-out study all average over an
image's crops through `ImageGroups`.
"""

from __future__ import annotations

import numpy as np


class ImageGroups:
    """The images of `image` (N,) in the order their first row comes: `ids` (n,), `first` (n,) the
    position of each image's first row, `inv` (N,) each row's image index, `count` (n,) its rows."""

    def __init__(self, image: np.ndarray):
        ids, first, inv = np.unique(np.asarray(image), return_index=True, return_inverse=True)
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        self.ids, self.first, self.inv = ids[order], first[order], rank[inv]
        self.count = np.bincount(self.inv, minlength=len(self.ids)).astype(float)

    def __len__(self) -> int:
        return len(self.ids)

    def mean(self, x) -> np.ndarray:
        """(N, ...) per row -> (n, ...) per image: the mean over each image's rows."""
        x = np.asarray(x, dtype=float)
        out = np.zeros((len(self),) + x.shape[1:])
        np.add.at(out, self.inv, x)
        return out / self.count.reshape((-1,) + (1,) * (x.ndim - 1))
