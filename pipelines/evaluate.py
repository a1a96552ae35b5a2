"""Evaluate a trained model on one or more stores (post-processing views of the same images).

    evaluate("runs/m1", ["lb.zarr", "lb-jpeg75.zarr"], out="runs/m1/eval")

Closed set: test-split rows of the model's known classes. Open set: test-split rows of the
classes held out of training (unknown generators) against those known rows; both embedded
identically. A store's training views (featurize --train-views) never count: another split
(`split="val"`, `"val+test"`, `"all"`) is judged on its images as given. Writes metrics.json,
predictions.parquet, PNG plots and report.html.

Images from generators outside the training store (`unseen=[store, ...]`, featurized with the
model's config) are scored the same way: each label's rows (of `split` when the store has
splits, all rows otherwise) against the first store's known rows, and against each further
store's known rows (`auroc_by_view`: the known images re-saved, the fair yardstick for outside
images that are JPEGs). A label the model knows (real photographs from elsewhere, say) reports how
often it is still called what it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from leakstore.api.predictor import Predictor
from leakstore.config import DEFAULT_DEVICE
from leakstore.errors import InputError
from leakstore.fsio import atomic_path, write_json
from leakstore.model.checkpoint import SMALL, images_among
from leakstore.model.metrics import (
    auroc_ci,
    bootstrap_ci,
    closed_set,
    macro_auc,
    open_set,
    proportion_ci,
    resampling_units,
)
from leakstore.model.predict import asked_rate, image_threshold, threshold_expects, validation_flagged
from leakstore.store import FeatureStore, in_split


def _is_training_store(store: FeatureStore, bundle) -> bool:
    """The store the model trained on (its id, drawn when the store was created)."""
    sid = store.attrs.get("store_id")
    return sid is not None and sid == bundle.meta.get("training", {}).get("store_id")


def refuse_in_sample(store: FeatureStore, bundle, split: str = "test") -> None:
    """A model trained with --final learned its training store's test split: no figures there."""
    if bundle.cfg.final and split in ("test", "val+test", "all") and _is_training_store(store, bundle):
        raise InputError(
            f"{store.path} is the store this model trained on, its test split included (train --final): "
            f"figures on its {split} rows would be in-sample; evaluate the model trained without --final, "
            "or other images"
        )


def trained_judged(bundle, sha256) -> int | None:
    """How many of the judged images (by their files' SHA-256; a re-saved or resized copy keeps its
    source's) the model's networks trained on: figures over them are in-sample. None: a model that
    did not record its training images."""
    return images_among(sha256, bundle.trained_images)


def outlier_photos_judged(bundle, sha256) -> int:
    """How many of the judged images (by SHA-256) are photographs whose crops the open-set scorer fitted as
    outliers (make-outliers --photos): the unknown flag learned them, so flagging them is in-sample."""
    return images_among(sha256, bundle.outlier_photos) or 0


def calibrated_on(bundle, stores) -> list[str]:
    """The stores given that set the model's unknown threshold (leakstore calibrate): the threshold was
    chosen on their known images (pooled, at the asked rate), so their flag rate measures nothing."""
    used = {Path(c).resolve() for c in (bundle.meta.get("calibration") or {}).get("stores", [])}
    return sorted({str(s) for s in stores if Path(s).resolve() in used})


