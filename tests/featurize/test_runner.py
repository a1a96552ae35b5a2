"""The featurize stage end to end on CPU: schema, determinism, failures, resume, shards, refusal."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

from leakstore.config import RunOptions
from leakstore.errors import ConfigMismatchError
from leakstore.features import residual_dim
from leakstore.features.noising import noise_coefficients, seeded_noise
from leakstore.featurize.api import featurize
from leakstore.store import DONE, FAILED, PENDING, SCHEMA_VERSION, FeatureStore
from tests.conftest import REPO, write_class_images

ARRAYS = ("latent0", "latents", "spectra", "label", "split", "path", "group", "sha256", "status", "error")
TS = (0, 100, 500)


def run(data, store, vae, *, chunk=4, batch=3, workers=0, **kw):
    opts = RunOptions(
        device="cpu",
        batch_size=batch,
        workers=workers,
        chunk_size=chunk,
        progress=False,
        overwrite=kw.pop("overwrite", False),
    )
    kw.setdefault("resolution", 32)
    kw.setdefault("timesteps", TS)
    kw = {"residual_bins": 0, "period": 0, "spectrum_bins": 0, **kw}  # latents and spectra unless asked
    return featurize(data, store, vae=vae, opts=opts, **kw)


def arrays(path):
    g = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(g[name][:]) for name in ARRAYS}


def assert_same(a, b):
    for name in ARRAYS:
        if a[name].dtype.kind == "f":
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # NaN == NaN here
        else:
            assert (a[name] == b[name]).all(), name


def test_schema(class_folders, tiny_vae_dir, tmp_path):
    rep = run(class_folders, tmp_path / "s.zarr", str(tiny_vae_dir), fft_size=4)
    assert (rep.done, rep.failed, rep.processed) == (29, 0, 29)
    s = FeatureStore.open(tmp_path / "s.zarr")
    g = s.group
    n, t = 29, len(TS)
    expect = {
        "latent0": ((n, 4, 16, 16), "float16"),
        "latents": ((n, t, 4, 16, 16), "float16"),
        "spectra": ((n, t, 4, 4, 4), "float16"),
        "label": ((n,), "int16"),
        "split": ((n,), "int8"),
        "status": ((n,), "uint8"),
    }
    for name, (shape, dtype) in expect.items():
        assert g[name].shape == shape and str(g[name].dtype) == dtype, name
        assert g[name].chunks == (4,) + shape[1:], name  # chunked along images only
    assert g["latents"].metadata.dimension_names == ("image", "timestep", "channel", "y", "x")
    assert s.attrs["schema_version"] == SCHEMA_VERSION and s.attrs["config_hash"] == s.config.hash
    assert s.config.timesteps == TS and s.class_names == ["gen-a", "gen-b", "real"]
    assert (s.status() == DONE).all() and np.isfinite(s.read("latents")).all()
    assert all(len(h) == 64 for h in s.read("sha256"))
    assert str(s.read("path")[0]).startswith("/")


def test_noise_is_seeded_from_the_image_hash(class_folders, tiny_vae_dir, tmp_path):
    run(class_folders, tmp_path / "s.zarr", str(tiny_vae_dir))
    s = FeatureStore.open(tmp_path / "s.zarr")
    a, sig = noise_coefficients(s.config.schedule, TS)
    z0, zt, sha = s.read("latent0", [5]).astype(np.float32), s.read("latents", [5]), s.read("sha256")[5]
    eps = seeded_noise(str(sha), 0, (len(TS), 4, 16, 16))
    expect = a[None, :, None, None, None] * z0[:, None] + sig[None, :, None, None, None] * eps[None]
    np.testing.assert_allclose(zt.astype(np.float32), expect, atol=2e-2, rtol=1e-2)


def test_two_runs_are_identical(class_folders, tiny_vae_dir, tmp_path):
    run(class_folders, tmp_path / "a.zarr", str(tiny_vae_dir), batch=3, workers=0)
    run(class_folders, tmp_path / "b.zarr", str(tiny_vae_dir), batch=3, workers=2)
    assert_same(arrays(tmp_path / "a.zarr"), arrays(tmp_path / "b.zarr"))


def test_batch_size_changes_only_rounding(class_folders, tiny_vae_dir, tmp_path):
    """CPU convolution kernels depend on the batch size, so other batch sizes agree to float16
    rounding, not bit for bit (the noise, drawn per image, is identical)."""
    run(class_folders, tmp_path / "a.zarr", str(tiny_vae_dir), batch=3)
    run(class_folders, tmp_path / "b.zarr", str(tiny_vae_dir), batch=8)
    a, b = arrays(tmp_path / "a.zarr"), arrays(tmp_path / "b.zarr")
    for name in ("latent0", "latents", "spectra"):
        np.testing.assert_allclose(a[name].astype(np.float32), b[name].astype(np.float32), atol=2e-3, rtol=2e-3)
    assert (a["sha256"] == b["sha256"]).all()


def test_bad_images_are_recorded_never_zero_filled(class_folders, tiny_vae_dir, tmp_path):
    (class_folders / "real" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    (class_folders / "gen-a" / "tiny.png").write_bytes((class_folders / "gen-a" / "000.png").read_bytes()[:30])
    from PIL import Image

    Image.new("RGB", (1, 1)).save(class_folders / "gen-b" / "one.png")
    rep = run(class_folders, tmp_path / "s.zarr", str(tiny_vae_dir))
    assert (rep.done, rep.failed) == (29, 3)
    s = FeatureStore.open(tmp_path / "s.zarr")
    st, err, lat = s.status(), s.read("error"), s.read("latents")
    bad = np.flatnonzero(st == FAILED)
    assert len(bad) == 3 and all(err[i] for i in bad)
    assert np.isnan(lat[bad]).all() and np.isfinite(lat[st == DONE]).all()
    reasons = " ".join(str(err[i]) for i in bad)
    assert "too small" in reasons and ("corrupt" in reasons or "truncated" in reasons)
    assert {f["path"].split("/")[-1] for f in rep.failures} == {"corrupt.png", "tiny.png", "one.png"}


def test_resume_equals_an_uninterrupted_run(class_folders, tiny_vae_dir, tmp_path):
    run(class_folders, tmp_path / "clean.zarr", str(tiny_vae_dir))
    shutil.copytree(tmp_path / "clean.zarr", tmp_path / "cut.zarr")
    g = zarr.open_group(str(tmp_path / "cut.zarr"), mode="r+")
    # an interruption: chunk 2 written but its status not yet; chunk 5 half written
    g["status"][8:12] = PENDING
    g["status"][20:22] = PENDING
    g["latents"][8:12] = 123.0
    g["latents"][20:24] = -7.0
    rep = run(class_folders, tmp_path / "cut.zarr", str(tiny_vae_dir))
    assert rep.processed == 8 and rep.already_done == 21
    assert_same(arrays(tmp_path / "clean.zarr"), arrays(tmp_path / "cut.zarr"))
    assert run(class_folders, tmp_path / "cut.zarr", str(tiny_vae_dir)).processed == 0


def _cli(*args):
    # the same thread count as this process: CPU kernels may round differently with another one
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }
    return [sys.executable, "-m", "leakstore.cli", *args], env


@pytest.mark.slow
def test_kill_9_then_resume_equals_clean(tmp_path, tiny_vae_dir):
    data = write_class_images(tmp_path / "data", {"real": 150, "gen": 150})
    common = [
        "--vae",
        str(tiny_vae_dir),
        "--resolution",
        "32",
        "--timesteps",
        "0,100,500",
        "--chunk-size",
        "8",
        "--batch-size",
        "1",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-progress",
    ]
    cmd, env = _cli("featurize", str(data), str(tmp_path / "k.zarr"), *common)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, killed_at = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None:
        try:
            done = (np.asarray(zarr.open_group(str(tmp_path / "k.zarr"), mode="r")["status"][:]) != PENDING).sum()
        except Exception:
            done = 0
        if done >= 16:
            proc.send_signal(signal.SIGKILL)
            killed_at = done
            break
        time.sleep(0.05)
    proc.wait()
    assert killed_at is not None and killed_at < 300, "the run finished before it could be killed"
    cmd, env = _cli("featurize", str(data), str(tmp_path / "k.zarr"), *common)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    run(data, tmp_path / "clean.zarr", str(tiny_vae_dir), chunk=8, batch=1)
    assert_same(arrays(tmp_path / "clean.zarr"), arrays(tmp_path / "k.zarr"))


@pytest.mark.slow
def test_two_shard_processes_fill_one_store(class_folders, tiny_vae_dir, tmp_path):
    common = [
        "--vae",
        str(tiny_vae_dir),
        "--resolution",
        "32",
        "--timesteps",
        "0,100,500",
        "--chunk-size",
        "4",
        "--batch-size",
        "3",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-progress",
    ]
    procs = []
    for i in range(2):
        cmd, env = _cli("featurize", str(class_folders), str(tmp_path / "sh.zarr"), *common, "--shard", f"{i}/2")
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    run(class_folders, tmp_path / "one.zarr", str(tiny_vae_dir))
    assert_same(arrays(tmp_path / "one.zarr"), arrays(tmp_path / "sh.zarr"))


def test_another_config_or_input_is_refused(class_folders, tiny_vae_dir, tmp_path):
    store = tmp_path / "s.zarr"
    run(class_folders, store, str(tiny_vae_dir))
    with pytest.raises(ConfigMismatchError, match="timesteps"):
        run(class_folders, store, str(tiny_vae_dir), timesteps=(0, 200))
    write_class_images(class_folders, {"gen-c": 2}, seed=5)
    with pytest.raises(ConfigMismatchError, match="another list of images"):
        run(class_folders, store, str(tiny_vae_dir))
    rep = run(class_folders, store, str(tiny_vae_dir), timesteps=(0, 200), overwrite=True)
    assert rep.done == 31 and FeatureStore.open(store).config.timesteps == (0, 200)


def test_views_and_sigma_normalisation_are_recorded(class_folders, tiny_vae_dir, tmp_path):
    run(class_folders, tmp_path / "a.zarr", str(tiny_vae_dir))
    run(class_folders, tmp_path / "j.zarr", str(tiny_vae_dir), view=["jpeg:50", "blur:1"], sigma_normalize=True)
    a, j = FeatureStore.open(tmp_path / "a.zarr"), FeatureStore.open(tmp_path / "j.zarr")
    assert j.config.view == "jpeg:50+blur:1" and j.config.sigma_normalize and a.config.hash != j.config.hash
    assert not np.allclose(a.read("latent0").astype(float), j.read("latent0").astype(float), atol=1e-3)
    assert (a.read("sha256") == j.read("sha256")).all()  # same files, same noise: paired views


@pytest.mark.slow
@pytest.mark.weights
def test_taef2_store(class_folders, taef2_dir, tmp_path):
    rep = run(class_folders, tmp_path / "t.zarr", str(taef2_dir / "taef2_encoder.pth"), resolution=64, fft_size=8)
    s = FeatureStore.open(tmp_path / "t.zarr")
    assert rep.done == 29 and s.group["latents"].shape == (29, 3, 32, 8, 8)
    assert s.config.vae.name == "taef2" and not s.attrs["builtin_encoder"]


def test_builtin_demo_encoder_is_labelled_in_the_store(class_folders, tmp_path):
    run(class_folders, tmp_path / "d.zarr", "demo", resolution=64)
    s = FeatureStore.open(tmp_path / "d.zarr")
    assert s.attrs["builtin_encoder"] is True and s.config.vae.builtin and "DEMO" in s.config.vae.note


def test_residual_store_schema_failures_resume_and_in_memory(class_folders, tiny_vae_dir, tmp_path):
    """--residual adds one (N, F) float32 array: finite for done rows, NaN for failed ones, resumed
    bit-identically, and equal to what scoring computes in memory for the same files."""
    (class_folders / "real" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    rep = run(class_folders, tmp_path / "r.zarr", str(tiny_vae_dir), residual_bins=5)
    s = FeatureStore.open(tmp_path / "r.zarr")
    f = 3 * 5 + 3 + 4
    assert (rep.done, rep.failed) == (29, 1) and residual_dim(s.config) == f
    assert s.group["residual"].shape == (30, f) and str(s.group["residual"].dtype) == "float32"
    assert s.group["residual"].metadata.dimension_names == ("image", "residual_feature")
    st, res = s.status(), s.read("residual")
    assert np.isfinite(res[st == DONE]).all() and np.isnan(res[st == FAILED]).all()
    assert s.config.decoder == s.config.vae.revision  # a diffusers VAE: one set of weights
    plain = run(class_folders, tmp_path / "p.zarr", str(tiny_vae_dir))
    assert plain.done == 29 and "residual" not in FeatureStore.open(tmp_path / "p.zarr").group
    np.testing.assert_array_equal(FeatureStore.open(tmp_path / "p.zarr").read("latents"), s.read("latents"))

    shutil.copytree(tmp_path / "r.zarr", tmp_path / "cut.zarr")
    g = zarr.open_group(str(tmp_path / "cut.zarr"), mode="r+")
    g["status"][4:8] = PENDING
    g["residual"][4:8] = 5.0
    assert run(class_folders, tmp_path / "cut.zarr", str(tiny_vae_dir), residual_bins=5).processed == 4
    np.testing.assert_array_equal(FeatureStore.open(tmp_path / "cut.zarr").read("residual"), res)

    from leakstore.featurize.inmemory import featurize_paths
    from leakstore.featurize.vae import encoder_for_config

    ok = np.flatnonzero(st == DONE)[:6]
    paths = [str(p) for p in s.read("path", ok)]
    feats, _, errors = featurize_paths(paths, s.config, encoder_for_config(s.config), batch_size=3)
    assert not errors
    np.testing.assert_allclose(feats["residual"].numpy(), res[ok], rtol=1e-5, atol=1e-5)


def test_a_residual_store_and_a_plain_one_are_different_features(class_folders, tiny_vae_dir, tmp_path):
    run(class_folders, tmp_path / "s.zarr", str(tiny_vae_dir))
    with pytest.raises(ConfigMismatchError, match="residual_bins"):
        run(class_folders, tmp_path / "s.zarr", str(tiny_vae_dir), residual_bins=4)


@pytest.mark.gpu
def test_on_cuda_in_bf16_the_residual_is_still_float32(class_folders, tiny_vae_dir, tmp_path):
    """Latents may be bf16 on a GPU; the residual's encode-decode-encode runs on a float32 copy,
    so it matches the CPU's float32 residual far more closely than bf16 rounding would allow."""
    run(class_folders, tmp_path / "c.zarr", str(tiny_vae_dir), residual_bins=5)
    opts = RunOptions(device="cuda", batch_size=3, workers=0, chunk_size=4, progress=False, compile=False)
    featurize(
        class_folders,
        tmp_path / "g.zarr",
        vae=str(tiny_vae_dir),
        opts=opts,
        resolution=32,
        timesteps=TS,
        residual_bins=5,
        period=0,
        spectrum_bins=0,
        noise_bins=0,
        precision="bf16",
        device="cuda",
    )
    a, b = FeatureStore.open(tmp_path / "c.zarr"), FeatureStore.open(tmp_path / "g.zarr")
    assert b.config.precision == "bf16" and a.config.hash == b.config.hash
    np.testing.assert_allclose(b.read("residual"), a.read("residual"), atol=2e-3, rtol=1e-3)


