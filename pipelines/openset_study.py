"""Leave-one-generator-out: how well would a model flag a generator it never saw?

    leakstore openset-study STORE.zarr --out runs/logo

For each known non-real generator g: train without g (a short schedule, `--epochs`), then score
g's rows as unknown against the other classes' rows with every open-set scorer (model/openset.py),
each fitted on the fold's training rows, scaled and thresholded on its known validation rows. The validation
AUROC (g's validation rows vs known validation rows) chooses the scorer; the
test AUROC (test rows, never used for a choice) is what it is worth. Writes study.json,
study.parquet (one row per generator and scorer), histograms and report.html in --out.
Folds are kept in --out/folds/<g>: a rerun reuses every finished fold.

`--unseen STORE` (repeatable): stores of generators outside the study's store (featurized with
the same settings), each label's test rows (every row when the store has no splits) scored by
every scorer of every fold against that fold's known test rows; reported as the mean AUROC over
folds beside the table, never used for the choice.

Two yardsticks come with the numbers:
- a supervised ceiling: one more model, trained WITH every generator (--out/supervised), and the
  one-vs-rest AUROC of its probability for g on the same rows. It says how separable g is from
  the known classes at all with these features and this much data; an open-set score, which
  never saw g, is not expected to beat it.
- 95 % confidence intervals from a bootstrap over source groups (photographs, prompts) of the
  test split: crops of one photograph are not independent, so rows are resampled by group, and
  the same draw serves every fold (the interval of the mean holds the folds' correlation).
"""

from __future__ import annotations

import html
import json
import time
import warnings
from pathlib import Path

import numpy as np

from leakstore.config import DEFAULT_DEVICE, DEFAULT_STUDY_EPOCHS
from leakstore.errors import InputError
from leakstore.fsio import atomic_path, write_json, write_text
from leakstore.model.checkpoint import images_among, load_bundle, scorer_features
from leakstore.model.config import OPEN_SCORERS, ModelConfig
from leakstore.model.images import ImageGroups
from leakstore.model.metrics import open_set
from leakstore.model.openset import BASE_SCORERS, BLOCKS, FUSED, OpenSetScorer, select_rows
from leakstore.model.outliers import outlier_blocks, outlier_groups, outlier_rows, photo_keys
from leakstore.model.predict import predict
from leakstore.model.train import rows_in_use, train
from leakstore.store import FeatureStore

# settings that change only the open-set scorer, which the study refits on every fold itself
SCORER_ONLY = ("open_scorer", "open_temperature", "false_unknown_rate")


def _network_settings(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in SCORER_ONLY}


def _fold(store: FeatureStore, run: Path, cfg: ModelConfig, held: list[str], device: str, progress: bool) -> Path:
    """Train the fold's model unless a finished one with the same network settings is there (the
    open-set scorers are refitted from the fold's model by study_fold with the study's settings)."""
    meta = run / "model.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        if (
            m.get("training", {}).get("unknown_labels") == held
            and _network_settings(m.get("model_config", {})) == _network_settings(cfg.to_dict())
            and m.get("featurize_hash") == store.config.hash
        ):
            return run
    train(store.path, run, cfg, unknown_labels=held, device=device, overwrite=True, progress=progress)
    return run


def _scorers_for(blocks: dict) -> list[str]:
    """The offered open-set scorers (OPEN_SCORERS) that run as named on these blocks."""
    have = [b for b in BLOCKS if blocks.get(b) is not None]
    return [n for n in OPEN_SCORERS if all(BASE_SCORERS[c][0] in have for c in FUSED.get(n, (n,)))]


BOOTSTRAP = 1000


def _groups(store: FeatureStore, rows: np.ndarray) -> np.ndarray:
    """Each row's source group for the bootstrap; a row without one is its own group."""
    g = store.read("group")[rows]
    return np.array([str(x) or f"row:{r}" for x, r in zip(g, rows)], dtype=object)


