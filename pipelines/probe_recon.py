"""Probe: do autoencoder-reconstruction residuals add what latent statistics miss?

    python -m pipelines.probe_recon lb128x64/manifest.csv --per-class 150

For a sample of a LeakBench manifest (the same number of images per class), computes with
TAEF2 (encoder and decoder from $LEAKSTORE_WEIGHTS or ../shared/weights):
  latent    per-channel mean and std of the latent E(x)           (what the leak lives in)
  residual  radial power spectrum (12 bins) and mean |x - D(E(x))| per colour channel, and
            per-channel energy of E(x) - E(D(E(x)))                (how far x is from the
            autoencoder's own outputs: small for images it made; the store's --residual
            feature, computed by the same function)
and reports the one-vs-rest AUC per class of a logistic-regression probe under 5-fold
cross-validation grouped by source photograph, for each feature set and both together.
A probe, not a trained model: it says whether the residual carries signal the store lacks.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from leakstore.features.residual import residual_features
from featurize.vae import _read_state, build_sequential_decoder, build_sequential_encoder, weights_dirs

N_BINS = 12


def features(images: torch.Tensor, enc: torch.nn.Module, dec: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """images (B, 3, H, W) in [0, 1] -> (latent features (B, 2C), residual features (B, 3*bins+3+C)),
    the residual exactly as a store featurized with --residual holds it (leakstore/features/residual.py)."""
    with torch.inference_mode():
        z = enc(images)
        rfe = residual_features(images, z, lambda lat: dec(lat).clamp(0, 1), enc, N_BINS)
    lat = torch.cat([z.mean((2, 3)), z.std((2, 3))], 1)
    return lat.numpy(), rfe.numpy()


def probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    p = cross_val_predict(clf, x, y, groups=groups, cv=GroupKFold(5), method="predict_proba")
    classes = np.unique(y)
    auc = {str(c): float(roc_auc_score(y == c, p[:, i])) for i, c in enumerate(classes)}
    return {"macro_auc": float(np.mean(list(auc.values()))), **auc}


def load_taef2():
    """(encoder, decoder) of TAEF2 from $LEAKSTORE_WEIGHTS or ../shared/weights, in eval mode."""
    w = next((d for d in weights_dirs() if (d / "taef2_decoder.pth").is_file()), None)
    if w is None:
        raise SystemExit("taef2_decoder.pth not found: set LEAKSTORE_WEIGHTS to the folder holding TAEF2")
    enc = build_sequential_encoder(_read_state(w / "taef2_encoder.pth"))[0]
    dec = build_sequential_decoder(_read_state(w / "taef2_decoder.pth"), "taef2_decoder.pth")
    return enc.eval(), dec.eval()


def sample_manifest(manifest: Path, per_class: int, seed: int):
    """The same number of rows of every label of a LeakBench manifest (a DataFrame), seeded."""
    import pandas as pd
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    return df.loc[[i for _, g in df.groupby("label")
                   for i in g.sample(min(per_class, len(g)), random_state=seed).index]]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from PIL import Image
    enc, dec = load_taef2()
    df = sample_manifest(args.manifest, args.per_class, args.seed)
    lat, rfe = [], []
    for s in range(0, len(df), 32):
        batch = [np.asarray(Image.open(args.manifest.parent / p).convert("RGB")) for p in df.path.iloc[s:s + 32]]
        a, b = features(torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255, enc, dec)
        lat.append(a)
        rfe.append(b)
    lat, rfe = np.concatenate(lat), np.concatenate(rfe)
    y, g = df.label.to_numpy(), df.group.to_numpy()
    out = {"images": len(df), "latent": probe(lat, y, g), "residual": probe(rfe, y, g),
           "latent+residual": probe(np.hstack([lat, rfe]), y, g)}
    for k in ("latent", "residual", "latent+residual"):
        print(f"{k:<16} " + " ".join(f"{c} {v:.3f}" for c, v in out[k].items()))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
