"""The reconstruction-residual probe computes the store's residual feature with the real TAEF2."""
import pytest
import torch

from featurize.vae import _read_state, build_sequential_decoder, build_sequential_encoder
from pipelines.probe_recon import N_BINS, features


@pytest.mark.weights
def test_images_taef2_made_have_smaller_residuals_than_their_sources(taef2_dir):
    enc = build_sequential_encoder(_read_state(taef2_dir / "taef2_encoder.pth"))[0]
    dec = build_sequential_decoder(_read_state(taef2_dir / "taef2_decoder.pth"))
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 16, 16, generator=g), size=64, mode="bicubic").clamp(0, 1)
    with torch.inference_mode():
        made = dec(enc(x)).clamp(0, 1)                     # what TAEF2 itself outputs for these images
    lat, r_src = features(x, enc, dec)
    _, r_made = features(made, enc, dec)
    assert lat.shape == (4, 64) and r_src.shape == (4, 3 * N_BINS + 3 + 32)
    e = slice(3 * N_BINS, 3 * N_BINS + 3)                  # log mean |x - D(E(x))| per colour channel
    assert (r_made[:, e].mean(1) < r_src[:, e].mean(1)).all()
    lc = slice(3 * N_BINS + 3, None)                       # log latent round-trip energy per channel
    assert (r_made[:, lc].mean(1) < r_src[:, lc].mean(1)).all()
