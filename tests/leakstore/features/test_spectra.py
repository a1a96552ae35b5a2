import pytest
import torch

from leakstore.features.spectra import low_freq_spectrum


def test_constant_latent_has_only_dc():
    z = torch.full((2, 3, 8, 8), 2.0)
    s = low_freq_spectrum(z, 4)
    assert s.shape == (2, 3, 4, 4) and s.dtype == torch.float32
    dc = s[..., 2, 2]  # DC sits at k//2 after fftshift
    torch.testing.assert_close(dc, torch.full_like(dc, torch.log1p(torch.tensor(2.0 * 8)).item()))
    s[..., 2, 2] = 0
    assert s.abs().max() < 1e-5


def test_lowest_frequency_wave_lands_next_to_dc():
    y = torch.arange(16.0)
    z = torch.cos(2 * torch.pi * y / 16).view(16, 1).expand(16, 16).contiguous()
    s = low_freq_spectrum(z, 4)
    assert s[1, 2] > 1 and s[3, 2] > 1  # frequencies -1 and +1 along y
    assert s[2, 2] < 1e-5 and s[2, 1] < 1e-5  # no DC, nothing along x


def test_magnitude_is_shift_invariant():
    z = torch.randn(4, 16, 16)
    torch.testing.assert_close(low_freq_spectrum(z, 8), low_freq_spectrum(torch.roll(z, (3, 5), (-2, -1)), 8))


def test_bad_size():
    with pytest.raises(ValueError):
        low_freq_spectrum(torch.zeros(1, 4, 4), 5)
