"""Noise spectrum: the 2-D power spectrum of an image's noise residual.

A generator's last layers (upsampling, the decoder's transposed or resize convolutions, a VQ
decoder's patch grid) print a pattern into the fine detail of every image they make, whatever the
content: peaks and ridges in the spectrum of what is left when the content is taken away. This is
the spectral fingerprint detectors in this field read. Here the content is taken away by the luma's
3 x 3 mean (a median does no better on RealGen-dev and costs three times as much); the residual's
power spectrum is averaged over PATCH x PATCH tiles of a central crop (at most SIDE a side, at the
image's own size, its corner on the 8-pixel grid),
logged, centred on the zero frequency, pooled into B x B bands and made a shape (its mean removed:
contrast cancels).

One vector per image, B * B values (`leakstore.features.noise_spectrum_dim`), row-major over
(vertical, horizontal) frequency bands from -1/2 to 1/2 cycles per pixel. A pure function of
pixels, measured by the loader like the periodicity profile; the network embeds it, and the
`noise` open-set scorer reads it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from leakstore.features.periodicity import central_crop

LUMA = np.array([0.299, 0.587, 0.114])  # grey from RGB (ITU-R BT.601), the pixel features' one rule
PATCH = 64
SIDE = 256  # 16 tiles: enough for a stable average, about 4 ms per image on one CPU thread
EPS = 1e-6


def noise_spectrum(gray: np.ndarray, bins: int) -> np.ndarray:
    """gray (H, W) float -> (bins * bins,) float32 (see module doc). Tiles are PATCH a side, or the
    largest power of two that fits a smaller image (at least `bins`)."""
    h, w = gray.shape
    n = min(PATCH, 1 << int(np.log2(max(1, min(h, w)))))
    if n < bins:
        raise ValueError(
            f"the noise spectrum in {bins} bands needs images of at least {bins} pixels a side, "
            f"got {w}x{h}: featurize with fewer --noise-spectrum bands, or 0"
        )
    r = gray - ndimage.uniform_filter(gray, size=3, mode="reflect")
    ny, nx = h // n, w // n
    tiles = r[: ny * n, : nx * n].reshape(ny, n, nx, n).transpose(0, 2, 1, 3)
    power = (np.abs(np.fft.fft2(tiles)) ** 2).mean((0, 1))
    log = np.fft.fftshift(np.log(power + EPS))
    k = n // bins
    pooled = log.reshape(bins, k, bins, k).mean((1, 3))
    return (pooled - pooled.mean()).ravel().astype(np.float32)


def noise_spectrum_of_image(arr: np.ndarray, bins: int) -> np.ndarray:
    """(H, W, 3) uint8 at its own size -> (bins * bins,) float32."""
    crop = np.asarray(central_crop(arr, align=8, side=SIDE), dtype=np.float64)
    return noise_spectrum(crop @ LUMA, bins)