def evaluate_store(predictor: Predictor, store_path, split: str = "test") -> tuple[dict, object, dict]:
    import pandas as pd

    bundle = predictor.bundle
    store = FeatureStore.open(store_path)
    predictor.check_store(store)
    refuse_in_sample(store, bundle, split)
    feats = store.load(())  # labels and splits only: the features of the rows judged are read below
    names = store.class_names
    store_to_model = np.array([bundle.class_names.index(n) if n in bundle.class_names else -1 for n in names] + [-1])
    y = store_to_model[feats.labels]
    unknown = np.array([n not in bundle.class_names for n in names] + [False])[feats.labels] & (feats.labels >= 0)
    sel = in_split(feats.splits, split)
    sel &= store.view_index()[feats.rows] == 0  # training views are training material: a split is judged on its images
    keep = sel & ((y >= 0) | unknown)
    if not keep.any():
        raise InputError(f"store {store_path} has no labelled {split} rows to evaluate")
    sub = store.load(predictor.inputs, rows=feats.rows[keep])
    y, unknown = y[keep], unknown[keep]
    p = predictor.predict(sub)
    per_crop = None
    if store.has_crops:  # judge images, not crops: every figure below is per image
        per_crop = closed_set(y[y >= 0], p["proba"][y >= 0], bundle.class_names)
        sub, p, (y, unknown) = per_image(predictor, store, sub, p, y, unknown)
    known = y >= 0
    judged_sha = store.read("sha256")[feats.rows[keep]]
    metrics = {
        "view": store.config.view,
        "store": str(store_path),
        "split": split,
        "unit": "image" if per_crop is not None else "row",
        "crops": store.config.crops,
        "closed": closed_set(y[known], p["proba"][known], bundle.class_names),
        "open": open_set(p["open_score"][known], p["open_score"][unknown], (p["pred"] == y)[known]),
        "trained_images": trained_judged(bundle, judged_sha),
    }
    if bundle.fuses:  # what the networks alone give, beside the attribution (networks + discriminant)
        net = closed_set(y[known], p["network_proba"][known], bundle.class_names)
        metrics["closed_networks"] = {k: net[k] for k in ("macro_auc", "top1", "balanced_accuracy")}
    true = np.array([names[lab] for lab in sub.labels], dtype=object)
    o = metrics["open"]
    o["per_generator_auroc"] = {
        str(g): open_set(p["open_score"][known], p["open_score"][true == g]).get("auroc")
        for g in sorted(set(true[unknown]))
    }
    if per_crop is not None:
        metrics["closed_per_crop"] = {
            k: per_crop[k] for k in ("macro_auc", "top1", "balanced_accuracy") if k in per_crop
        }
        metrics["open_spread"] = float(np.mean(p["open_spread"]))
    o["unknown_flagged"] = float(p["is_unknown"][unknown].mean()) if unknown.any() else None
    o["known_flagged"] = float(p["is_unknown"][known].mean()) if known.any() else None
    # 95 % intervals: whole prompts/sources resampled where the store has enough of them, else images
    units, metrics["ci_over"] = resampling_units(store.read("group")[sub.rows][known])
    yk, pk, fk = y[known], p["proba"][known], p["is_unknown"][known]
    present = [c for c in range(pk.shape[1]) if (yk == c).any() and (yk != c).any()]
    metrics["closed"]["macro_auc_ci"] = (
        bootstrap_ci(lambda i: macro_auc(yk[i], pk[i], present), units) if present else None
    )
    o["known_flagged_ci"] = proportion_ci(fk, units)
    # the threshold was set on validation data: the asked false-unknown rate, what validation gave, and what
    # this split gives
    o["false_unknown_rate"] = {
        "asked": asked_rate(bundle),
        "validation": validation_flagged(bundle),
        split: o["known_flagged"],
    }
    df = pd.DataFrame(
        {
            "path": sub.paths,
            "view": store.config.view,
            "store": str(store_path),  # which judged store: several may share a view
            "true": true,
            "true_is_unknown": unknown,
            "pred": p["pred_name"],
            "confidence": p["confidence"],
            "open_score": p["open_score"],
            "is_unknown": p["is_unknown"],
            "nearest_prototypes": [";".join(n) for n in p["nearest_prototypes"]],
        }
    )
    for i, c in enumerate(bundle.class_names):
        df[f"p_{c}"] = p["proba"][:, i]
    thr = image_threshold(bundle) if per_crop is not None else getattr(bundle.open, "threshold_", None)
    extras = {
        "y": y,
        "unknown": unknown,
        "true": true,
        "threshold": thr,
        "sha256": judged_sha,
        **{k: p[k] for k in ("proba", "open_score", "attention", "embedding", "g")},
    }
    return metrics, df, extras


def per_image(predictor: Predictor, store: FeatureStore, sub, p: dict, *row_arrays):
    """Crop rows -> images: (the batch's rows of each image's first crop, the per-image predictions,
    `row_arrays` taken at those rows)."""
    from leakstore.model.predict import aggregate_images

    image = store.image_rows()[sub.rows]
    _, pi = aggregate_images(p, image, predictor.bundle.class_names, image_threshold(predictor.bundle))
    first = pi.pop("first_row")
    return sub.subset(first), pi, tuple(a[first] for a in row_arrays)


