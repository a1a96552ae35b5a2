import numpy as np
import pytest

from leakstore.features.noise_spectrum import noise_spectrum, noise_spectrum_of_image


def upsampled(rng, factor=2, size=128):
    small = rng.uniform(0, 255, (size // factor, size // factor))
    return np.kron(small, np.ones((factor, factor)))  # nearest-neighbour: a period-2 grid


def test_the_noise_spectrum_is_a_shape_of_the_residual_that_shows_an_upsampling_grid():
    rng = np.random.default_rng(0)
    plain = rng.normal(128, 30, (128, 128))
    f = noise_spectrum(plain, 8)
    assert f.shape == (64,) and f.dtype == np.float32 and abs(f.mean()) < 1e-5
    np.testing.assert_allclose(noise_spectrum(3 * plain + 7, 8), f, atol=1e-4)  # contrast and level cancel
    g = noise_spectrum(upsampled(rng), 8).reshape(8, 8)
    # a 2x nearest-neighbour upscale empties the residual's highest frequencies (the band around 1/2
    # cycle per pixel, at the corners of the centred map) compared with white noise
    assert g[0, 0] < f.reshape(8, 8)[0, 0] - 1


def test_the_noise_spectrum_of_an_image_reads_its_luma_and_small_images_on_smaller_tiles():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (100, 90, 3), dtype=np.uint8)
    assert noise_spectrum_of_image(a, 16).shape == (256,)
    assert noise_spectrum_of_image(a[:40], 16).shape == (256,)  # 32-pixel tiles
    with pytest.raises(ValueError, match="--noise-spectrum"):
        noise_spectrum_of_image(a[:12], 16)


def test_a_store_with_the_noise_spectrum_trains_and_scores_images(tmp_path):
    from leakstore import Attributor
    from leakstore.config import RunOptions
    from leakstore.featurize.api import featurize
    from leakstore.model.config import ModelConfig
    from leakstore.model.train import train
    from leakstore.store import FeatureStore
    from tests.conftest import write_class_images

    data = write_class_images(tmp_path / "d", {"real": 10, "gen-a": 10, "gen-b": 10}, size=(80, 72))
    featurize(
        data,
        tmp_path / "s.zarr",
        vae="demo",
        resolution=32,
        timesteps=(0, 100),
        fft_size=2,
        residual_bins=0,
        period=0,
        spectrum_bins=0,
        noise_bins=8,
        device="cpu",
        opts=RunOptions(device="cpu", workers=0, progress=False),
    )
    s = FeatureStore.open(tmp_path / "s.zarr")
    assert s.read("noise_spectrum").shape == (30, 64)
    train(
        tmp_path / "s.zarr",
        tmp_path / "run",
        ModelConfig(width=8, embed_dim=16, epochs=2, members=1, open_scorer="lda"),
        device="cpu",
        progress=False,
    )
    a = Attributor.load(tmp_path / "run", "cpu")
    assert "noise_spectrum" in a.predictor.inputs
    r = a.score(next((data / "gen-a").glob("*.png")))
    assert r["status"] == "ok" and np.isfinite(r["open_score"])
