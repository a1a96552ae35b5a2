"""Probe: which per-image features keep their signal under post-processing?

    python -m pipelines.probe_views lb4/manifest.csv --per-class 80

For a sample of a LeakBench manifest (the same number of images per class), computes under each
view (default: none, jpeg:95, jpeg:75, jpeg:50, webp:80, resize:0.5, blur:1) with TAEF2 the blocks
    latent       per-channel mean and std of E(x)
    residual     the store's reconstruction residual (12 bins)
    periodicity  the store's pixel periodicity profile (period 8), on the image at its own size
then trains a probe on every view pooled (as training views would) and reports its one-vs-rest
macro AUC per view (and the real class's AUC), under 5-fold cross-validation grouped by source
photograph, for each feature set. `--model lr` is a logistic regression, `mlp` a one-hidden-layer
network (it can use interactions: "this much residual at this much compression"). A probe, not a
trained model: it says whether a block carries signal that survives the views.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from featurize.images import prepare
from featurize.views import apply_view, parse_view
from leakstore.features.periodicity import periodicity_of_image
from pipelines.probe_recon import features as latent_and_residual, load_taef2, sample_manifest

VIEWS = ("none", "jpeg:95", "jpeg:75", "jpeg:50", "webp:80", "resize:0.5", "blur:1")
SETS = ("latent+residual", "latent+residual+periodicity")


def blocks(paths: list[Path], view: str, enc, dec, resolution: int, period: int = 8) -> dict[str, np.ndarray]:
    """{block: (N, d)} for these images under `view`, brought back to `resolution` as featurize does."""
    from PIL import Image
    steps = parse_view(view)
    out: dict[str, list] = {"latent": [], "residual": [], "periodicity": []}
    for s in range(0, len(paths), 32):
        arrs = [apply_view(np.asarray(Image.open(p).convert("RGB")), steps) for p in paths[s:s + 32]]
        out["periodicity"] += [periodicity_of_image(a, period) for a in arrs]
        x = torch.from_numpy(np.stack([prepare(a, resolution, "shorter-crop") for a in arrs]))
        lat, res = latent_and_residual(x.permute(0, 3, 1, 2).float() / 255, enc, dec)
        out["latent"].append(lat)
        out["residual"].append(res)
    return {"latent": np.concatenate(out["latent"]), "residual": np.concatenate(out["residual"]),
            "periodicity": np.stack(out["periodicity"])}


def pooled_probe(feats: dict[str, dict[str, np.ndarray]], names: tuple[str, ...], y, groups, model: str = "mlp",
                 folds: int = 5) -> dict[str, dict[str, float]]:
    """Train on every view pooled, test each view: {view: {"macro_auc", "real"}} (grouped CV)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    views = list(feats)
    X = {v: np.hstack([feats[v][n] for n in names]) for v in views}
    classes = np.unique(y)
    proba = {v: np.zeros((len(y), len(classes))) for v in views}
    for tr, te in GroupKFold(folds).split(y, y, groups):
        head = (LogisticRegression(max_iter=4000, C=0.3) if model == "lr" else
                MLPClassifier((128,), alpha=1e-2, max_iter=600, early_stopping=True, random_state=0))
        clf = make_pipeline(StandardScaler(), head).fit(np.vstack([X[v][tr] for v in views]),
                                                        np.concatenate([y[tr]] * len(views)))
        for v in views:
            proba[v][te] = clf.predict_proba(X[v][te])
    out = {}
    for v in views:
        auc = {str(c): float(roc_auc_score(y == c, proba[v][:, i])) for i, c in enumerate(classes)}
        out[v] = {"macro_auc": float(np.mean(list(auc.values()))), "real": auc.get("real", float("nan"))}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--per-class", type=int, default=80)
    ap.add_argument("--views", default=",".join(VIEWS))
    ap.add_argument("--model", choices=("mlp", "lr"), default="mlp")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    enc, dec = load_taef2()
    df = sample_manifest(args.manifest, args.per_class, args.seed)
    paths = [args.manifest.parent / p for p in df.path]
    views = [v for v in args.views.split(",") if v]
    feats = {}
    for v in views:
        feats[v] = blocks(paths, v, enc, dec, args.resolution)
        print(f"featurized {len(paths)} images under {v}", flush=True)
    y, g = df.label.to_numpy(), df.group.to_numpy()
    out = {"images": len(df), "model": args.model,
           **{s: pooled_probe(feats, tuple(s.split("+")), y, g, args.model) for s in SETS}}
    for s in SETS:
        print(f"{s:<30} " + " | ".join(f"{v} {r['macro_auc']:.3f} (real {r['real']:.2f})" for v, r in out[s].items()))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