def _unseen_rows(store: FeatureStore, study_store: FeatureStore) -> tuple[FeatureStore, np.ndarray]:
    """(store, rows) of an --unseen store: its test rows, every row when it has no splits."""
    if store.config.hash != study_store.config.hash:
        raise InputError(
            f"--unseen {store.path} was featurized with other settings than {study_store.path} "
            f"(config {store.config.hash} vs {study_store.config.hash}): featurize it with the same "
            "options (leakstore inspect shows them)"
        )
    splits = store.read("split")
    rows = np.flatnonzero((splits == 2) if (splits >= 0).any() else np.ones(len(splits), bool))
    if not len(rows):
        raise InputError(f"--unseen {store.path} has no test rows")
    return store, rows


def _unseen_keys(labels_per_store: list, paths: list) -> list:
    """Per --unseen store, label -> the name its column goes by: the label itself, or
    '<store name>/<label>' for a label that more than one store holds (so none overwrites another)."""
    seen: dict[str, int] = {}
    for labels in labels_per_store:
        for lab in set(labels):
            seen[lab] = seen.get(lab, 0) + 1
    return [lambda lab, stem=Path(path).stem: f"{stem}/{lab}" if seen[lab] > 1 else lab for path in paths]


def _loader(cache: dict | None):
    """store.load(names, rows=...) that remembers what it read in `cache` (None: no memory): every
    fold of a study reads the same features of the same stores."""

    def load(st: FeatureStore, names: tuple, rows=None):
        if cache is None:
            return st.load(names, rows=rows)
        key = (str(st.path), names, None if rows is None else np.asarray(rows).tobytes())
        if key not in cache:
            cache[key] = st.load(names, rows=rows)
        return cache[key]

    return load


def study_fold(
    store: FeatureStore,
    run: Path,
    g: str,
    extra_unknown: list[str],
    device: str = DEFAULT_DEVICE,
    cfg: ModelConfig | None = None,
    unseen=(),
    cache: dict | None = None,
    outliers=None,
) -> list[dict]:
    """Every open-set scorer on one fold: AUROC etc. on validation and test rows, with the
    scorer settings of `cfg` (default: the fold model's own); `unseen`: `_unseen_rows` of outside
    stores, whose labels get a column `unseen:<label>` each (AUROC against the known test rows);
    `cache`: a dict shared by the folds of one study, so that each store is read once; `outliers`:
    an outlier store (model/outliers.py), its rows not made from the held-out generators."""
    b = load_bundle(run, device)
    cfg = cfg or b.cfg
    load = _loader(cache)
    oblocks = (
        outlier_blocks(b.net, *outlier_rows(outliers, store, [g] + list(extra_unknown)), load=load)
        if outliers
        else None
    )
    # every scorer is compared, so every block the store can give them
    names_in = tuple(dict.fromkeys(b.feature_names + scorer_features(store.config)))
    feats = load(store, names_in)
    outside = []
    for st, rows in unseen:
        f = load(st, names_in, rows)
        outside.append(
            (
                predict(b, f, device)["blocks"],
                np.array([st.class_names[v] if v >= 0 else "(unlabelled)" for v in f.labels], dtype=object),
                st.image_rows()[f.rows],
            )
        )
    keys = _unseen_keys([lab for _, lab, _ in outside], [st.path for st, _ in unseen])
    groups = _groups(store, feats.rows)
    image = store.image_rows()[feats.rows]  # with crops, every figure is per image: its crops' mean score
    p = predict(b, feats, device)
    names = store.class_names
    to_model = np.array([b.class_names.index(n) if n in b.class_names else -1 for n in names])
    y = to_model[feats.labels]
    held = feats.labels == names.index(g)
    other_unknown = np.isin(feats.labels, [names.index(u) for u in extra_unknown])
    # the rows the fold's own open-set scorer was fitted (training) and calibrated (validation) on
    use = np.where(
        feats.splits == 0,
        rows_in_use(store, feats.rows, b.cfg, "fit"),
        rows_in_use(store, feats.rows, b.cfg, "calibration"),
    )
    known = (y >= 0) & ~other_unknown & use
    held &= use
    rows, blocks = [], p["blocks"]
    tr, va, te = (known & (feats.splits == s) for s in (0, 1, 2))
    for name in _scorers_for(blocks):
        sc = OpenSetScorer(
            method=name,
            false_unknown_rate=cfg.false_unknown_rate,
            temperature=cfg.open_temperature,
            outlier_components=cfg.outlier_components,
        ).fit(select_rows(blocks, tr), y[tr], select_rows(blocks, va), outliers=oblocks)
        thr = sc.threshold_
        if store.has_crops:
            thr = sc.set_image_threshold(select_rows(blocks, va), image[va]).image_threshold_
        s = sc.score_samples(blocks)
        row = {"generator": g, "scorer": name, "components": "+".join(sc.components_)}
        for split, code in (("val", 1), ("test", 2)):
            (sk, gk), (su, gu) = (
                _image_means(s, image, m, groups)
                for m in (known & (feats.splits == code), held & (feats.splits == code))
            )
            o = open_set(sk, su)
            row.update(
                {
                    f"{split}_auroc": o.get("auroc", np.nan),
                    f"{split}_fpr95": o.get("fpr_at_95tpr", np.nan),
                    f"{split}_known_flagged": float((sk < thr).mean()) if len(sk) else np.nan,
                    f"{split}_unknown_flagged": float((su < thr).mean()) if len(su) else np.nan,
                    f"n_{split}_unknown": int(len(su)),
                }
            )
            row[f"_{split}_scores"] = (sk, su, gk, gu)  # for the bootstraps; popped by the study
        s_te = _image_means(s, image, te, groups)[0]
        for (blocks_u, labels_u, image_u), key in zip(outside, keys):
            su = sc.score_samples(blocks_u)
            for lab in sorted(set(labels_u)):
                sl = _image_means(su, image_u, labels_u == lab, labels_u)[0]
                row[f"unseen:{key(lab)}"] = open_set(s_te, sl).get("auroc", np.nan)
        rows.append(row)
    return rows


