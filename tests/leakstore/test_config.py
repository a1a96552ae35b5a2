import pytest

from leakstore.config import FeaturizeConfig, ScheduleConfig, VAEIdentity, check_compatible
from leakstore.errors import ConfigMismatchError, InputError

VAE = VAEIdentity(name="x", source="builtin", kind="kl", latent_channels=4, downsample=8)


def test_roundtrip_and_hash_stable():
    cfg = FeaturizeConfig(vae=VAE, timesteps=[0, 10], schedule=ScheduleConfig("linear"))
    again = FeaturizeConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.hash == cfg.hash and len(cfg.hash) == 16


def test_precision_is_recorded_but_not_hashed():
    a = FeaturizeConfig(vae=VAE, precision="fp32")
    assert a.hash == a.replace(precision="bf16").hash
    assert a.hash != a.replace(timesteps=(0, 1)).hash


def test_mismatch_names_the_fields():
    a = FeaturizeConfig(vae=VAE)
    b = a.replace(timesteps=(0, 100), fft_size=4)
    with pytest.raises(ConfigMismatchError, match="timesteps.*fft_size|fft_size.*timesteps"):
        check_compatible(a, b, "store s")
    check_compatible(a, a.replace(precision="bf16"), "store s")


@pytest.mark.parametrize("kw", [dict(timesteps=()), dict(timesteps=(0, 1000)), dict(resolution=100),
                                dict(fft_size=64), dict(resize_policy="stretch")])
def test_invalid_configs_are_refused(kw):
    with pytest.raises(InputError):
        FeaturizeConfig(vae=VAE, **kw)


def test_unknown_fields_from_a_newer_version_are_refused():
    d = FeaturizeConfig(vae=VAE).to_dict()
    d["new_thing"] = 1
    with pytest.raises(ConfigMismatchError, match="newer leakstore"):
        FeaturizeConfig.from_dict(d)
