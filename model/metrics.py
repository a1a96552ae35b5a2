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
