"""Attribution out of fold over a store's training prompts: the networks, the stored statistics'
discriminant, and their fusion at each weight (how `train --discriminant` was chosen).

    python -m benchmarks.prompt_folds STORE.zarr --out folds/ --outliers OUTLIERS.zarr --json folds.json
    python -m benchmarks.prompt_folds STORE.zarr --out folds/ --folds 4 --weights 0,0.1,0.2,0.3,0.5,1

The training split's prompts (the store's `group`; an image's file digest where a store has none)
are dealt into `--folds` folds in sorted order (fold k: prompts k, k + F, ...). For each fold, a copy
of the store (hard links; only `split` is rewritten, with the fold's prompts as test) trains the
default model (`--outliers`, `--seed`, `--threads` as `leakstore train`; the validation prompts still
choose the epoch), and the fold's images are judged by that model alone, which never saw their
prompts: clean, and as their training views where the store has them. Each image's probabilities at
weight w are the softmax of its crops' mean of (1 - w) log p_networks + w log p_discriminant, exactly
what `attribution` computes for a model trained with `--discriminant w`.

Writes per weight the pooled macro AUC and top-1 over every fold's images, and each fold's macro AUC.
Resumable: a fold whose copy and model exist is not made or trained again. Takes the store's
training time once per fold (four folds of RealGen-dev's recipe store: 10-18 min each, one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0)


def _groups(store) -> np.ndarray:
    """Every row's group as training's out-of-fold threshold reads it (model.train.row_groups)."""
    from leakstore.model.train import row_groups

    return row_groups(store, np.arange(store.n))


def fold_prompts(store, folds: int) -> list[list[str]]:
    """The training split's groups dealt into `folds` lists (sorted, round robin)."""
    groups = _groups(store)
    train = sorted(set(groups[store.read("split") == 0]))
    if len(train) < folds:
        raise SystemExit(f"{store.path} has {len(train)} training prompts: fewer than --folds {folds}")
    return [train[k::folds] for k in range(folds)]


def fold_copy(src: Path, dst: Path, prompts: list[str]) -> Path:
    """`src` with `prompts` marked test, as hard links but for a rewritten `split` (made once)."""
    import zarr

    from leakstore.store import FeatureStore

    if (dst / ".fold-done").exists():
        return dst
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=os.link)
    shutil.rmtree(dst / "split")
    shutil.copytree(src / "split", dst / "split")  # its own files: the source's split stays as it was
    st = FeatureStore.open(src)
    split = st.read("split").copy()
    split[(split == 0) & np.isin(_groups(st), prompts)] = 2  # their training rows
    zarr.open_group(str(dst), mode="r+")["split"][:] = split
    (dst / ".fold-done").write_text(json.dumps(prompts))
    return dst


def judge(run: Path, store_path: Path, prompts: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """For the fold's images (clean, and their training views): labels, image ids and each row's
    networks' and discriminant's log-probabilities under the fold's model."""
    from leakstore.model.checkpoint import load_bundle
    from leakstore.model.predict import predict
    from leakstore.store import FeatureStore

    b = load_bundle(run)
    if b.discriminant is None:
        raise SystemExit(f"{run} has no discriminant (trained with --discriminant 0): train the folds with it")
    st = FeatureStore.open(store_path)
    labels = st.load(())  # labels and splits only: the features of the fold's rows are read below
    y = np.array([b.class_names.index(n) if n in b.class_names else -1 for n in st.class_names] + [-1])
    mine = np.isin(_groups(st)[labels.rows], prompts) & (labels.splits == 2) & (y[labels.labels] >= 0)
    feats = st.load(b.feature_names, rows=labels.rows[mine])
    p = predict(b, feats)
    rows = feats.rows
    view = st.view_index()[rows]
    out = {}
    for name, m in (("clean", view == 0), ("views", view > 0)):
        if m.any():
            out[name] = {
                "y": y[feats.labels][m],
                "image": (st.image_rows()[rows][m].astype(np.int64) << 8) + view[m],
                "net": p["network_proba"][m],
                "disc": b.discriminant.log_posterior(p["blocks"]["features"][m]),
            }
    return out


def scores(parts: list[dict[str, np.ndarray]], w: float) -> dict:
    """Pooled per-image macro AUC and top-1 at weight w over `parts` (each one fold's images)."""
    from scipy.special import softmax

    from leakstore.model.images import ImageGroups
    from leakstore.model.metrics import macro_auc
    from leakstore.model.predict import fused_log_proba

    ys, ps = [], []
    for d in parts:  # an image: the softmax of its crops' mean fused log-probability, as attribution gives it
        g = ImageGroups(d["image"])
        ps.append(softmax(g.mean(fused_log_proba(d["net"], d["disc"], w)), axis=1))
        ys.append(d["y"][g.first])
    y, p = np.concatenate(ys), np.concatenate(ps)
    present = [c for c in range(p.shape[1]) if (y == c).any() and (y != c).any()]
    auc = macro_auc(y, p, present) if present else float("nan")
    return {"macro_auc": auc, "top1": float((p.argmax(1) == y).mean()), "images": int(len(y))}


def run(
    store: Path,
    out: Path,
    folds: int,
    weights,
    outliers: Path | None = None,
    seed: int = 0,
    threads: int | None = None,
    cfg=None,
) -> dict:
    """Make, train and judge the folds; `cfg` (a ModelConfig) defaults to train's defaults at `seed`."""
    from leakstore.device import set_threads
    from leakstore.model.config import ModelConfig, default_open_scorer
    from leakstore.model.train import train
    from leakstore.store import FeatureStore

    set_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    prompts = fold_prompts(FeatureStore.open(store), folds)
    cfg = cfg or ModelConfig(seed=seed, open_scorer=default_open_scorer(outliers is not None))
    judged = []
    for k, ps in enumerate(prompts):
        copy = fold_copy(store, out / f"fold{k}.zarr", ps)
        model = out / f"fold{k}"
        if not (model / "model.json").exists():
            print(f"fold {k}: {len(ps)} prompts held out; training", flush=True)
            train(copy, model, cfg, outliers=outliers, progress=False, overwrite=True)
        judged.append(judge(model, copy, ps))
    result = {"store": str(store), "folds": [list(p) for p in prompts], "seed": cfg.seed, "weights": {}}
    for w in weights:
        row = {}
        for name in ("clean", "views"):
            parts = [j[name] for j in judged if name in j]
            if parts:
                row[name] = {**scores(parts, w), "per_fold": [scores([p], w)["macro_auc"] for p in parts]}
        result["weights"][str(w)] = row
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="folder for the fold stores and models")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--weights", default=",".join(str(w) for w in WEIGHTS), help="discriminant weights to judge")
    ap.add_argument("--outliers", type=Path, default=None, help="as train --outliers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    weights = [float(w) for w in a.weights.split(",") if w]
    r = run(a.store, a.out, a.folds, weights, a.outliers, a.seed, a.threads)
    for w, row in r["weights"].items():
        cells = "  ".join(
            f"{name} {v['macro_auc']:.3f} (top-1 {v['top1']:.3f}; folds "
            + " ".join(f"{x:.3f}" for x in v["per_fold"])
            + ")"
            for name, v in row.items()
        )
        print(f"discriminant {w}: {cells}")
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
