"""The pixel spectrum: a photograph-like image falls off smoothly, an upscale empties its upper
band, bilinear and bicubic kernels leave different shapes, and the store and open-set scorer use it."""

import numpy as np
import pytest
import torch

from leakstore.features.periodicity import MAX_SIDE
from leakstore.features.pixel_spectrum import pixel_spectrum, pixel_spectrum_of_image


def _photo_like(size=128, seed=0):
    """1/f-like field plus fine noise, grey, in [0, 1]."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size)
    r = np.hypot(f[:, None], f[None, :])
    r[0, 0] = 1
    field = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) / r))
    field = (field - field.min()) / np.ptp(field)
    return np.clip(0.9 * field + 0.1 * rng.random((size, size)), 0, 1)


def _resample(x: np.ndarray, mode: str) -> np.ndarray:
    """The bench's resamplers: 2x area down, 2x up with `mode`."""
    t = torch.from_numpy(x)[None, None]
    small = torch.nn.functional.interpolate(t, scale_factor=0.5, mode="area")
    kw = {} if mode == "nearest" else {"align_corners": False}
    return torch.nn.functional.interpolate(small, scale_factor=2, mode=mode, **kw)[0, 0].clamp(0, 1).numpy()


def test_an_upscale_empties_the_upper_band_and_the_shape_ignores_contrast():
    x = _photo_like()
    p = pixel_spectrum(x, 16)
    assert p.shape == (32,) and p.dtype == np.float32 and abs(p[:16].mean()) < 1e-5
    up = pixel_spectrum(_resample(x, "bilinear"), 16)
    # the top quarter of the band (above 3/8 cycles per pixel) loses energy against the lowest bands
    assert (up[12:16].mean() - up[:4].mean()) < (p[12:16].mean() - p[:4].mean()) - 2
    np.testing.assert_allclose(pixel_spectrum(0.5 * x + 0.2, 16), p, atol=1e-4)  # a shape, not a level


def test_bilinear_and_bicubic_upscales_differ():
    """The kernels' shapes differ where the periodicity profile sees little: the open-set cue."""
    d = [
        pixel_spectrum(_resample(_photo_like(seed=s), "bicubic"), 16)
        - pixel_spectrum(_resample(_photo_like(seed=s), "bilinear"), 16)
        for s in range(4)
    ]
    d = np.stack(d)
    assert (np.abs(d.mean(0)) > 5 * d.std(0) + 0.2).any()


def test_small_and_large_images():
    with pytest.raises(ValueError, match="--pixel-spectrum"):
        pixel_spectrum(np.zeros((20, 40)), 16)
    big = (np.random.default_rng(0).random((MAX_SIDE + 100, MAX_SIDE + 40, 3)) * 255).astype(np.uint8)
    f = pixel_spectrum_of_image(big, 8)
    assert f.shape == (16,) and np.isfinite(f).all()
    flat = pixel_spectrum_of_image(np.full((64, 64, 3), 128, np.uint8), 8)
    assert np.isfinite(flat).all()  # a flat image gives a flat profile, not NaN


def test_the_pixel_spectrum_is_stored_and_read_by_its_open_scorer_only(tmp_path):
    from leakstore import Attributor
    from leakstore.config import RunOptions
    from leakstore.featurize.api import featurize
    from leakstore.featurize.images import decode_image
    from leakstore.model.config import ModelConfig
    from leakstore.model.train import train
    from leakstore.store import FeatureStore
    from tests.conftest import write_class_images

    data = write_class_images(tmp_path / "data", {"real": 10, "gen-a": 10, "gen-b": 10}, size=(72, 60))
    featurize(
        data,
        tmp_path / "s.zarr",
        vae="demo",
        resolution=48,
        timesteps=(0, 100),
        fft_size=4,
        period=8,
        spectrum_bins=8,
        residual_bins=0,
        opts=RunOptions(device="cpu", workers=0, progress=False),
    )
    store = FeatureStore.open(tmp_path / "s.zarr")
    feats = store.load()
    paths = [str(p) for p in store.read("path")]
    want = np.stack([pixel_spectrum_of_image(decode_image(open(p, "rb").read(), p), 8) for p in paths[:3]])
    np.testing.assert_allclose(feats["pixel_spectrum"][:3].numpy(), want, rtol=1e-5, atol=1e-6)
    train(
        tmp_path / "s.zarr",
        tmp_path / "run",
        ModelConfig(width=8, embed_dim=16, epochs=1, batch_size=16, open_scorer="fused-pixel"),
        progress=False,
    )
    a = Attributor.load(tmp_path / "run")
    assert "pixel_spectrum" not in a.bundle.net.inputs  # the network does not read it
    assert a.bundle.open.components_ == ("confidence", "periodicity", "spectrum")
    assert "pixel_spectrum" in a.bundle.feature_names
    got = a.score_many(paths)
    from leakstore.model.predict import predict

    np.testing.assert_allclose(
        got["open_score"].to_numpy(float),
        predict(a.bundle, store.load(a.bundle.feature_names))["open_score"],
        rtol=1e-4,
        atol=1e-5,
    )