def evaluate_unseen(
    predictor: Predictor, store_path, known_score: np.ndarray, split: str = "test"
) -> tuple[dict, dict, np.ndarray]:
    """Rows of a store of other images, per label, against `known_score` (the known rows' open-set
    scores): -> ({label: metrics}, {label: scores}, the judged images' SHA-256 digests). Every row of an
    outside store counts; of the training store itself, the `split` rows only."""
    bundle = predictor.bundle
    store = FeatureStore.open(store_path)
    predictor.check_store(store)
    feats = store.load(predictor.inputs)
    # a store of outside images is judged on all its rows; the training store itself (a generator held
    # out with --unknown-labels) on `split`, since its other rows trained the model
    own = _is_training_store(store, bundle)
    has_splits = (feats.splits >= 0).any()
    sel = (in_split(feats.splits, split) if own and has_splits else np.ones(len(feats), bool)) & (
        store.view_index()[feats.rows] == 0
    )
    if not sel.any():
        raise InputError(f"--unseen store {store_path} has no {split} rows (pass --split all to use every row)")
    sub = feats.subset(sel)
    p = predictor.predict(sub)
    if store.has_crops:
        sub, p, _ = per_image(predictor, store, sub, p)
    names = np.array([store.class_names[lab] if lab >= 0 else "(unlabelled)" for lab in sub.labels], dtype=object)
    sha = store.read("sha256")[sub.rows]  # one row per image here; a crop store's first crops
    per, scores = {}, {}
    for g in sorted(set(names)):
        m = names == g
        called = p["pred_name"][m]
        top, count = np.unique(called, return_counts=True)
        row = {
            "store": str(store_path),
            "n": int(m.sum()),
            "known_class": g in bundle.class_names,
            "flagged": float(p["is_unknown"][m].mean()),
            "called_most": str(top[count.argmax()]),
            "called_most_share": float(count.max() / m.sum()),
            # images the networks trained on (copies keep their source's digest): an outside source that
            # holds them is partly in-sample
            "trained_images": trained_judged(bundle, sha[m]),
            "outlier_photos": outlier_photos_judged(bundle, sha[m]),
        }
        if g in bundle.class_names:
            row["called_correctly"] = float((called == g).mean())
        else:
            o = open_set(known_score, p["open_score"][m])
            row.update({"auroc": o.get("auroc"), "fpr_at_95tpr": o.get("fpr_at_95tpr")})
            row["auroc_ci"] = auroc_ci(known_score, p["open_score"][m])
        per[g] = row
        scores[g] = p["open_score"][m]
    return per, scores, sha


def known_scores(ex: dict) -> np.ndarray:
    """The open-set scores of a store's known rows (from `evaluate_store`'s extras)."""
    return ex["open_score"][ex["y"] >= 0]


def view_keys(results: list, stores: list) -> list[str]:
    """A name for each evaluated store: its view ('jpeg:75'), or 'view (store)' where two share one."""
    views = [r["view"] for r in results]
    return [v if views.count(v) == 1 else f"{v} ({Path(st).name})" for v, st in zip(views, stores)]


def against_views(per: dict, scores: dict, results: list, extras: list, stores: list) -> dict:
    """Each outside generator's AUROC against the known images of every further store (the same test
    images re-saved, resized, ...), in `per` as `auroc_by_view`, and their means. Outside images
    that are JPEGs set against clean PNG known images partly measure the format; against the known
    images re-saved as JPEG they measure the generator (docs/results)."""
    if len(results) < 2:
        return {}
    known = dict(zip(view_keys(results, stores)[1:], map(known_scores, extras[1:])))
    for g, v in per.items():
        if v.get("auroc") is not None:
            v["auroc_by_view"] = {k: open_set(ks, scores[g]).get("auroc") for k, ks in known.items()}
    means = {}
    for k in known:
        a = [v["auroc_by_view"][k] for v in per.values() if v.get("auroc_by_view", {}).get(k) is not None]
        means[k] = float(np.mean(a)) if a else None
    return {"mean_auroc_by_view": means}


def _ci_text(over: str) -> str:
    if not over.startswith("images"):  # whole prompts/sources resampled
        return f"95 % bootstrap intervals over {over} (the outside sources' AUROC: over images)"
    return (
        f"95 % bootstrap intervals over {over}, Wilson's interval for the known flag rate: they hold for "
        "more images of these prompts and sources, not for others"
    )


