"""The feature table is the one contract: the store schema, chunk buffers, in-memory featurizing,
training batches and scoring all follow it."""

import numpy as np
import pytest
import torch

import leakstore.features as F
from leakstore import Attributor
from leakstore.config import RunOptions
from leakstore.features import FeatureBatch, features_for, minimal_config
from leakstore.featurize.api import featurize
from leakstore.model.config import ModelConfig
from leakstore.model.predict import predict
from leakstore.model.train import train
from leakstore.store import ROW_ARRAYS, FeatureStore, array_specs
from tests.conftest import write_class_images
from tests.synthetic import CFG, CFG_RESIDUAL


@pytest.mark.parametrize("cfg", [CFG, CFG_RESIDUAL, CFG_RESIDUAL.replace(period=8)])
def test_store_schema_and_empty_batches_follow_the_table(cfg):
    specs = array_specs(5, cfg)
    names = [f.name for f in features_for(cfg)]
    assert list(specs) == names + [r.name for r in ROW_ARRAYS]
    assert ("residual" in names) == bool(cfg.residual_bins) and ("periodicity" in names) == bool(cfg.period)
    empty = FeatureBatch.empty(cfg)
    for f in features_for(cfg):
        spec, shape = specs[f.name]
        assert shape == (5,) + f.shape(cfg) and spec.dims == ("image",) + f.dims
        assert empty[f.name].shape == (0,) + f.shape(cfg) and str(empty[f.name].dtype) == f"torch.{f.dtype}"


def test_minimal_config_drops_only_unread_optional_features():
    assert minimal_config(CFG_RESIDUAL, ("latents", "spectra")) == CFG.replace(precision=CFG_RESIDUAL.precision)
    assert minimal_config(CFG_RESIDUAL, ("latents", "residual")) == CFG_RESIDUAL
    assert not F.needs_decoder(minimal_config(CFG_RESIDUAL, ("latents",)))


def test_compute_runs_what_a_feature_requires():
    import torch

    from leakstore.features import Context, compute
    from leakstore.features.noising import noise_coefficients

    a, s = (torch.tensor(v, dtype=torch.float32) for v in noise_coefficients(CFG.schedule, CFG.timesteps))
    c, h, w = CFG.latent_shape
    ctx = Context(CFG, 2, torch.randn(2, c, h, w), torch.randn(2, len(CFG.timesteps), c, h, w), a, s)
    out = compute(ctx, ["spectra"])  # its input, the noised latents, is computed first
    assert list(out) == ["spectra"] and out["spectra"].shape == (2,) + F.BY_NAME["spectra"].shape(CFG)
    assert "latents" in ctx.out


def _chanmean(ctx):
    return ctx.out["latents"].mean((-2, -1))  # (n, T, C)


def test_a_feature_added_only_to_the_table_flows_through_every_stage(tmp_path, monkeypatch):
    new = F.Feature(
        "chanmean",
        ("timestep", "channel"),
        "float32",
        lambda c: (len(c.timesteps), c.vae.latent_channels),
        _chanmean,
        noise_derived=True,
        requires=("latents",),
    )
    monkeypatch.setattr(F, "FEATURES", F.FEATURES + (new,))
    monkeypatch.setitem(F.BY_NAME, "chanmean", new)
    data = write_class_images(tmp_path / "data", {"real": 10, "gen-a": 10, "gen-b": 10}, size=(48, 48))
    featurize(
        data,
        tmp_path / "s.zarr",
        vae="demo",
        resolution=48,
        timesteps=(0, 100),
        fft_size=4,
        residual_bins=0,
        period=0,
        spectrum_bins=0,
        noise_bins=0,
        opts=RunOptions(device="cpu", workers=0, progress=False),
    )
    store = FeatureStore.open(tmp_path / "s.zarr")
    feats = store.load()
    assert feats["chanmean"].shape == (30, 2, 8)  # stored with its shape
    torch.testing.assert_close(feats["chanmean"], feats["latents"].float().mean((-2, -1)), rtol=1e-2, atol=1e-2)
    cfg = ModelConfig(width=8, embed_dim=16, epochs=2, batch_size=16)
    train(tmp_path / "s.zarr", tmp_path / "run", cfg, progress=False)  # re-noised from latent0 too
    a = Attributor.load(tmp_path / "run")
    assert a.bundle.net.inputs == ("latents", "spectra", "chanmean")
    want = predict(a.bundle, feats)["proba"]
    got = a.score_many([str(p) for p in store.read("path")])  # featurized in memory
    # atol 1e-4: the store holds float16 latents, the in-memory path float32 until the same rounding; with one
    # OpenMP thread a probability differed by 2.1e-5
    np.testing.assert_allclose(got[[f"p_{c}" for c in a.classes]].to_numpy(float), want, rtol=1e-4, atol=1e-4)