def _image_means(s: np.ndarray, image: np.ndarray, mask: np.ndarray, groups: np.ndarray):
    """(scores, groups) of the rows in `mask`, one per image (its crops' mean score): the rows
    themselves in a store without crops, where every row is its own image."""
    g = ImageGroups(image[mask])
    if len(g) == int(mask.sum()):
        return s[mask], groups[mask]
    return g.mean(s[mask]), groups[mask][g.first]


def supervised_ceiling(
    store: FeatureStore, run: Path, gens: list[str], extra_unknown: list[str], device: str = DEFAULT_DEVICE
) -> dict:
    """For each g, the model trained with g: AUROC of its probability of g, g's rows against the
    rows of every other known class (the same rows the open-set folds score), on val and test."""
    b = load_bundle(run, device)
    feats = store.load(b.feature_names)
    groups = _groups(store, feats.rows)
    image = store.image_rows()[feats.rows]
    p = predict(b, feats, device)["proba"]
    names = store.class_names
    use = rows_in_use(store, feats.rows, b.cfg, "fit")
    known = ~np.isin(feats.labels, [names.index(u) for u in extra_unknown]) & (feats.labels >= 0) & use
    out = {}
    for g in gens:
        col, mine = b.class_names.index(g), (feats.labels == names.index(g)) & use
        row = {}
        for split, code in (("val", 1), ("test", 2)):
            k, u = known & ~mine & (feats.splits == code), mine & (feats.splits == code)
            # known-ness = -p(g), so that the same open_set() (and bootstrap) read it like an open-set score
            row[f"{split}_auroc"] = open_set(
                _image_means(-p[:, col], image, k, groups)[0], _image_means(-p[:, col], image, u, groups)[0]
            ).get("auroc", np.nan)
        k, u = known & ~mine & (feats.splits == 2), mine & (feats.splits == 2)
        (sk, gk), (su, gu) = (_image_means(-p[:, col], image, m, groups) for m in (k, u))
        row["_scores"] = (sk, su, gk, gu)
        out[g] = row
    return out


