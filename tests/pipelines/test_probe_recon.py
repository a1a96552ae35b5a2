"""The reconstruction-residual probe: its TAEF2 decoder is the real one, its spectrum is right."""
import numpy as np
import pytest
import torch

from featurize.vae import _read_state, build_sequential_encoder
from pipelines.probe_recon import build_sequential_decoder, features, radial_power


def test_radial_power_puts_a_sinusoid_in_its_ring():
    h = 48
    yy, xx = np.mgrid[:h, :h]
    for cycles, ring in ((2, 1), (20, 10)):  # radius cycles/h of Nyquist 0.5 -> ring cycles/h / 0.5 * 12
        x = np.sin(2 * np.pi * cycles * xx / h)[None]
        p = radial_power(x)[0]
        assert p.argmax() == ring, (cycles, p.round(2))


@pytest.mark.weights
def test_taef2_round_trip_is_close_and_its_own_outputs_have_smaller_residuals(taef2_dir):
    enc = build_sequential_encoder(_read_state(taef2_dir / "taef2_encoder.pth"))[0]
    dec = build_sequential_decoder(_read_state(taef2_dir / "taef2_decoder.pth"))
    g = torch.Generator().manual_seed(0)
    # smooth random images: what an autoencoder reconstructs well
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=g), size=64, mode="bicubic").clamp(0, 1)
    with torch.inference_mode():
        xr = dec(enc(x)).clamp(0, 1)
    assert xr.shape == x.shape
    assert (xr - x).abs().mean() < 0.06                   # a wrong layout decodes to noise (~0.3)
    _, r_real = features(x, enc, dec)
    _, r_made = features(xr, enc, dec)
    e = slice(3 * 12, 3 * 12 + 3)                         # mean |x - D(E(x))| per colour channel (log)
    assert (r_made[:, e].mean(1) < r_real[:, e].mean(1)).all()
