"""Residual co-occurrences: how a generator's last layers arrange the finest pixel detail.

Steganalysis reads an image's processing history from the joint statistics of neighbouring
noise residuals (the SPAM and rich-model features): a decoder, an upsampler or a denoiser leaves
some pairs of small neighbouring differences more common than a camera or another generator
does, whatever the content. Here, on the luma at the image's own size (a central crop of at most
SIDE a side, its corner on the 8-pixel grid):

    [0, L^2)         log joint histogram of neighbouring first differences x[j+1] - x[j], pairs
                     (r[j], r[j+1]) rounded and clipped to [-T, T] (L = 2 T + 1 levels), the
                     horizontal and vertical histograms averaged
    [L^2, 2 L^2)     the same for second differences (x[j] - 2 x[j+1] + x[j+2]) / 2
    + 3              correlation of the colour channels' 4-neighbour Laplacian residuals (R-G, G-B, R-B)
    + 1              mean log standard deviation of those residuals
    + 2              mean and standard deviation of the saturation (max - min) / max
    + 5              10/25/50/75/90 % quantiles of the log variance of the luma's 4 x 4 blocks

so 2 L^2 + 11 values per image (`leakstore.features.cooccurrence_dim`; 29 at T = 1, the default).
T = 1 reads each difference as down, flat (within half a grey level) or up: finer levels read
how a file was re-encoded more than who made it (on RealGen-dev, T = 3 flagged known images
re-saved as JPEG more often, T = 1 less often than without the feature: docs/results). A pure
function of pixels, measured by the loader on each image (crop) after any view. The network
does not read it: the statistics' discriminant does (the `lda` open-set scorer and the closed-set
discriminant), beside the latent and spectral statistics.
"""

from __future__ import annotations

import numpy as np

from leakstore.features.noise_spectrum import LUMA
from leakstore.features.periodicity import central_crop  # the loader's pixel features share one cap rule

SIDE = 256  # larger images are measured on a central crop this big (about 5 ms on one CPU thread)
FLOOR = 1e-4  # added to a histogram's frequencies before the log: an empty bin is finite
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
BLOCK = 4


def cooccurrence(r: np.ndarray, t: int) -> np.ndarray:
    """r (H, W) float residual -> (L^2,) float64: the joint histogram of (r[:, j], r[:, j+1]), each
    rounded and clipped to [-t, t], as frequencies (summing to 1)."""
    levels = 2 * t + 1
    q = np.clip(np.rint(r), -t, t).astype(np.int64) + t
    h = np.bincount((q[:, :-1] * levels + q[:, 1:]).ravel(), minlength=levels * levels).astype(np.float64)
    return h / max(h.sum(), 1.0)


def _both_ways(gray: np.ndarray, order: int, t: int) -> np.ndarray:
    """The co-occurrence of `order`-th differences along rows and along columns, averaged."""
    scale = float(order)  # the second difference's weights sum to 4 in absolute value: halve it
    return sum(cooccurrence(np.diff(g, n=order, axis=1) / scale, t) for g in (gray, gray.T)) / 2


def colour_statistics(x: np.ndarray) -> np.ndarray:
    """x (H, W, 3) float64 in [0, 255] -> (6,): the channels' Laplacian-residual correlations
    (R-G, G-B, R-B), their mean log standard deviation, the saturation's mean and standard deviation."""
    c = np.ascontiguousarray(x.transpose(2, 0, 1))  # channel planes: reductions over pixels stay fast
    lap = (4 * c[:, 1:-1, 1:-1] - c[:, :-2, 1:-1] - c[:, 2:, 1:-1] - c[:, 1:-1, :-2] - c[:, 1:-1, 2:]).reshape(3, -1)
    lap = lap - lap.mean(1, keepdims=True)
    var = (lap**2).mean(1)
    corr = [(lap[a] * lap[b]).mean() / np.sqrt(var[a] * var[b] + 1e-9) for a, b in ((0, 1), (1, 2), (0, 2))]
    hi, lo = np.maximum(np.maximum(c[0], c[1]), c[2]), np.minimum(np.minimum(c[0], c[1]), c[2])
    sat = (hi - lo) / (hi + 1e-3)
    return np.array([*corr, np.log(np.sqrt(var) + 1e-3).mean(), sat.mean(), sat.std()])


def texture_quantiles(gray: np.ndarray) -> np.ndarray:
    """gray (H, W) float64 -> (5,): quantiles of the log variance of its BLOCK x BLOCK blocks."""
    h, w = gray.shape[0] // BLOCK * BLOCK, gray.shape[1] // BLOCK * BLOCK
    blocks = gray[:h, :w].reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).var(axis=(1, 3))
    return np.quantile(np.log(blocks + 1e-2), QUANTILES)


def cooccurrence_features(arr: np.ndarray, t: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (2 (2t+1)^2 + 11,) float32 (see module doc); the whole array is measured."""
    if min(arr.shape[:2]) < 2 * BLOCK:
        raise ValueError(
            f"residual co-occurrences need images of at least {2 * BLOCK} pixels a side, got "
            f"{arr.shape[1]}x{arr.shape[0]}: featurize with --cooccurrence 0"
        )
    x = np.asarray(arr, dtype=np.float64)
    gray = x @ LUMA
    hist = np.log(np.concatenate([_both_ways(gray, 1, t), _both_ways(gray, 2, t)]) + FLOOR)
    return np.concatenate([hist, colour_statistics(x), texture_quantiles(gray)]).astype(np.float32)


def cooccurrence_of_image(arr: np.ndarray, t: int) -> np.ndarray:
    """(H, W, 3) uint8 at its own size -> the features of its central SIDE x SIDE part (8-aligned)."""
    return cooccurrence_features(central_crop(arr, align=8, side=SIDE), t)