def _weighted_aurocs(known, unknown, wk, wu) -> np.ndarray:
    """AUROC (known scored above unknown, ties half) under each row of weights: wk (D, known rows) and
    wu (D, unknown rows), D bootstrap draws as counts. The sort and the ties depend on the scores only,
    so they are made once and every draw is a weighted sum over them (D AUROCs, nan where a side
    weighs nothing)."""
    wk, wu = np.atleast_2d(np.asarray(wk, float)), np.atleast_2d(np.asarray(wu, float))
    if not len(known) or not len(unknown):
        return np.full(len(wk), np.nan)
    s = np.r_[known, unknown]
    order = np.argsort(s, kind="mergesort")
    _, start = np.unique(s[order], return_index=True)
    pad_k, pad_u = np.zeros((len(wk), len(unknown))), np.zeros((len(wu), len(known)))
    tie_k = np.add.reduceat(np.concatenate([wk, pad_k], 1)[:, order], start, axis=1)
    tie_u = np.add.reduceat(np.concatenate([pad_u, wu], 1)[:, order], start, axis=1)
    below_u = np.cumsum(tie_u, 1) - tie_u  # unknown weight strictly below each distinct score
    num = (tie_k * (below_u + 0.5 * tie_u)).sum(1)
    den = wk.sum(1) * wu.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _bootstrap_aurocs(per_key: dict, n: int, seed: int, chunk: int = 128):
    """per_key {key: (known scores, unknown scores, known groups, unknown groups)} -> (keys, (K, n)
    AUROCs) under n draws of the source groups with replacement, one draw shared by every key; None
    with fewer than two groups. Draws are weighed `chunk` at a time (memory: chunk x rows)."""
    all_groups = sorted({str(x) for v in per_key.values() for x in (*v[2], *v[3])})
    if len(all_groups) < 2:
        return None
    index = {gr: i for i, gr in enumerate(all_groups)}
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(all_groups), np.full(len(all_groups), 1 / len(all_groups)), size=n)
    keys = list(per_key)
    a = np.empty((len(keys), n))
    for i, k in enumerate(keys):
        known, unknown, gk, gu = per_key[k]
        ik = np.array([index[str(x)] for x in gk], dtype=np.int64)
        iu = np.array([index[str(x)] for x in gu], dtype=np.int64)
        for j in range(0, n, chunk):
            c = counts[j : j + chunk]
            a[i, j : j + chunk] = _weighted_aurocs(known, unknown, c[:, ik], c[:, iu])
    return keys, a


def group_bootstrap(per_gen: dict, n: int = BOOTSTRAP, seed: int = 0) -> tuple[dict, list]:
    """per_gen {g: (known scores, unknown scores, known groups, unknown groups)} on one split ->
    ({g: [lo, hi]}, [lo, hi] of the mean over g): 95 % percentile intervals of the AUROC when the
    split's source groups are drawn with replacement (one draw shared by every g)."""
    drawn = _bootstrap_aurocs(per_gen, n, seed)
    if drawn is None:
        return {g: [np.nan, np.nan] for g in per_gen}, [np.nan, np.nan]
    _, a = drawn  # (G, n)
    ci = lambda v: [float(x) for x in np.nanpercentile(v, [2.5, 97.5])] if np.isfinite(v).any() else [np.nan, np.nan]  # noqa: E731
    return {g: ci(a[i]) for i, g in enumerate(per_gen)}, ci(np.nanmean(a, 0) if np.isfinite(a).any() else a[0])


def choice_support(per_scorer: dict, n: int = BOOTSTRAP, seed: int = 0) -> dict:
    """per_scorer {scorer: {g: (known, unknown, known groups, unknown groups)}} on the validation
    split -> {scorer: share of draws in which it has the best mean AUROC over g}, the validation
    groups (photographs) drawn with replacement, one draw shared by every scorer and fold: how
    firmly the validation rows make the choice. {} with fewer than two groups."""
    keys = {(sc, g): v for sc, per_gen in per_scorer.items() for g, v in per_gen.items()}
    drawn = _bootstrap_aurocs(keys, n, seed)
    if drawn is None:
        return {}
    order, a = drawn
    scorers = list(per_scorer)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a scorer without a finite AUROC in a draw
        means = np.array([np.nanmean(a[[i for i, (sc, _) in enumerate(order) if sc == name]], 0) for name in scorers])
    means = np.where(np.isfinite(means), means, -np.inf)
    top = means >= means.max(0) - 1e-12  # (S, n): the best in each draw; a tie shares it
    return {name: float((top[i] / top.sum(0)).mean()) for i, name in enumerate(scorers)}