def evaluate(run_dir, stores: list, out=None, device: str = DEFAULT_DEVICE, split: str = "test", unseen=()) -> dict:
    import pandas as pd

    from leakstore.pipelines.report import write_report

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.load(run_dir, device)
    bundle = predictor.bundle
    results, frames, extras = [], [], []
    for s in stores:
        m, df, ex = evaluate_store(predictor, s, split)
        results.append(m)
        frames.append(df)
        extras.append(ex)
    summary = {
        "model": str(run_dir),
        "classes": bundle.class_names,
        "unknown_labels": bundle.meta.get("training", {}).get("unknown_labels", []),
        "builtin_encoder": bool(bundle.featurize.vae.builtin),
        "encoder": bundle.featurize.vae.name
        + (" (BUILT-IN DEMO ENCODER: random weights, not a real VAE)" if bundle.featurize.vae.builtin else ""),
        "inputs": [
            f"residual ({bundle.featurize.residual_bins} bins)" if n == "residual" else n for n in predictor.inputs
        ],
        "networks": bundle.cfg.members,
        "final": bundle.cfg.final,  # trained on its store's test split too
        "open_threshold": float(bundle.open.threshold_) if bundle.open is not None else None,
        "open_scorer": bundle.cfg.open_scorer,
        "open_components": list(bundle.open.components_) if bundle.open is not None else [],
        "open_fallback": getattr(bundle.open, "fallback_", "") or None,
        "open_temperature": float(bundle.open.temperature) if bundle.open is not None else None,
        "discriminant": float(bundle.cfg.discriminant) if bundle.fuses else None,  # its weight in attribution
        "companion": str(Path(run_dir) / SMALL) if bundle.small is not None else None,  # one-window images
        # the threshold set on the user's own known images (leakstore calibrate), and the judged stores among them
        "calibration": bundle.meta.get("calibration"),
        "calibrated_on_judged": calibrated_on(bundle, [*stores, *unseen]),
        # what training's out-of-fold threshold expects on new prompts (pooled and one prompt at a time),
        # to read a few prompts' flag rate against; none once calibrate moved the threshold
        "threshold_expects": threshold_expects(bundle),
        "views": results,
        "robustness": [
            {
                "view": key,  # the store's view, or "view (store)" where two judged stores share one
                "store": r["store"],
                "macro_auc": r["closed"]["macro_auc"],
                "macro_auc_ci": r["closed"].get("macro_auc_ci"),
                "top1": r["closed"]["top1"],
                "networks_macro_auc": r.get("closed_networks", {}).get("macro_auc"),
                "open_auroc": r["open"].get("auroc"),
                "known_flagged": r["open"].get("known_flagged"),
                "known_flagged_ci": r["open"].get("known_flagged_ci"),
            }
            for r, key in zip(results, view_keys(results, [r["store"] for r in results]))
        ],
        "ci": _ci_text(results[0]["ci_over"]),
        # judged images the networks trained on (a store of copies of training images): in-sample figures;
        # filled below, once per store however many ways it was judged
        "in_sample": {},
        # outside images that were outlier photographs of the unknown flag (make-outliers --photos)
        "outlier_sample": {},
    }
    judged = {}  # store -> the SHA-256 digests of the images judged in it, as a judged store and as --unseen
    for r, ex in zip(results, extras):
        judged.setdefault(r["store"], []).append(ex["sha256"])
    if unseen:
        first = extras[0]
        known_score = known_scores(first)
        per, scores = {}, {}
        for u in unseen:
            pu, su, sha = evaluate_unseen(predictor, u, known_score, split)
            for g in pu:  # the same label in two stores: keep both, named by store
                key = g if g not in per else f"{g} ({Path(u).name})"
                per[key], scores[key] = pu[g], su[g]
            judged.setdefault(str(u), []).append(sha)
            photos = sum(v["outlier_photos"] for v in pu.values())
            if photos:  # the same for the photographs the unknown flag fitted as outliers
                summary["outlier_sample"][str(u)] = photos
        aucs = [v["auroc"] for v in per.values() if v.get("auroc") is not None]
        summary["unseen"] = {
            "known_rows": f"{split} rows of the model's classes in {stores[0]}",
            "per_generator": per,
            "mean_auroc": float(np.mean(aucs)) if aucs else None,
            "min_auroc": float(np.min(aucs)) if aucs else None,
            **against_views(per, scores, results, extras, stores),
        }
        extras[0]["unseen_scores"] = scores
    for store_path, shas in judged.items():  # the warning line and the report's in-sample paragraph name it
        trained = trained_judged(bundle, np.concatenate(shas))  # distinct images: none counted twice
        if trained:
            summary["in_sample"][store_path] = trained
    with atomic_path(out / "predictions.parquet") as tmp:
        pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
    write_json(out / "metrics.json", summary, indent=2, default=float)
    write_report(out, summary, bundle, extras[0])
    summary["report"] = str(out / "report.html")
    return summary
