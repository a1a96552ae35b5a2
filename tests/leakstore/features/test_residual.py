"""The reconstruction residual's maths: rings, Parseval, and what each feature block measures."""

import math

import pytest
import torch

from leakstore.features.residual import radial_power, residual_features, ring_index


def test_rings_run_from_dc_to_nyquist_and_corners_join_the_last():
    r = ring_index(16, 4).view(16, 16)
    assert r[0, 0] == 0 and r[0, 8] == 3 and r[8, 8] == 3  # Nyquist on an axis, and the corner
    assert r[0, 2] == 1  # 2/16 = 0.125 cycles/pixel -> ring 1 of 4
    assert set(r.unique().tolist()) == {0, 1, 2, 3}


def test_radial_power_keeps_parseval_and_puts_a_sinusoid_in_its_ring():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    p = radial_power(x, 8)
    counts = torch.bincount(ring_index(32, 8), minlength=8).float()
    total = (p * counts).sum(-1)  # sum |FFT|^2 / S^2 = sum x^2 (Parseval)
    torch.testing.assert_close(total, x.pow(2).sum((2, 3)), rtol=1e-4, atol=1e-3)
    xx = torch.arange(32.0)[None, :].expand(32, 32)
    for cycles, ring in ((2, 1), (10, 5)):  # radius cycles/32 of Nyquist 0.5 -> 8 rings
        s = torch.sin(2 * math.pi * cycles * xx / 32)[None, None]
        assert radial_power(s, 8)[0, 0].argmax() == ring
    with pytest.raises(ValueError, match="square"):
        radial_power(torch.zeros(1, 1, 8, 6), 4)


def test_each_block_measures_what_it_says():
    bins, c = 6, 4
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    z = torch.randn(3, c, 2, 2)
    offset = torch.tensor([0.1, 0.2, 0.3])[None, :, None, None]

    def decode(_z):  # a "decoder" that returns the image shifted by a constant per colour
        return x - offset

    def encode(px):  # a latent round trip off by 0.5 everywhere
        return z + 0.5

    f = residual_features(x, z, decode, encode, bins)
    assert f.shape == (3, 3 * bins + 3 + c) and f.dtype == torch.float32
    spec = f[:, : 3 * bins].view(3, 3, bins).exp()
    n0 = int((ring_index(16, bins) == 0).sum())  # DC and its nearest neighbours share ring 0
    dc = offset.view(1, 3) ** 2 * 16 * 16  # |FFT(c)|^2 at DC / S^2 = c^2 S^2
    torch.testing.assert_close(spec[..., 0], (dc / n0).expand(3, 3), rtol=1e-4, atol=1e-6)
    assert (spec[..., 1:] < 1e-6).all()  # a constant residual has only DC power
    torch.testing.assert_close(
        f[:, 3 * bins : 3 * bins + 3].exp(), offset.view(1, 3).expand(3, 3), rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(f[:, 3 * bins + 3 :].exp(), torch.full((3, c), 0.25), rtol=1e-4, atol=1e-6)
