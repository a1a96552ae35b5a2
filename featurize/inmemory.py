"""Featurize a list of image files in memory (no store): what scoring raw images uses, with
exactly the config recorded in a model, so features match the training features."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from featurize.runner import DeviceFeaturizer, ImageRows, collate, resolve_device
from featurize.vae import LatentEncoder
from leakstore.config import FeaturizeConfig
from model.data import Features


def featurize_paths(paths: list[str], cfg: FeaturizeConfig, encoder: LatentEncoder, *, device="cpu",
                    batch_size: int = 16, workers: int = 0, max_pixels: int = 1 << 27,
                    runner: DeviceFeaturizer | None = None) -> tuple[Features, list[str], dict[int, str]]:
    """-> (features of the images that decoded, in input order; sha256 per input; {input index: error})."""
    dev = resolve_device(device)
    runner = runner or DeviceFeaturizer(encoder, cfg, dev, batch_size, use_compile=False)
    ds = ImageRows(tuple(paths), list(range(len(paths))), cfg, max_pixels)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    lat, spec, res, ok, sha, errors = [], [], [], [], [""] * len(paths), {}
    for b in loader:
        for r, h in b["sha"].items():
            sha[r] = h
        errors.update(b["error"])
        if b["images"] is None:
            continue
        out = runner(b["images"], b["noise"])
        if "event" in out:
            out.pop("event").synchronize()
        lat.append(out["latents"].cpu())
        spec.append(out["spectra"].cpu())
        if "residual" in out:
            res.append(out["residual"].cpu())
        ok += b["ok_rows"]
    c, h, w = cfg.latent_shape
    t, k = len(cfg.timesteps), cfg.fft_size
    feats = Features(rows=np.asarray(ok, dtype=np.int64),
                     latents=torch.cat(lat) if lat else torch.zeros((0, t, c, h, w), dtype=torch.float16),
                     spectra=torch.cat(spec) if spec else torch.zeros((0, t, c, k, k), dtype=torch.float16),
                     latent0=None, labels=np.full(len(ok), -1), splits=np.full(len(ok), -1),
                     paths=np.array([paths[i] for i in ok], dtype=object),
                     residual=(torch.cat(res) if res else torch.zeros((0, cfg.residual_dim))) if cfg.residual_bins else None)
    return feats, sha, errors
