"""Synthetic feature stores with planted signal leaks, written through the real store API
(for tests and benchmarks: no images or VAE needed)."""

from __future__ import annotations

import numpy as np
import torch

from leakstore.config import FeaturizeConfig, VAEIdentity
from leakstore.features import residual_dim
from leakstore.features.noising import add_noise, noise_coefficients
from leakstore.features.spectra import low_freq_spectrum
from leakstore.store import DONE, Catalog, FeatureStore

VAE = VAEIdentity(
    name="synthetic",
    source="builtin",
    kind="builtin-demo",
    latent_channels=4,
    downsample=8,
    builtin=True,
    note="synthetic test store",
)
CFG = FeaturizeConfig(
    vae=VAE,
    resolution=64,
    timesteps=(0, 100, 300),
    fft_size=4,
    residual_bins=0,
    period=0,
    spectrum_bins=0,
    noise_bins=0,
    cooccurrence=0,
)  # latents and spectra only


CFG_RESIDUAL = CFG.replace(residual_bins=4, decoder="sha256:synthetic")


def planted_store(
    path,
    classes=("real", "gen-a", "gen-b", "gen-c"),
    per_class=48,
    seed=0,
    strength=0.6,
    cfg: FeaturizeConfig = CFG,
    chunk=32,
    residual_strength=0.0,
):
    """Each class adds its own low-frequency bias (a per-channel offset and a smooth ramp) to
    random latents: the shape of a generator's signal leak. Splits 60/20/20 per class.
    With cfg.residual_bins, the residual array holds unit noise plus, for each class but the
    first, its own offset vector of norm ~ residual_strength * sqrt(F)."""
    rng = np.random.default_rng(seed)
    c, h, w = cfg.latent_shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    n = per_class * len(classes)
    labels = np.repeat(np.arange(len(classes)), per_class).astype(np.int16)
    splits = np.tile(
        np.r_[
            np.zeros(int(per_class * 0.6)),
            np.ones(int(per_class * 0.2)),
            np.full(per_class - int(per_class * 0.6) - int(per_class * 0.2), 2),
        ],
        len(classes),
    ).astype(np.int8)
    z0 = rng.normal(0, 1, (n, c, h, w))
    for k in range(1, len(classes)):
        crng = np.random.default_rng(100 + k)
        off, ramp = crng.normal(0, strength, c), crng.normal(0, strength, (c, 2))
        bias = off[:, None, None] + ramp[:, 0, None, None] * yy + ramp[:, 1, None, None] * xx
        z0[labels == k] += bias
    z0 = torch.tensor(z0, dtype=torch.float32)
    a, s = (torch.tensor(v) for v in noise_coefficients(cfg.schedule, cfg.timesteps))
    eps = torch.tensor(rng.normal(0, 1, (n, len(cfg.timesteps), c, h, w)), dtype=torch.float32)
    zt = add_noise(z0, eps, a, s, cfg.sigma_normalize)
    spec = low_freq_spectrum(zt, cfg.fft_size)
    cat = Catalog(
        paths=tuple(f"/synthetic/{classes[lab]}/{i}.png" for i, lab in enumerate(labels)),
        labels=labels,
        splits=splits,
        groups=("",) * n,
        class_names=tuple(classes),
        real_class="real",
        split_source="synthetic",
    )
    res = rng.normal(0, 1, (n, residual_dim(cfg))).astype(np.float32)
    for k in range(1, len(classes)):
        res[labels == k] += residual_strength * np.random.default_rng(200 + k).normal(0, 1, residual_dim(cfg))
    store = FeatureStore.create(path, cfg, cat, chunk_size=chunk)
    for k in range(store.n_chunks):
        r = store.chunk_rows(k)
        sl = slice(r.start, r.stop)
        data = {
            "latent0": z0[sl].half().numpy(),
            "latents": zt[sl].half().numpy(),
            "spectra": spec[sl].half().numpy(),
            "sha256": np.array(["0" * 64] * len(r)),
            "error": np.array([""] * len(r)),
        }
        if cfg.residual_bins:
            data["residual"] = res[sl]
        store.write_chunk(k, data, np.full(len(r), DONE, dtype=np.uint8))
    return store
