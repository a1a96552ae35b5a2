import numpy as np
import pytest

from leakstore.config import FeaturizeConfig
from leakstore.features import cooccurrence_dim
from leakstore.features.cooccurrence import cooccurrence, cooccurrence_features, cooccurrence_of_image
from tests.synthetic import CFG


def test_the_cooccurrence_counts_neighbouring_pairs_clipped():
    r = np.array([[0.0, 1.0, 5.0, -0.4]])  # pairs (0, 1), (1, 3 clipped), (3, 0) with t = 3
    h = cooccurrence(r, 3).reshape(7, 7)  # row: the left residual + 3, column: the right one + 3
    assert h.sum() == pytest.approx(1.0) and np.count_nonzero(h) == 3
    assert h[3, 4] == h[4, 6] == h[6, 3] == pytest.approx(1 / 3)


def test_an_upscaled_image_has_other_cooccurrences_than_its_source_and_level_does_not_count():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    smooth = np.kron(src[:32, :32], np.ones((2, 2, 1), np.uint8))  # nearest x2: every other difference is 0
    f, g = cooccurrence_features(src, 3), cooccurrence_features(smooth, 3)
    assert f.shape == g.shape == (2 * 49 + 11,) and f.dtype == np.float32 and np.isfinite(f).all()
    # the (0, 0) pair of first differences (index 3 * 7 + 3): rare in noise, common in a pixel-doubled image
    assert g[24] > f[24] + 2
    flat = np.full((40, 40, 3), 100, np.uint8)
    brighter = flat + 50
    np.testing.assert_allclose(cooccurrence_features(flat, 3)[:98], cooccurrence_features(brighter, 3)[:98])
    assert np.isfinite(cooccurrence_features(flat, 3)).all()  # a constant image: no division by zero


def test_colour_statistics_see_a_grey_image_as_fully_correlated_channels():
    rng = np.random.default_rng(1)
    grey = np.repeat(rng.integers(0, 256, (48, 48, 1), dtype=np.uint8), 3, axis=2)
    colour = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    n = 98  # after the two histograms: three correlations, log std, saturation mean and std, five quantiles
    assert cooccurrence_features(grey, 3)[n : n + 3] == pytest.approx([1, 1, 1], abs=1e-4)
    assert np.abs(cooccurrence_features(colour, 3)[n : n + 3]).max() < 0.2
    assert cooccurrence_features(grey, 3)[n + 4] == 0  # no saturation in a grey image


def test_large_images_are_measured_on_a_central_crop_and_tiny_ones_refused():
    rng = np.random.default_rng(2)
    big = rng.integers(0, 256, (600, 520, 3), dtype=np.uint8)
    # the central 256 x 256 with its corner on the 8-pixel grid: (600 - 256) / 2 = 172 -> 168, 132 -> 128
    np.testing.assert_array_equal(cooccurrence_of_image(big, 2), cooccurrence_features(big[168:424, 128:384], 2))
    assert cooccurrence_of_image(big, 2).shape == (2 * 25 + 11,)
    with pytest.raises(ValueError, match="--cooccurrence 0"):
        cooccurrence_of_image(big[:6], 3)


def test_the_dimension_follows_the_config_and_stores_made_before_it_hold_none():
    assert cooccurrence_dim(CFG) == 0 and cooccurrence_dim(CFG.replace(cooccurrence=3)) == 109
    assert cooccurrence_dim(CFG.replace(cooccurrence=1)) == 2 * 9 + 11  # the default: down, flat or up
    old = CFG.replace(cooccurrence=0).to_dict()
    del old["cooccurrence"]  # a store featurized before the feature existed
    assert FeaturizeConfig.from_dict(old).cooccurrence == 0
    assert FeaturizeConfig.from_dict(old).hash == CFG.hash  # its hash is the one it was written with
    assert CFG.replace(cooccurrence=3).hash != CFG.hash


def test_a_store_with_cooccurrences_trains_the_discriminant_on_them_and_scores_images(tmp_path):
    from leakstore import Attributor
    from leakstore.config import RunOptions
    from leakstore.errors import ConfigMismatchError
    from leakstore.featurize.api import featurize
    from leakstore.model.config import ModelConfig
    from leakstore.model.train import train
    from leakstore.store import FeatureStore
    from tests.conftest import write_class_images

    data = write_class_images(tmp_path / "d", {"real": 10, "gen-a": 10, "gen-b": 10}, size=(80, 72))
    kw = dict(vae="demo", resolution=32, timesteps=(0, 100), fft_size=2, residual_bins=0, period=0, spectrum_bins=0)
    cfg = ModelConfig(width=8, embed_dim=16, epochs=2, members=1, open_scorer="lda")
    for name, t in (("with", 2), ("without", 0)):
        opts = RunOptions(device="cpu", workers=0, progress=False)
        featurize(data, tmp_path / f"{name}.zarr", **kw, noise_bins=0, cooccurrence=t, device="cpu", opts=opts)
        train(tmp_path / f"{name}.zarr", tmp_path / f"run-{name}", cfg, device="cpu", progress=False)
    assert FeatureStore.open(tmp_path / "with.zarr").read("cooccurrence").shape == (30, 2 * 25 + 11)
    a = Attributor.load(tmp_path / "run-with", "cpu")
    assert "cooccurrence" in a.predictor.inputs  # the discriminant reads it; the network does not
    r = a.score(next((data / "gen-a").glob("*.png")))
    assert r["status"] == "ok" and np.isfinite(r["open_score"])
    # a model that reads the feature refuses a store without it, naming the field
    with pytest.raises(ConfigMismatchError, match="cooccurrence"):
        a.predictor.check_store(FeatureStore.open(tmp_path / "without.zarr"))
    # a model trained before it scores a store that also holds it (a later release's defaults) as its own
    old = Attributor.load(tmp_path / "run-without", "cpu").predictor
    assert "cooccurrence" not in old.inputs
    on_own, on_newer = (old.score_store(tmp_path / f"{n}.zarr", 0, 30) for n in ("without", "with"))
    np.testing.assert_allclose(on_newer["open_score"], on_own["open_score"], rtol=1e-6)
    assert list(on_newer["pred"]) == list(on_own["pred"])