def openset_study(
    store_path,
    out,
    cfg: ModelConfig | None = None,
    *,
    epochs: int = DEFAULT_STUDY_EPOCHS,
    generators=None,
    unknown_labels=(),
    device: str = DEFAULT_DEVICE,
    progress: bool = True,
    ceiling: bool = True,
    unseen=(),
    outliers=None,
) -> dict:
    import pandas as pd

    from leakstore.device import resolve_device

    device = str(resolve_device(device))
    store = FeatureStore.open(store_path)
    cfg = (cfg or ModelConfig()).replace(epochs=epochs)
    real = store.attrs.get("real_class")
    extra = list(unknown_labels)
    gens = list(generators) if generators else [n for n in store.class_names if n != real and n not in extra]
    bad = [g for g in gens if g not in store.class_names or g == real]
    if bad or len(gens) < 1:
        raise InputError(
            f"--generators {bad or gens}: give non-real classes of {store.path} "
            f"({', '.join(n for n in store.class_names if n != real)})"
        )
    outside = [_unseen_rows(FeatureStore.open(u), store) for u in unseen]
    photos = np.zeros(0, np.uint64)
    if outliers is not None:  # a store that cannot serve fails now, not after the first fold
        photos = photo_keys(outlier_groups(*outlier_rows(outliers, store)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0, rows, cache = time.perf_counter(), [], {}
    for i, g in enumerate(gens):
        if progress:
            print(f"[{i + 1}/{len(gens)}] without {g}", flush=True)
        run = _fold(store, out / "folds" / g, cfg, [g] + extra, device, progress)  # outliers: scorers only
        rows += study_fold(store, run, g, extra, device, cfg, outside, cache, outliers)
    sup = {}
    if ceiling:
        if progress:
            print("[supervised] every generator known: the ceiling", flush=True)
        sup = supervised_ceiling(
            store, _fold(store, out / "supervised", cfg, extra, device, progress), gens, extra, device
        )
    scores = {(r["generator"], r["scorer"]): r.pop("_test_scores") for r in rows}
    val_scores: dict = {}
    for r in rows:
        val_scores.setdefault(r["scorer"], {})[r["generator"]] = r.pop("_val_scores")
    df = pd.DataFrame(rows)
    table = (
        df.groupby("scorer", sort=False)
        .agg(
            mean_val_auroc=("val_auroc", "mean"),
            min_val_auroc=("val_auroc", "min"),
            mean_test_auroc=("test_auroc", "mean"),
            min_test_auroc=("test_auroc", "min"),
            mean_test_fpr95=("test_fpr95", "mean"),
            test_known_flagged=("test_known_flagged", "mean"),
        )
        .reset_index()
    )
    unseen_cols = [c for c in df.columns if c.startswith("unseen:")]
    unseen_out = None
    if unseen_cols:  # reported beside the table, never part of the choice
        means = df.groupby("scorer", sort=False)[unseen_cols].mean()
        unseen_out = {
            "stores": [str(st.path) for st, _ in outside],
            "note": "mean over folds of each scorer's AUROC, each label's test rows against the fold's "
            "known test rows; not used for the choice",
            "per_scorer": {sc: {c.split(":", 1)[1]: float(v) for c, v in r.items()} for sc, r in means.iterrows()},
            # outside images that were outlier photographs of every fold's scorer: their AUROC is in-sample
            "outlier_photos": {
                str(st.path): n for st, r in outside if (n := images_among(st.read("sha256")[r], photos))
            },
        }
    # the choice: best mean validation AUROC, ties broken by the minimum; never the test split
    best = table.sort_values(["mean_val_auroc", "min_val_auroc"], ascending=False).iloc[0]["scorer"]
    ci, mean_ci = group_bootstrap({g: scores[(g, best)] for g in gens})
    chosen = {
        "per_generator": {
            g: {
                "test_auroc": float(df[(df.generator == g) & (df.scorer == best)].test_auroc.iloc[0]),
                "test_ci95": ci[g],
            }
            for g in gens
        },
        "mean_test_auroc": float(table.set_index("scorer").loc[best, "mean_test_auroc"]),
        "mean_test_ci95": mean_ci,
    }
    ceiling_out = None
    if sup:
        sci, smean = group_bootstrap({g: sup[g].pop("_scores") for g in gens})
        ceiling_out = {
            "run": str(out / "supervised"),
            "per_generator": {g: {**sup[g], "test_ci95": sci[g]} for g in gens},
            "mean_test_auroc": float(np.mean([sup[g]["test_auroc"] for g in gens])),
            "mean_test_ci95": smean,
        }
    summary = {
        "store": str(store.path),
        "generators": gens,
        "also_held_out": extra,
        "epochs": epochs,
        "model_config": cfg.to_dict(),
        "chosen_on": "mean validation AUROC",
        "chosen": best,
        "scorers": table.to_dict(orient="records"),
        "chosen_test": chosen,
        "confidence_intervals": f"95 % group bootstrap over test source groups, {BOOTSTRAP} draws",
        "choice_support": {
            "note": f"share of {BOOTSTRAP} draws of the validation source groups in which each "
            "scorer has the best mean validation AUROC",
            "per_scorer": choice_support(val_scores),
        },
        "supervised_ceiling": ceiling_out,
        "unseen": unseen_out,
        "outliers": None if outliers is None else str(outliers),
        "seconds": round(time.perf_counter() - t0, 1),
        "builtin_encoder": bool(store.config.vae.builtin),
    }
    with atomic_path(out / "study.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    write_json(out / "study.json", summary, indent=2, default=float)
    _report(out, summary, df, scores, best)
    summary["report"] = str(out / "report.html")
    return summary


def _f3(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def _report(out: Path, summary: dict, df, scores: dict, best: str) -> None:
    from leakstore.pipelines.html import img, page
    from leakstore.pipelines.report import plot_open_scores

    gens = summary["generators"]
    chosen, sup = summary["chosen_test"]["per_generator"], summary["supervised_ceiling"]
    title = lambda g: (
        f"without {g}: AUROC {chosen[g]['test_auroc']:.3f}"  # noqa: E731
        + (f" (supervised {sup['per_generator'][g]['test_auroc']:.3f})" if sup else "")
    )
    plot_open_scores(
        out / "histograms.png", {title(g): scores[(g, best)][:2] for g in gens}, best, known_label="known (test)"
    )
    ci = lambda c: f"{_f3(c[0])}&ndash;{_f3(c[1])}"  # noqa: E731
    head = "".join(f"<th>{html.escape(g)}</th>" for g in gens)
    body = ""
    for r in summary["scorers"]:
        per = "".join(
            f"<td>{_f3(df[(df.generator == g) & (df.scorer == r['scorer'])].test_auroc.iloc[0])}</td>" for g in gens
        )
        mark = ' style="font-weight:bold"' if r["scorer"] == best else ""
        body += (
            f"<tr{mark}><td>{html.escape(r['scorer'])}</td><td>{_f3(r['mean_val_auroc'])}</td><td>{_f3(r['min_val_auroc'])}</td>"
            f"<td>{_f3(r['mean_test_auroc'])}</td><td>{_f3(r['min_test_auroc'])}</td><td>{_f3(r['mean_test_fpr95'])}</td>"
            f"<td>{_f3(r['test_known_flagged'])}</td>{per}</tr>"
        )
    ct = summary["chosen_test"]
    body += (
        f'<tr class="ci"><td>{html.escape(best)}: 95 % CI</td><td></td><td></td><td>{ci(ct["mean_test_ci95"])}</td>'
        f"<td></td><td></td><td></td>" + "".join(f"<td>{ci(chosen[g]['test_ci95'])}</td>" for g in gens) + "</tr>"
    )
    if sup:
        sp = sup["per_generator"]
        body += (
            '<tr class="sup"><td>supervised ceiling (trained with '
            f"g)</td><td>{_f3(np.mean([sp[g]['val_auroc'] for g in gens]))}</td>"
            f"<td>{_f3(min(sp[g]['val_auroc'] for g in gens))}</td><td>{_f3(sup['mean_test_auroc'])}</td>"
            f"<td>{_f3(min(sp[g]['test_auroc'] for g in gens))}</td><td></td><td></td>"
            + "".join(f"<td>{_f3(sp[g]['test_auroc'])}</td>" for g in gens)
            + "</tr>"
        )
        body += (
            '<tr class="sup"><td>supervised: 95 % '
            f"CI</td><td></td><td></td><td>{ci(sup['mean_test_ci95'])}</td><td></td><td></td><td></td>"
            + "".join(f"<td>{ci(sp[g]['test_ci95'])}</td>" for g in gens)
            + "</tr>"
        )
    sup_text = (
        ""
        if not sup
        else "<p><b>Supervised ceiling</b>: a model trained <i>with</i> every generator, scored by its probability "
        "of g "
        "on the same rows (g against every other known class). It says how separable g is at all with these "
        "features and this much data; a score that never saw g is not expected to reach it.</p>"
    )
    warn = (
        '<p class="warn">BUILT-IN DEMO ENCODER (random weights, not a real VAE): these numbers show the pipeline '
        "runs, not how well generators are told apart.</p>"
        if summary["builtin_encoder"]
        else ""
    )
    body = f"""{warn}
<p>Store <code>{html.escape(summary["store"])}</code>; each generator held out in turn, a model trained for
{summary["epochs"]} epochs without it; its rows scored as unknown against the known classes' rows.
{_outliers_line(summary)}
Chosen on the mean <b>validation</b> AUROC: <b>{html.escape(best)}</b>. Test columns are never used for a choice.
{html.escape(support_line(summary))}</p>
<table><tr><th>scorer</th><th>mean val AUROC</th><th>min val</th><th>mean test AUROC</th><th>min test</th>
<th>test FPR@95%TPR</th><th>known test flagged</th>{head}</tr>{body}</table>
<p>Per-generator columns: test AUROC. Known test flagged: share of known test images below the unknown threshold
(called unknown),
calibrated on validation data (asked: {summary["model_config"]["false_unknown_rate"]:.0%}).
Intervals: {html.escape(summary["confidence_intervals"])} (crops of one photograph move together).</p>
{sup_text}{_unseen_table(summary, best)}
{img(out / "histograms.png")}"""
    write_text(out / "report.html", page("Leave-one-generator-out open-set study", body))


def _outliers_line(summary: dict) -> str:
    o = summary.get("outliers")
    return (
        ""
        if not o
        else f" Outlier exposure from <code>{html.escape(o)}</code> (the scorers that take an 'other' "
        "class; each fold without the copies of its held-out generator)."
    )


def support_line(summary: dict) -> str:
    """How firmly validation made the choice, in words: the share of bootstrap draws of the
    validation photographs in which the chosen scorer (and the runners-up) came out best."""
    per = (summary.get("choice_support") or {}).get("per_scorer") or {}
    if not per:
        return ""
    ranked = sorted(((v, k) for k, v in per.items() if v >= 0.005), reverse=True)  # what rounds to 1 % or more
    others = ", ".join(f"{k} {v:.0%}" for v, k in ranked if k != summary["chosen"])
    return (
        f"Drawing the validation source groups (photographs, prompts) again ({BOOTSTRAP} bootstrap draws), "
        f"{summary['chosen']} comes out best "
        f"in {per.get(summary['chosen'], 0.0):.0%} of them" + (f"; {others}." if others else ".")
    )


def _unseen_table(summary: dict, best: str) -> str:
    """The --unseen stores: each scorer's mean AUROC over folds per outside label (no choice made on it)."""
    u = summary.get("unseen")
    if not u:
        return ""
    labels = sorted({lab for v in u["per_scorer"].values() for lab in v})
    bold = ' style="font-weight:bold"'
    rows = "".join(
        f"<tr{bold if sc == best else ''}><td>{html.escape(sc)}</td>"
        + "".join(f"<td>{_f3(v.get(lab))}</td>" for lab in labels)
        + "</tr>"
        for sc, v in u["per_scorer"].items()
    )
    stores = ", ".join(f"<code>{html.escape(x)}</code>" for x in u["stores"])
    warn = "".join(
        f"<p class='warn'><b>In-sample:</b> <code>{html.escape(st)}</code> holds {n} photograph"
        f"{'s' if n != 1 else ''} the folds' unknown flag was fitted on as outliers (--outliers): its "
        "figures overstate how the flag meets new photographs.</p>"
        for st, n in (u.get("outlier_photos") or {}).items()
    )
    return (
        f"<h2>Generators outside the study's store</h2>{warn}<p>{stores}: each label's rows scored by every fold's "
        "scorers against that fold's known test rows, AUROC averaged over folds. <b>Not used for the choice</b>: "
        "a check on generators no decision was made on.</p>"
        "<table><tr><th>scorer</th>"
        + "".join(f"<th>{html.escape(lab)}</th>" for lab in labels)
        + f"</tr>{rows}</table>"
    )
