"""Probe: are the generators' statistics farther apart than content moves them?

    python -m pipelines.probe_geometry lb4.zarr [--json]

An open-set density judges an image by where its statistics lie; a supervised classifier by how
they differ between classes shown on the same content. This probe measures both sides on a
store's own arrays, no model needed: per image, the per-channel mean and log std of the clean
latent (`latent0`) and, when stored, the reconstruction residual, standardised on the training
rows, in the squared Mahalanobis metric of the within-class covariance (shared, Ledoit-Wolf): the
metric of the `stats` and `residual` open-set scorers (`model.openset.ClassGaussian`).

  between   distance between class means on the training split (how far apart generators are)
  shift     distance from a class's training mean to its own test mean (how far new content
            moves a known generator: the test split holds other photographs or prompts)
  sets      leave-one-generator-out: the AUROC of the distance to the nearest known class mean
            for the mean of k test images of the held-out class against the mean of k test images
            of one known class, for k in --set-sizes (k = 1 is the per-image figure)

When `between` is no larger than `shift`, a new generator's images fall where a known generator's
images on new content fall, and no density on these statistics separates them.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.metrics import roc_auc_score

from leakstore.store import DONE, FeatureStore
from model.openset import ClassGaussian


def statistics(store: FeatureStore) -> tuple[np.ndarray, list[str]]:
    """(N, F) per-channel latent mean and log std (+ residual when stored), and the part names."""
    z = store.read("latent0").astype(np.float64)
    parts, names = [z.mean((2, 3)), np.log(z.std((2, 3)) + 1e-9)], ["latent mean", "latent log std"]
    if "residual" in store.group:
        parts.append(store.read("residual").astype(np.float64))
        names.append("residual")
    return np.concatenate(parts, 1), names


def probe(store_path, set_sizes=(1, 4, 16), draws: int = 300, seed: int = 0) -> dict:
    store = FeatureStore.open(store_path)
    rows = store.status() == DONE                             # featurized rows only
    if store.has_views:
        rows &= store.view_index() == 0                       # clean rows: views are not new content
    X, parts = statistics(store)
    y, sp = store.read("label").astype(int), store.read("split").astype(int)
    X, y, sp = X[rows], y[rows], sp[rows]
    names = store.class_names
    present = [c for c in range(len(names)) if ((y == c) & (sp == 0)).sum() > 1 and ((y == c) & (sp == 2)).any()]
    test = {c: np.flatnonzero((sp == 2) & (y == c)) for c in present}

    def fit(classes) -> ClassGaussian:                        # the open-set scorer's own metric (model/openset.py)
        m = (sp == 0) & np.isin(y, classes)
        return ClassGaussian().fit(X[m], y[m])

    g = fit(present)
    centres = g.means_ * g.scale_ + g.mean_                   # class means in the raw statistics
    d = g.class_distances(centres)                            # (K, K) squared distances between class means
    between = {names[a]: {names[b]: float(d[i, j]) for j, b in enumerate(g.classes_)} for i, a in enumerate(g.classes_)}
    shift = {names[c]: float(g.class_distances(X[test[c]].mean(0)[None])[0, i]) for i, c in enumerate(g.classes_)}
    rng = np.random.default_rng(seed)
    real = store.attrs.get("real_class")
    sets = {}
    for h in [c for c in present if names[c] != real]:
        known = [c for c in present if c != h]
        gh = fit(known)

        def nearest(idx, k):
            return k * float(gh.class_distances(X[idx].mean(0)[None]).min())
        sets[names[h]] = {}
        for k in set_sizes:
            if k > min(len(v) for v in test.values()):
                continue
            unk = [nearest(rng.choice(test[h], k, replace=False), k) for _ in range(draws)]
            kn = [nearest(rng.choice(test[c], k, replace=False), k) for c in rng.choice(known, draws)]
            sets[names[h]][k] = float(roc_auc_score(np.r_[np.zeros(draws), np.ones(draws)], np.r_[kn, unk]))
    off = [v for a, row in between.items() for b, v in row.items() if a < b]
    return {"store": str(store_path), "features": parts, "dims": int(X.shape[1]), "between": between,
            "shift": shift, "between_range": [min(off), max(off)] if off else None,
            "shift_range": [min(shift.values()), max(shift.values())], "set_auroc": sets}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store")
    ap.add_argument("--set-sizes", default="1,4,16", help="images per set, comma-separated")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    r = probe(a.store, tuple(int(k) for k in a.set_sizes.split(",")))
    if a.json:
        print(json.dumps(r, indent=2))
        return
    print(f"{r['store']}: {r['dims']} statistics ({', '.join(r['features'])}), squared Mahalanobis distances")
    names = list(r["between"])
    w = max(len(n) for n in names) + 2
    print(" " * w + "".join(f"{n[-10:]:>11}" for n in names) + f"{'test shift':>12}")
    for a_ in names:
        print(f"{a_:<{w}}" + "".join(f"{r['between'][a_][b]:>11.1f}" for b in names) + f"{r['shift'][a_]:>12.1f}")
    print(f"between classes {r['between_range'][0]:.1f}-{r['between_range'][1]:.1f}; "
          f"a class's train-to-test shift {r['shift_range'][0]:.1f}-{r['shift_range'][1]:.1f}")
    ks = sorted({k for v in r["set_auroc"].values() for k in v})
    print("held out".ljust(w) + "".join(f"{'k=' + str(k):>8}" for k in ks) + "   (AUROC, nearest-class distance of a k-image mean)")
    for g, v in r["set_auroc"].items():
        print(f"{g:<{w}}" + "".join(f"{v.get(k, float('nan')):>8.3f}" for k in ks))


if __name__ == "__main__":
    main()