def test_the_periodicity_is_stored_read_by_the_model_and_its_open_scorer(tmp_path):
    """--period: the store holds the profile of each image at its own size (not of the resized
    pixels the VAE sees), the network reads it, the periodicity open-set scorer fits on it, and
    in-memory scoring of the files gives the same."""
    from leakstore.features.periodicity import periodicity_of_image
    from leakstore.featurize.images import decode_image

    data = write_class_images(tmp_path / "data", {"real": 10, "gen-a": 10, "gen-b": 10}, size=(72, 60))
    featurize(
        data,
        tmp_path / "s.zarr",
        vae="demo",
        resolution=48,
        timesteps=(0, 100),
        fft_size=4,
        period=8,
        residual_bins=0,
        spectrum_bins=0,
        noise_bins=0,
        opts=RunOptions(device="cpu", workers=0, progress=False),
    )
    store = FeatureStore.open(tmp_path / "s.zarr")
    feats = store.load()
    paths = [str(p) for p in store.read("path")]
    want = np.stack([periodicity_of_image(decode_image(open(p, "rb").read(), p), 8) for p in paths[:3]])
    np.testing.assert_allclose(feats["periodicity"][:3].numpy(), want, rtol=1e-6)
    cfg = ModelConfig(width=8, embed_dim=16, epochs=2, batch_size=16, open_scorer="fused-period", members=1)
    train(tmp_path / "s.zarr", tmp_path / "run", cfg, progress=False)
    a = Attributor.load(tmp_path / "run")
    assert a.bundle.net.inputs == ("latents", "spectra", "periodicity")
    assert a.bundle.open.components_ == ("confidence", "periodicity")  # no residual in this store
    want = predict(a.bundle, feats)
    got = a.score_many(paths)
    np.testing.assert_allclose(got["open_score"].to_numpy(float), want["open_score"], rtol=1e-4, atol=1e-5)
    # read without the JPEG grid's phases (7 and 15 of 16): by the network and by the open-set scorer
    assert a.bundle.cfg.drop_jpeg_grid and a.bundle.net.in_periodicity_mean.shape == (14,)
    assert a.bundle.open.estimators_[1].n_features_in_ == 14

    # --keep-jpeg-grid reads every phase, and the saved model reads back as it was trained
    train(tmp_path / "s.zarr", tmp_path / "keep", cfg.replace(drop_jpeg_grid=False), progress=False)
    before = predict(Attributor.load(tmp_path / "keep").bundle, feats)["open_score"]
    keep = Attributor.load(tmp_path / "keep").bundle
    assert not keep.cfg.drop_jpeg_grid and keep.net.in_periodicity_mean.shape == (16,)
    np.testing.assert_array_equal(predict(keep, feats)["open_score"], before)


def test_an_image_too_small_for_the_period_fails_alone_with_its_reason(tmp_path):
    from PIL import Image

    data = write_class_images(tmp_path / "data", {"real": 6, "gen-a": 6}, size=(48, 48))
    Image.new("RGB", (12, 12), (10, 200, 30)).save(data / "gen-a" / "tiny.png")
    rep = featurize(
        data,
        tmp_path / "s.zarr",
        vae="demo",
        resolution=48,
        timesteps=(0,),
        fft_size=4,
        period=8,
        min_side=8,
        residual_bins=0,
        spectrum_bins=0,
        noise_bins=0,
        opts=RunOptions(device="cpu", workers=0, progress=False),
    )
    store = FeatureStore.open(tmp_path / "s.zarr")
    err = {str(p): str(e) for p, e in zip(store.read("path"), store.read("error")) if e}
    assert list(err) == [str(data / "gen-a" / "tiny.png")] and "--period" in err[str(data / "gen-a" / "tiny.png")]
    assert rep.failed_in_store == 1 and np.isfinite(store.load()["periodicity"].numpy()).all()
