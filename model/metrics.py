"""Closed-set and open-set metrics (plain numpy/scikit-learn, no plotting)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score, roc_curve


def closed_set(y: np.ndarray, proba: np.ndarray, class_names: list[str]) -> dict:
    """y (N,) in [0, K), proba (N, K). Macro one-vs-rest AUC over the classes present."""
    k = proba.shape[1]
    pred = proba.argmax(1)
    per_class = {}
    for c in range(k):
        pos = y == c
        if pos.any() and (~pos).any():
            per_class[class_names[c]] = float(roc_auc_score(pos, proba[:, c]))
    return {
        "n": int(len(y)),
        "macro_auc": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        "top1": float((pred == y).mean()) if len(y) else float("nan"),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(y) else float("nan"),
        "per_class_auc": per_class,
        "confusion": confusion_matrix(y, pred, labels=list(range(k))).tolist(),
    }


def open_set(known_score: np.ndarray, unknown_score: np.ndarray, known_correct: np.ndarray | None = None) -> dict:
    """Scores are 'known-ness' (log density: higher = more like a known generator).

    AUROC: unknown vs known; EER; FPR@95%TPR: share of unknown images accepted as known when 95 %
    of known images are accepted; overlap: shared area of the two score histograms; OSCR: area under
    correct-classification rate (known) vs false-positive rate (unknown accepted)."""
    if len(known_score) == 0 or len(unknown_score) == 0:
        return {"n_known": int(len(known_score)), "n_unknown": int(len(unknown_score))}
    y = np.r_[np.ones(len(known_score)), np.zeros(len(unknown_score))]
    s = np.r_[known_score, unknown_score]
    auroc = float(roc_auc_score(y, s))
    fpr, tpr, _ = roc_curve(y, s)
    eer_i = np.argmin(np.abs(fpr - (1 - tpr)))
    fpr95 = float(fpr[np.searchsorted(tpr, 0.95, side="left")])
    lo, hi = np.percentile(s, [0.5, 99.5])
    bins = np.linspace(lo, hi + 1e-9, 41)
    hk = np.histogram(np.clip(known_score, lo, hi), bins)[0] / len(known_score)
    hu = np.histogram(np.clip(unknown_score, lo, hi), bins)[0] / len(unknown_score)
    out = {
        "n_known": int(len(known_score)),
        "n_unknown": int(len(unknown_score)),
        "auroc": auroc,
        "eer": float((fpr[eer_i] + 1 - tpr[eer_i]) / 2),
        "fpr_at_95tpr": fpr95,
        "overlap": float(np.minimum(hk, hu).sum()),
    }
    if known_correct is not None:
        thr = np.sort(s)[::-1]
        ccr = np.array([(known_correct & (known_score >= t)).mean() for t in thr])
        fp = np.array([(unknown_score >= t).mean() for t in thr])
        out["oscr"] = float(np.trapezoid(np.r_[0, ccr], np.r_[0, fp]))
    return out


# ---------------------------------------------------------------- confidence intervals
MIN_GROUPS_TO_RESAMPLE = 5  # fewer prompts/sources than this: resample images (and say so)
CI_WORK = 2_000_000  # draws x rows per interval: 1000 draws up to 2,000 rows, at least 100 draws beyond


def resampling_units(groups) -> tuple[np.ndarray, str]:
    """(N,) the unit each row is resampled with, and its name for the output: the rows' groups
    (prompts, sources) when at least MIN_GROUPS_TO_RESAMPLE distinct non-empty ones, else each row."""
    g = None if groups is None else np.array([str(x) for x in groups], dtype=str)
    n_groups = 0 if g is None or (g == "").any() else len(np.unique(g))
    if n_groups >= MIN_GROUPS_TO_RESAMPLE:
        return g, f"{n_groups} groups"
    return np.arange(len(g) if g is not None else 0).astype(str), "images" + (
        f" ({n_groups} groups: too few to resample)" if n_groups else ""
    )


def bootstrap_ci(stat, units, draws: int | None = None, seed: int = 0) -> list[float] | None:
    """95 % percentile interval of `stat(idx)` (a figure of the rows `idx`) over resamples of whole
    `units` ((N,) the unit of each row) with replacement; draws where the figure is undefined (a
    class missing) are skipped. None with fewer than two units or when most draws are undefined."""
    uniq, inv = np.unique(np.asarray(units), return_inverse=True)
    if len(uniq) < 2:
        return None
    draws = draws or int(np.clip(CI_WORK // max(len(inv), 1), 100, 1000))
    order = np.argsort(inv, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(inv, minlength=len(uniq)))]
    rng = np.random.default_rng([seed, 0x636921])
    vals = []
    for _ in range(draws):
        pick = rng.integers(0, len(uniq), len(uniq))
        if len(uniq) == len(inv):  # one row per unit
            idx = order[pick]
        else:
            idx = np.concatenate([order[starts[p] : starts[p + 1]] for p in pick])
        v = stat(idx)
        if v is not None and np.isfinite(v):
            vals.append(v)
    if len(vals) < draws // 2:
        return None
    return [float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))]


def macro_auc(y: np.ndarray, proba: np.ndarray, classes) -> float:
    """Macro one-vs-rest AUC over `classes` (columns of `proba`); nan when one of them lacks
    positives or negatives in `y` (a resample that lost a class is not comparable)."""
    aucs = []
    for c in classes:
        pos = y == c
        if not pos.any() or pos.all():
            return float("nan")
        aucs.append(rank_auc(pos, proba[:, c]))
    return float(np.mean(aucs))


def rank_auc(pos: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of `score` for the True rows of `pos` against the others, from mid-ranks (ties count
    half): roc_auc_score's value without its input checks, for the thousands of bootstrap draws."""
    from scipy.stats import rankdata

    pos = np.asarray(pos, bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    r = rankdata(score)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_ci(known_score: np.ndarray, unknown_score: np.ndarray, draws: int | None = None, seed: int = 0):
    """95 % interval of the open-set AUROC, known and unknown images resampled each on its own."""
    known_score, unknown_score = np.asarray(known_score), np.asarray(unknown_score)
    if len(known_score) < 2 or len(unknown_score) < 2:
        return None
    n_k, n_u = len(known_score), len(unknown_score)
    draws = draws or int(np.clip(CI_WORK // (n_k + n_u), 100, 1000))
    rng = np.random.default_rng([seed, 0x61756369])
    y = np.r_[np.ones(n_k, bool), np.zeros(n_u, bool)]
    vals = [
        rank_auc(y, np.r_[known_score[rng.integers(0, n_k, n_k)], unknown_score[rng.integers(0, n_u, n_u)]])
        for _ in range(draws)
    ]
    return [float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))]


def proportion_ci(flags: np.ndarray, units) -> list[float] | None:
    """95 % interval of the share of True `flags`: Wilson's score interval when every row is its own
    unit (a bootstrap of 0 of 94 would claim 0-0 %), a bootstrap over the units otherwise."""
    flags = np.asarray(flags, bool)
    n = len(flags)
    if n == 0:
        return None
    if len(np.unique(np.asarray(units))) < n:
        return list(group_rate_interval(flags, units))
    z, p = 1.959963984540054, flags.mean()
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def group_rate_interval(flags: np.ndarray, groups, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval, over whole `groups` ((N,) each row's), of the share of True `flags`:
    the groups' counts resampled at once (the unknown threshold's interval over prompts, evaluate's
    over prompts or sources)."""
    uniq, inv = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    below = np.bincount(inv, weights=np.asarray(flags, float), minlength=len(uniq))
    count = np.bincount(inv, minlength=len(uniq)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(uniq), (n_boot, len(uniq)))
    rates = below[draws].sum(1) / count[draws].sum(1)
    return float(np.quantile(rates, 0.025)), float(np.quantile(rates, 0.975))


def group_rate_spread(flags: np.ndarray, groups) -> tuple[float, float]:
    """The 10th and 90th percentiles of the share of True `flags` within each of the `groups` ((N,)
    each row's): how far one prompt's flag rate strays from the pooled one. The interval above is of
    the pooled rate over many prompts; a batch of one or a few new prompts spreads this much wider
    (RealGen-dev: 0-12 % prompt by prompt where 5 % is asked of the pooled rows; docs/results)."""
    uniq, inv = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    rates = np.bincount(inv, weights=np.asarray(flags, float), minlength=len(uniq)) / np.bincount(inv)
    return float(np.quantile(rates, 0.1)), float(np.quantile(rates, 0.9))
