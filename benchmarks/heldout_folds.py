"""A known generator held out, judged out of fold over the store's training and validation prompts:
how well a network-free open-set scorer (one that reads only the stored statistics, as `lda` does)
flags a generator it never saw, on many prompts instead of the few validation ones.

    python -m benchmarks.heldout_folds STORE.zarr --outliers OUTLIERS.zarr --json heldout.json
    python -m benchmarks.heldout_folds STORE.zarr --outliers OUTLIERS.zarr --folds 4 --draws 3 --scorer lda

`leakstore openset-study` holds each generator out and judges the validation and test prompts: on
RealGen-dev three prompts each, where a scorer's figure moves by 0.02-0.05 with the prompts alone.
Here the training and validation prompts (the store's `group`; an image's file digest where it has
none) are dealt into `--folds` seeded folds (as training's out-of-fold threshold deals them); for
each known generator g (not the real class, as in the study) and each fold f the scorer is fitted
without g's rows, without fold f's rows, and without the outlier copies made from either
(`make-outliers` records each copy's source class and prompt), and fold f's images (their crops'
mean score; training views are fitting material only) are scored. g's AUROC against the other
known classes' images is pooled over the folds. `--draws` repeats it with other fold draws (seeds
0..D-1): their spread is the yardstick's own noise. No network is trained: seconds per refit
(RealGen-dev's four-crop recipe store, three draws: 34 s on one core).

Writes {scorer, folds, draws, prompts, per_generator: {g: [AUROC per draw]}, mean_per_draw, mean}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _outlier_parts(path, store, names, cfg) -> dict:
    """Every outlier row that may fit a model of `store` (not a copy of a test image), with its class,
    the class and prompt of the image it was made from."""
    from leakstore.model.outliers import outlier_classes, outlier_groups, outlier_rows, outlier_sources
    from leakstore.model.predict import stored_feature_blocks

    ost, rows = outlier_rows(path, store, judged_splits=(2,))
    feats = ost.load(names, rows=rows)
    return {
        "blocks": stored_feature_blocks(cfg, feats),
        "kind": outlier_classes(ost, feats.rows),
        "source": outlier_sources(ost, feats.rows),
        "group": outlier_groups(ost, feats.rows).astype(str),
    }


def run(store_path, outliers=None, scorer: str = "lda", folds: int = 4, draws: int = 3, cfg=None) -> dict:
    from leakstore.model.config import OPEN_SCORERS, ModelConfig
    from leakstore.model.images import ImageGroups
    from leakstore.model.metrics import open_set
    from leakstore.model.openset import BASE_SCORERS, FUSED, OpenSetScorer, components, select_rows, stored_blocks
    from leakstore.model.predict import stored_feature_blocks
    from leakstore.model.threshold import NETWORK_FREE_BLOCKS, fold_of_groups
    from leakstore.model.train import row_groups
    from leakstore.store import FeatureStore

    if scorer not in OPEN_SCORERS:
        raise SystemExit(f"--scorer {scorer}: not an open-set scorer ({', '.join(OPEN_SCORERS)})")
    if not all(BASE_SCORERS[c][0] in NETWORK_FREE_BLOCKS for c in FUSED.get(scorer, (scorer,))):
        raise SystemExit(f"--scorer {scorer} reads the network's outputs: use leakstore openset-study for it")
    cfg = (cfg or ModelConfig()).replace(open_scorer=scorer)
    store = FeatureStore.open(store_path)
    names = ("latents",) + stored_blocks(("features",), cfg)
    feats = store.load(names)
    blocks = stored_feature_blocks(cfg, feats)
    components(scorer, [b for b in NETWORK_FREE_BLOCKS if blocks.get(b) is not None])  # one line if a block is missing
    labels, splits = np.asarray(feats.labels), np.asarray(feats.splits)
    groups = row_groups(store, feats.rows).astype(str)
    clean = store.view_index()[feats.rows] == 0
    image = store.image_rows()[feats.rows]
    dev = (labels >= 0) & np.isin(splits, (0, 1))
    classes = [c for c in range(len(store.class_names)) if (dev & (labels == c)).any()]
    if len(classes) < 3:
        raise SystemExit(f"{store_path}: {len(classes)} known classes with training rows; holding one out needs 3")
    prompts = np.unique(groups[dev])
    if len(prompts) < folds:
        raise SystemExit(f"{store_path}: {len(prompts)} training and validation prompts, fewer than --folds {folds}")
    out = _outlier_parts(outliers, store, names, cfg) if outliers else None
    real = store.attrs.get("real_class")  # as the study, real photographs are never held out as a generator
    per = {store.class_names[c]: [] for c in classes if store.class_names[c] != real}
    for d in range(draws):
        fold = np.full(len(labels), -1)
        fold[dev] = fold_of_groups(groups[dev], folds, seed=d)
        for c in classes:
            g = store.class_names[c]
            if g not in per:
                continue
            known, new = [], []
            kept = [k for k in classes if k != c]
            for f in range(folds):
                fit = dev & (fold != f) & (labels != c)
                ev = dev & (fold == f) & clean
                o = None
                if out is not None:
                    keep = (out["source"] != g) & ~np.isin(out["group"], np.unique(groups[fold == f]))
                    o = {**select_rows(out["blocks"], keep), "outlier_class": out["kind"][keep]}
                y = np.searchsorted(kept, labels[fit])
                est = OpenSetScorer(
                    method=scorer, random_state=cfg.seed, outlier_components=cfg.outlier_components
                ).fit(select_rows(blocks, fit), y, outliers=o)
                ig = ImageGroups(image[ev])
                s = ig.mean(est.score_samples(select_rows(blocks, ev)))
                is_g = labels[ev][ig.first] == c
                known.append(s[~is_g])
                new.append(s[is_g])
            per[g].append(open_set(np.concatenate(known), np.concatenate(new))["auroc"])
    by_draw = [float(np.mean([v[d] for v in per.values()])) for d in range(draws)]
    return {
        "store": str(store_path),
        "outliers": str(outliers) if outliers else None,
        "scorer": scorer,
        "outlier_components": cfg.outlier_components,
        "folds": folds,
        "draws": draws,
        "prompts": int(len(prompts)),
        "per_generator": per,
        "mean_per_draw": by_draw,
        "mean": float(np.mean(by_draw)),
    }


def main(argv=None) -> dict:
    from leakstore.model.config import ModelConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--outliers", type=Path, default=None, help="the outlier store, as train --outliers")
    ap.add_argument("--scorer", default="lda", help="a network-free open-set scorer (default lda)")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--draws", type=int, default=3, help="fold draws (seeds 0..D-1)")
    ap.add_argument(
        "--outlier-components", type=int, default=ModelConfig.outlier_components, help="as train --outlier-components"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    cfg = ModelConfig(outlier_components=args.outlier_components)
    r = run(args.store, args.outliers, args.scorer, args.folds, args.draws, cfg=cfg)
    for g, v in r["per_generator"].items():
        print(f"  {g:32s} {' '.join(f'{a:.3f}' for a in v)}")
    print(
        f"{r['scorer']}: held-out generator AUROC out of fold over {r['prompts']} prompts, mean "
        f"{r['mean']:.3f} (draws {', '.join(f'{m:.3f}' for m in r['mean_per_draw'])})"
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return r


if __name__ == "__main__":
    main()
