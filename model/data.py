"""Read a store's features into memory for training and scoring."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from leakstore.errors import InputError
from leakstore.store import DONE, FeatureStore


@dataclass
class Features:
    rows: np.ndarray           # (N,) store rows
    latents: torch.Tensor      # (N, T, C, h, w) float16
    spectra: torch.Tensor      # (N, T, C, k, k) float16
    latent0: torch.Tensor | None
    labels: np.ndarray         # (N,) store label index, -1 unlabelled
    splits: np.ndarray         # (N,) 0 train, 1 val, 2 test, -1 none
    paths: np.ndarray          # (N,) str
    residual: torch.Tensor | None = None   # (N, F) float32, in stores featurized with --residual

    def subset(self, mask: np.ndarray) -> "Features":
        idx = np.flatnonzero(mask)
        t = torch.from_numpy(idx)
        pick = lambda x: None if x is None else x[t.to(x.device)]  # noqa: E731
        return Features(self.rows[idx], self.latents[t], self.spectra[t], pick(self.latent0), self.labels[idx],
                        self.splits[idx], self.paths[idx], pick(self.residual))

    def __len__(self) -> int:
        return len(self.rows)


def load_features(store: FeatureStore, *, with_latent0: bool = False, rows: np.ndarray | None = None) -> Features:
    """All done rows (or the given ones) of a store, in store order. Failed rows are never read."""
    st = store.status()
    done = np.flatnonzero(st == DONE)
    if rows is not None:
        done = np.intersect1d(done, rows)
    if len(done) == 0:
        raise InputError(f"store {store.path} has no featurized rows: run or finish `leakstore featurize` first")
    sl = slice(int(done[0]), int(done[-1]) + 1)
    contiguous = len(done) == done[-1] - done[0] + 1

    def read(name):
        a = store.read(name, sl) if contiguous else store.read(name, done)
        return a

    lat = torch.from_numpy(np.ascontiguousarray(read("latents")))
    spec = torch.from_numpy(np.ascontiguousarray(read("spectra")))
    l0 = torch.from_numpy(np.ascontiguousarray(read("latent0"))) if with_latent0 else None
    res = torch.from_numpy(np.ascontiguousarray(read("residual"))) if store.config.residual_bins else None
    return Features(done, lat, spec, l0, store.read("label")[done], store.read("split")[done],
                    np.array([str(p) for p in store.read("path")[done]], dtype=object), res)
