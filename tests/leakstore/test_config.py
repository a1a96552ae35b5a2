import pytest

from leakstore.config import FeaturizeConfig, ScheduleConfig, VAEIdentity, check_compatible
from leakstore.errors import ConfigMismatchError, InputError
from leakstore.features import residual_dim

VAE = VAEIdentity(name="x", source="builtin", kind="kl", latent_channels=4, downsample=8)
OFF = dict(residual_bins=0, period=0, spectrum_bins=0, noise_bins=0, cooccurrence=0)  # latents and spectra only


def plain(**kw) -> FeaturizeConfig:
    return FeaturizeConfig(**{"vae": VAE, **OFF, **kw})


def test_the_default_config_holds_every_pixel_feature_and_needs_the_decoder():
    with pytest.raises(InputError, match="decoder"):
        FeaturizeConfig(vae=VAE)
    d = FeaturizeConfig(vae=VAE, decoder="sha256:aa")
    assert d.residual_bins > 0 and d.period > 0 and d.spectrum_bins > 0


def test_roundtrip_and_hash_stable():
    cfg = plain(timesteps=[0, 10], schedule=ScheduleConfig("linear"))
    again = FeaturizeConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.hash == cfg.hash and len(cfg.hash) == 16


def test_precision_is_recorded_but_not_hashed():
    a = plain(precision="fp32")
    assert a.hash == a.replace(precision="bf16").hash
    assert a.hash != a.replace(timesteps=(0, 1)).hash


def test_mismatch_names_the_fields():
    a = plain()
    b = a.replace(timesteps=(0, 100), fft_size=4)
    with pytest.raises(ConfigMismatchError, match="timesteps.*fft_size|fft_size.*timesteps"):
        check_compatible(a, b, "store s")
    check_compatible(a, a.replace(precision="bf16"), "store s")


@pytest.mark.parametrize(
    "kw",
    [
        dict(timesteps=()),
        dict(timesteps=(0, 1000)),
        dict(resolution=100),
        dict(fft_size=64),
        dict(resize_policy="stretch"),
        dict(residual_bins=-1),
        dict(residual_bins=12),  # a residual without its decoder's revision
        dict(period=-1),
        dict(period=65),
    ],
)
def test_invalid_configs_are_refused(kw):
    with pytest.raises(InputError):
        plain(**kw)


def test_unknown_fields_from_a_newer_version_are_refused():
    d = plain().to_dict()
    d["new_thing"] = 1
    with pytest.raises(ConfigMismatchError, match="newer leakstore"):
        FeaturizeConfig.from_dict(d)


def test_a_stores_identity_is_its_weights_content_not_where_they_lie():
    """The same weights (one SHA-256) under another folder and file name: the same features, the same
    hash; other weights: another hash. Without a content revision the source names the encoder."""
    import dataclasses

    cfg = plain(vae=dataclasses.replace(VAE, source="/a/taef2_encoder.pth", name="taef2", revision="sha256:ab"))
    moved = cfg.replace(vae=dataclasses.replace(cfg.vae, source="/cluster/w/copy.pth", name="copy.pth", note="moved"))
    assert moved.hash == cfg.hash
    check_compatible(cfg, moved, "store s")
    assert cfg.replace(vae=dataclasses.replace(cfg.vae, revision="sha256:cd")).hash != cfg.hash
    bare = cfg.replace(vae=dataclasses.replace(cfg.vae, revision="unknown"))
    assert bare.replace(vae=dataclasses.replace(bare.vae, source="/b/x.pth")).hash != bare.hash
    assert FeaturizeConfig.from_dict(moved.to_dict()).vae.source == "/cluster/w/copy.pth"  # kept as provenance


def test_a_config_written_without_a_field_is_refused_not_filled_with_todays_default():
    d = plain().to_dict()
    del d["noise_bins"]
    with pytest.raises(ConfigMismatchError, match="lacks the fields.*noise_bins"):
        FeaturizeConfig.from_dict(d)


def test_the_period_is_part_of_the_features_only_when_on():
    a = plain()
    p = a.replace(period=8)
    assert "period" not in a.identity() and p.identity()["period"] == 8
    assert len({a.hash, p.hash, p.replace(period=4).hash}) == 3
    with pytest.raises(ConfigMismatchError, match="period"):
        check_compatible(p, a, "store s")


def test_the_pixel_spectrum_is_part_of_the_features_only_when_on():
    a = plain(period=8)
    s = a.replace(spectrum_bins=16)
    assert "spectrum_bins" not in a.identity() and s.identity()["spectrum_bins"] == 16
    assert len({a.hash, s.hash, s.replace(spectrum_bins=8).hash}) == 3
    with pytest.raises(ConfigMismatchError, match="spectrum_bins"):
        check_compatible(s, a, "store s")
    with pytest.raises(InputError, match="spectrum_bins = 65"):
        a.replace(spectrum_bins=65)


def test_the_residual_and_its_decoder_are_part_of_the_features():
    a = plain()
    r = a.replace(residual_bins=12, decoder="sha256:aa")
    assert residual_dim(r) == 3 * 12 + 3 + 4 and residual_dim(a) == 0
    assert len({a.hash, r.hash, r.replace(decoder="sha256:bb").hash, r.replace(residual_bins=8).hash}) == 4
    with pytest.raises(ConfigMismatchError, match="decoder"):
        check_compatible(r, r.replace(decoder="sha256:bb"), "store s")


@pytest.mark.parametrize("where", ["top", "vae", "schedule", "model"])
def test_every_config_loader_refuses_unknown_fields_alike(where):
    from leakstore.model.config import ModelConfig

    d = plain().to_dict()
    if where == "model":
        load, d = ModelConfig.from_dict, {**ModelConfig().to_dict(), "future_knob": 1}
    else:
        load = FeaturizeConfig.from_dict
        (d if where == "top" else d[where])["future_knob"] = 1
    with pytest.raises(ConfigMismatchError, match=r"unknown fields \['future_knob'\].*upgrade leakstore"):
        load(d)


def test_mismatch_message_labels_both_sides_shows_whole_values_and_fits_the_caller():
    a = plain(timesteps=tuple(range(0, 900, 100)))
    b = a.replace(timesteps=(0, 100))
    with pytest.raises(ConfigMismatchError) as e:
        check_compatible(a, b, "store s")
    msg = str(e.value)
    assert "timesteps: [0, 100] here, [0, 100, 200, 300, 400, 500, 600, 700, 800] expected" in msg
    assert "--overwrite" not in msg and "...." not in msg and "\n" not in msg
    from leakstore.config import STORE_ADVICE

    with pytest.raises(ConfigMismatchError, match="--overwrite"):
        check_compatible(a, b, "store s", advice=STORE_ADVICE)
