"""Low-frequency FFT features of latents: a pure function of a tensor."""

from __future__ import annotations

import torch


def low_freq_spectrum(z: torch.Tensor, k: int) -> torch.Tensor:
    """log1p |FFT2| of the lowest k x k spatial frequencies, centred.

    z: (..., h, w) any float dtype -> (..., k, k) float32. The orthonormal FFT makes the
    values independent of the latent size; after fftshift the crop covers frequencies
    -k//2 .. k - k//2 - 1 on each axis, DC at index k//2.
    """
    h, w = z.shape[-2:]
    if not 1 <= k <= min(h, w):
        raise ValueError(f"fft size {k} must lie in [1, {min(h, w)}]")
    f = torch.fft.fftshift(torch.fft.fft2(z.float(), norm="ortho"), dim=(-2, -1))
    top, left = h // 2 - k // 2, w // 2 - k // 2
    return torch.log1p(f[..., top : top + k, left : left + k].abs())
