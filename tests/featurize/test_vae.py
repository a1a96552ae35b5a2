import time

import pytest
import torch
from safetensors.torch import save_file

from leakstore.errors import WeightsNotFoundError
from leakstore.featurize.vae import PRESETS, _read_state, build_sequential_decoder, load_encoder


@pytest.mark.weights
def test_taef2_is_a_real_32_channel_encoder(taef2_dir, monkeypatch):
    monkeypatch.setenv("LEAKSTORE_WEIGHTS", str(taef2_dir))
    enc = load_encoder("taef2")
    ident = enc.identity
    assert (ident.latent_channels, ident.downsample, ident.input_range) == (32, 8, "0..1")
    assert ident.revision.startswith("sha256:10a4e102") and not ident.builtin
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        z = enc(x)
        assert z.shape == (2, 32, 8, 8) and torch.equal(z, enc(x))
        # a pretrained encoder maps a flat grey image to a flat latent: little spatial variance
        flat = enc(torch.full((1, 3, 64, 64), 128, dtype=torch.uint8))
    assert flat[..., 2:-2, 2:-2].std(dim=(-2, -1)).mean() < z.std(dim=(-2, -1)).mean()


@pytest.mark.weights
def test_taef2_by_path_and_decoder_refused(taef2_dir):
    assert load_encoder(str(taef2_dir / "taef2_encoder.pth")).identity.name == "taef2"
    with pytest.raises(WeightsNotFoundError, match="decoder"):
        load_encoder(str(taef2_dir / "taef2_decoder.pth"))


def test_taef2_preset_without_weights_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("LEAKSTORE_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="LEAKSTORE_WEIGHTS"):
        load_encoder("taef2")


def test_local_diffusers_folder(tiny_vae_dir):
    from diffusers import AutoencoderKL

    enc = load_encoder(str(tiny_vae_dir))
    assert enc.identity.latent_channels == 4 and enc.identity.downsample == 2
    assert enc.identity.revision.startswith("sha256:")
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir)
    with torch.inference_mode():
        ref = vae.encode(x.float() / 127.5 - 1).latent_dist.mean * vae.config.scaling_factor
        torch.testing.assert_close(enc(x), ref, rtol=1e-4, atol=1e-4)


def test_single_safetensors_file_matches_folder(tiny_vae_dir, tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_vae_dir)
    f = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, f)
    a, b = load_encoder(str(tiny_vae_dir)), load_encoder(str(f), scaling_factor=vae.config.scaling_factor)
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(a(x), b(x))


def test_pickled_objects_are_never_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("import os; os.environ['LEAKSTORE_PWNED'] = '1'",))

    p = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, p)
    with pytest.raises(WeightsNotFoundError, match="state dict"):
        load_encoder(str(p))
    import os

    assert "LEAKSTORE_PWNED" not in os.environ


def test_offline_hub_id_fails_with_the_options():
    with pytest.raises(WeightsNotFoundError, match="preset .*sd21.*local diffusers folder"):
        load_encoder("sd21")


def test_an_unreachable_hub_is_said_at_once_in_one_line(monkeypatch):
    """No HF_HUB_OFFLINE, but no network: one line naming the cause and the options, no retries."""
    import huggingface_hub.constants as hc

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as e:
        load_encoder("someone/not-cached-vae")
    assert time.perf_counter() - t < 5
    msg = str(e.value)
    assert "not in the local Hugging Face cache" in msg and "127.0.0.1 cannot be reached" in msg
    assert "huggingface-cli download someone/not-cached-vae" in msg and "\n" not in msg


def test_missing_file_and_presets_are_data():
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_encoder("/nonexistent/vae.safetensors")
    assert PRESETS["sd21"].scaling_factor == 0.18215 and PRESETS["sdxl"].scaling_factor == 0.13025
    assert PRESETS["sd3"].latent_channels == 16 and PRESETS["flux2"].latent_channels == 32


def test_builtin_demo_encoder_is_labelled():
    enc = load_encoder("demo")
    assert enc.identity.builtin and "DEMO" in enc.identity.note
    assert load_encoder("demo").identity.revision == enc.identity.revision  # seeded: same weights every time


# ---------------------------------------------------------------------------- decoders (the residual feature)
def _smooth(n=4, size=64, seed=0):
    """Smooth random images, uint8: what an autoencoder reconstructs well."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=size, mode="bicubic")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.mark.weights
def test_taef2_decoder_reconstructs_and_is_recorded(taef2_dir, monkeypatch):
    monkeypatch.setenv("LEAKSTORE_WEIGHTS", str(taef2_dir))
    enc = load_encoder("taef2", decoder=True)
    assert load_encoder("taef2").decoder is None  # only on request
    assert enc.decoder.revision.startswith("sha256:0a44a31e")  # the decoder file's own hash (weights README)
    x = _smooth()
    with torch.inference_mode():
        xr = enc.decoder(enc(x))
    assert xr.shape == (4, 3, 64, 64) and 0 <= xr.min() and xr.max() <= 1
    assert (xr - x / 255).abs().mean() < 0.06  # a wrong layout decodes to noise (~0.3)
    with pytest.raises(WeightsNotFoundError, match="encoder.pth file was probably given"):
        build_sequential_decoder(_read_state(taef2_dir / "taef2_encoder.pth"), "taef2_encoder.pth")


@pytest.mark.weights
def test_a_sequential_encoder_without_its_decoder_beside_it_says_so(taef2_dir, tmp_path):
    import shutil

    shutil.copy(taef2_dir / "taef2_encoder.pth", tmp_path / "mine_encoder.pth")
    assert load_encoder(str(tmp_path / "mine_encoder.pth")).decoder is None
    with pytest.raises(WeightsNotFoundError, match="mine_decoder.pth beside"):
        load_encoder(str(tmp_path / "mine_encoder.pth"), decoder=True)
    shutil.copy(taef2_dir / "taef2_decoder.pth", tmp_path / "mine_decoder.pth")
    assert load_encoder(str(tmp_path / "mine_encoder.pth"), decoder=True).decoder is not None


def test_diffusers_decoder_matches_vae_decode(tiny_vae_dir):
    from diffusers import AutoencoderKL

    enc = load_encoder(str(tiny_vae_dir), decoder=True, scaling_factor=0.5, shift_factor=0.1)
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    z = enc(_smooth(2, 32))  # scaled and shifted, as a store holds it
    with torch.inference_mode():
        want = ((vae.decode(z / 0.5 + 0.1).sample + 1) / 2).clamp(0, 1)
        got = enc.decoder(z)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert enc.decoder.revision == enc.identity.revision  # one set of weights


def test_encoder_for_checks_the_decoder_revision(tiny_vae_dir):
    from leakstore.featurize.vae import encoder_for

    enc = load_encoder("demo", decoder=True)
    assert encoder_for(enc.identity, enc.decoder.revision).decoder is not None
    assert encoder_for(enc.identity).decoder is None
    with pytest.raises(WeightsNotFoundError, match="restore the original decoder"):
        encoder_for(enc.identity, "sha256:" + "0" * 32)
