"""The reconstruction residual: how far an image lies from its autoencoder's own outputs.

An image a latent-diffusion model decoded is (up to uint8 rounding) a fixed point of its VAE's
decoder, so x - D(E(x)) is small and white for it and larger and structured for a photograph
or another generator's image; the latent round trip E(D(E(x))) - E(x) says the same in the
latent space. Signal-leak statistics of E(x) alone cannot tell a real photograph from its
VAE round trip well (docs/results); these features can.

One vector per image, F = 3 * bins + 3 + C values (`leakstore.features.residual_dim`), in this order:
    [0, 3 bins)             log mean |FFT(x - x_hat)|^2 / (H W) over `bins` rings from DC to
                            Nyquist, per colour channel (R rings, then G, then B)
    [3 bins, 3 bins + 3)    log mean |x - x_hat| per colour channel
    [3 bins + 3, F)         log mean (E(x_hat) - E(x))^2 per latent channel
with x, x_hat = D(E(x)) in [0, 1] and latents as the store scales them. Pure functions of tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def ring_index(size: int, bins: int, device=None) -> torch.Tensor:
    """(size * size,) int64: the ring of each FFT frequency of a size x size image, radius scaled
    so that Nyquist (0.5 cycles/pixel) is the outer edge; the corners beyond it join the last ring."""
    f = torch.fft.fftfreq(size, device=device)
    r = torch.hypot(f[:, None], f[None, :]) / 0.5 * bins
    return r.long().clamp_max(bins - 1).flatten()


def radial_power(x: torch.Tensor, bins: int) -> torch.Tensor:
    """(B, K, S, S) float -> (B, K, bins) float32: mean |FFT|^2 / S^2 per ring."""
    b, k, s, s2 = x.shape
    if s != s2:
        raise ValueError(f"radial_power needs square images, got {s}x{s2}")
    p = torch.fft.fft2(x.float()).abs().pow(2).flatten(2) / (s * s)
    ring = ring_index(s, bins, x.device)
    count = torch.bincount(ring, minlength=bins).to(p.dtype)
    sums = torch.zeros(b, k, bins, dtype=p.dtype, device=x.device).scatter_add_(2, ring.expand(b, k, -1), p)
    return sums / count


def residual_features(
    x: torch.Tensor,
    z: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor],
    encode: Callable[[torch.Tensor], torch.Tensor],
    bins: int,
) -> torch.Tensor:
    """x (B, 3, S, S) float in [0, 1]; z = E(x) (B, C, h, w) float32; decode: latents -> pixels in
    [0, 1]; encode: pixels in [0, 1] -> latents. -> (B, 3 bins + 3 + C) float32 (see module doc)."""
    x = x.float()
    x_hat = decode(z).float()
    r = x - x_hat
    z_hat = encode(x_hat).float()
    parts = [
        torch.log(radial_power(r, bins) + 1e-12).flatten(1),
        torch.log(r.abs().mean((2, 3)) + 1e-9),
        torch.log((z_hat - z.float()).pow(2).mean((2, 3)) + 1e-12),
    ]
    return torch.cat(parts, 1)
