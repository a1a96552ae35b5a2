"""Pixel spectrum: the shape of an image's power spectrum along each axis.

Resampling shapes the upper half of the pixel spectrum: a 2x bilinear or bicubic upscale leaves
little energy above a quarter of the sampling rate (bicubic with a notch just below the Nyquist
frequency), a nearest-neighbour one folds images of the lower band up there; a transposed
convolution prints peaks at multiples of its stride. A photograph downscaled from a camera's
frame falls off smoothly. The periodicity profile reads where in a period gradients are strong;
this reads how much energy each band holds, which tells the interpolation kernels apart.

One vector per image, 2 B values (`leakstore.features.pixel_spectrum_dim`):
    [0, B)      log mean power of the 1-D FFT along each row (Hann-windowed, mean removed),
                averaged over rows, in B equal bands of (0, 1/2] cycles per pixel, minus their mean
                (a shape, not a level: content contrast cancels)
    [B, 2 B)    the same along columns
of the image in [0, 1], averaged over colour channels. A pure function of pixels, measured like
the periodicity profile on each image at its own size (a central crop of at most MAX_SIDE).

It serves the open-set scorers (`spectrum`, `fused-pixel` in model/openset.py), not the network:
a new resampler or upsampling decoder is an unseen generator the latent cues barely see.
"""

from __future__ import annotations

import numpy as np

from leakstore.features.periodicity import central_crop  # the same cap for both pixel features measured in the loader

EPS = 1e-10


def pixel_spectrum(gray: np.ndarray, bins: int) -> np.ndarray:
    """gray (H, W) float in [0, 1] -> (2 bins,) float32 (see module doc)."""
    h, w = gray.shape
    if min(h, w) < 2 * bins:
        raise ValueError(
            f"the pixel spectrum needs images of at least {2 * bins} pixels a side, got {h}x{w}: "
            f"featurize with fewer --pixel-spectrum bins or --pixel-spectrum 0"
        )
    out = []
    for axis in (1, 0):  # along rows (horizontal frequencies), then columns
        x = gray - gray.mean(axis, keepdims=True)
        n = x.shape[axis]
        win = np.hanning(n)
        x = x * (win[None, :] if axis == 1 else win[:, None])
        power = (np.abs(np.fft.rfft(x, axis=axis)) ** 2).mean(1 - axis)[1:]  # (n // 2,) without DC
        edges = np.linspace(0, len(power), bins + 1).round().astype(int)
        band = np.log(np.array([power[a:b].mean() for a, b in zip(edges[:-1], edges[1:])]) + EPS)
        out.append(band - band.mean())
    return np.concatenate(out).astype(np.float32)


def pixel_spectrum_of_image(arr: np.ndarray, bins: int) -> np.ndarray:
    """(H, W, 3) uint8 at its own size -> (2 bins,) float32; a central MAX_SIDE crop of larger images."""
    crop = np.asarray(central_crop(arr), dtype=np.float64)
    return pixel_spectrum(crop.mean(2) / 255.0, bins)