def test_the_same_weights_in_another_folder_make_a_store_the_first_model_scores(class_folders, tiny_vae_dir, tmp_path):
    """A store's identity is its weights' content: a model trained on a store made with the weights
    in one folder scores a store made with a copy of them elsewhere (the path stays as provenance)."""
    from leakstore.api.predictor import Predictor
    from leakstore.model.config import ModelConfig
    from leakstore.model.train import train

    moved = tmp_path / "cluster" / "weights" / "copy-of-vae"
    shutil.copytree(tiny_vae_dir, moved)
    run(class_folders, tmp_path / "a.zarr", str(tiny_vae_dir))
    run(class_folders, tmp_path / "b.zarr", str(moved))
    a, b = FeatureStore.open(tmp_path / "a.zarr"), FeatureStore.open(tmp_path / "b.zarr")
    assert a.config.vae.source != b.config.vae.source and a.config.hash == b.config.hash
    cfg = ModelConfig(width=8, embed_dim=16, epochs=1, batch_size=16, members=1, open_scorer="kde")
    train(tmp_path / "a.zarr", tmp_path / "run", cfg, progress=False)
    p = Predictor.load(tmp_path / "run", "cpu")
    pa, pb = p.score_store(tmp_path / "a.zarr", 0, a.n), p.score_store(tmp_path / "b.zarr", 0, b.n)
    assert (pb.status == "ok").all() and len(pb) == a.n
    np.testing.assert_allclose(pb["open_score"].to_numpy(float), pa["open_score"].to_numpy(float), rtol=1e-4, atol=1e-5)
