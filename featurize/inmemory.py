"""Featurize a list of image files in memory (no store): what scoring raw images uses, with
exactly the config recorded in a model, so features match the training features."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from leakstore.config import DEFAULT_MAX_PIXELS, DEFAULT_SCORE_BATCH, FeaturizeConfig
from leakstore.device import resolve_device
from leakstore.features import FeatureBatch
from leakstore.featurize.runner import DeviceFeaturizer, ImageRows, collate
from leakstore.featurize.vae import LatentEncoder


def featurize_paths(
    paths: list[str],
    cfg: FeaturizeConfig,
    encoder: LatentEncoder,
    *,
    device="cpu",
    batch_size: int = DEFAULT_SCORE_BATCH,
    workers: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    runner: DeviceFeaturizer | None = None,
    provenance: dict | None = None,
) -> tuple[FeatureBatch, list[str], dict[int, str]]:
    """-> (features of the images that decoded, in input order, `rows` = their input indices;
    sha256 per input; {input index: error}). With cfg.crops = K > 1 every image is K rows, one per
    crop, and `rows` are input index * K + crop. A `provenance` dict is filled with {input index:
    featurize.provenance.Provenance} of every file that could be read, from the bytes the loader reads."""
    runner = runner or DeviceFeaturizer(encoder, cfg, resolve_device(device), batch_size, use_compile=False)
    k = cfg.crops
    crop_index = np.tile(np.arange(k), len(paths)).astype(np.int16) if k > 1 else None
    ds = ImageRows(
        tuple(p for p in paths for _ in range(k)),
        list(range(len(paths) * k)),
        cfg,
        max_pixels,
        crop_index=crop_index,
        provenance=provenance is not None,
    )
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    parts: dict[str, list[torch.Tensor]] = {}
    ok, sha, errors = [], [""] * len(paths), {}
    for b in loader:
        for r, h in b["sha"].items():
            sha[r // k] = h
        errors.update({r // k: e for r, e in b["error"].items()})
        if provenance is not None:
            provenance.update({r // k: m for r, m in b["provenance"].items()})
        if b["images"] is None:
            continue
        out = runner(b["images"], b["noise"], b["native"])
        if "event" in out:
            out.pop("event").synchronize()
        for name, v in out.items():
            parts.setdefault(name, []).append(v.cpu())
        ok += b["ok_rows"]
    batch = FeatureBatch.empty(cfg)
    if ok:
        batch = FeatureBatch(
            np.asarray(ok, dtype=np.int64),
            {k: torch.cat(v) for k, v in parts.items()},
            np.full(len(ok), -1),
            np.full(len(ok), -1),
            np.array([paths[i // k] for i in ok], dtype=object),
        )
    return batch, sha, errors
