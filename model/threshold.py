"""The unknown threshold from out-of-fold scores over every training prompt.

A threshold set on the validation split alone is set on a handful of prompts (RealGen-dev: 3), and
a known image of a new prompt lies further from the fit than one of those, so on new prompts the flag
fires on more known images than asked (docs/results). So, where the open-set scorer reads only what the
store holds (the `lda` scorer on the stored features: no network whose training saw the rows), it
is refitted K times, each time without one fold of the groups (prompts), and every training and
validation row is scored by the fit that never saw its group. The threshold is the asked quantile
of these out-of-fold scores, in the units of the final scorer; the flag rate it implies on new
prompts comes with a bootstrap interval over groups (of the rate pooled over many prompts) and the
spread of the rate prompt by prompt (what a batch of one new prompt sees).

Up to MAX_FOLDS groups each is its own fold (leave one prompt out): no draw decides which prompts
are held out together, and each refit sees all but one prompt, as near to the final fit as a
held-out score gets. With five seeded folds over RealGen-dev's 16 prompts the image threshold moved
between -0.40 and -0.27 from one draw to the next (the JPEG 75 validation images flagged 11 % to
23 %); leave-one-prompt-out gives one value, at the lenient end (docs/results). More groups than
MAX_FOLDS: that many seeded folds, each holding out a twentieth or less.

Scorers that read the network's embedding keep the validation threshold: the network saw the
training rows, so their scores there are not out-of-fold (refitting the network per fold is what
`leakstore openset-study` does).
"""

from __future__ import annotations

import numpy as np

from leakstore.model.images import ImageGroups
from leakstore.model.metrics import group_rate_interval, group_rate_spread
from leakstore.model.openset import BASE_SCORERS, FEATURE_PARTS, OpenSetScorer, select_rows

NETWORK_FREE_BLOCKS = FEATURE_PARTS + ("features",)  # blocks read from the store, not from the network
MAX_FOLDS = 20  # up to this many groups: one fold per group (leave one group out)
MIN_GROUPS = 4  # fewer groups than this: keep the validation threshold


def takes_out_of_fold(opn: OpenSetScorer) -> bool:
    """Whether every component of the fitted scorer reads a block the network does not make."""
    return all(BASE_SCORERS[c][0] in NETWORK_FREE_BLOCKS for c in opn.components_)


def fold_of_groups(groups: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """(N,) fold index 0..folds-1 of each row: whole groups per fold, seeded, sizes within one group."""
    uniq, inv = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    order = np.random.default_rng([seed, 0x6F6F66]).permutation(len(uniq))
    fold = np.empty(len(uniq), np.int64)
    fold[order] = np.arange(len(uniq)) % folds
    return fold[inv]


def out_of_fold_scores(
    opn: OpenSetScorer,
    blocks: dict,
    y: np.ndarray,
    fit: np.ndarray,
    groups: np.ndarray,
    outliers: dict | None = None,
    outlier_groups: np.ndarray | None = None,
    folds: int = MAX_FOLDS,
    seed: int = 0,
) -> np.ndarray:
    """(N,) each row's open score (in `opn`'s units: its component centres, scales and soft minimum)
    from a copy of `opn` fitted on the `fit` rows of the other folds, and on the outlier rows not
    made from an image of this fold's groups. `groups` (N,): each row's group (its prompt)."""
    fold = fold_of_groups(groups, folds, seed)
    held_names = np.asarray(groups, dtype=str)
    out = np.full(len(y), np.nan)
    for f in range(folds):
        hold = fold == f
        if not hold.any():
            continue
        o = outliers
        if outliers is not None and outlier_groups is not None:
            keep = ~np.isin(np.asarray(outlier_groups, dtype=str), np.unique(held_names[hold]))
            o = select_rows(outliers, keep)
        est = OpenSetScorer(**opn.get_params()).fit(select_rows(blocks, fit & ~hold), y[fit & ~hold], outliers=o)
        out[hold] = opn.fuse(est.component_scores(select_rows(blocks, hold)))
    return out


def set_out_of_fold_threshold(
    opn: OpenSetScorer,
    blocks: dict,
    y: np.ndarray,
    fit: np.ndarray,
    judged: np.ndarray,
    groups: np.ndarray,
    image: np.ndarray | None = None,
    outliers: dict | None = None,
    outlier_groups: np.ndarray | None = None,
    folds: int = MAX_FOLDS,
    seed: int = 0,
    views: np.ndarray | None = None,
) -> dict | None:
    """Set `opn`'s threshold (and, with `image` (N,), its per-image threshold on the mean crop score)
    at its false-unknown rate over the out-of-fold scores of the training and `judged` rows. Returns
    what was done (for the training summary), or None when the scorer reads the network or there are
    fewer than MIN_GROUPS groups (the validation threshold stays). `views` (N,) marks training-view
    rows: the quantile is taken over images and their views together (what a user scores comes both
    ways), and the summary gives the share flagged of each (`flagged_as_given`, `flagged_views`)."""
    if not takes_out_of_fold(opn) or len(np.unique(np.asarray(groups, dtype=str)[fit | judged])) < MIN_GROUPS:
        return None
    rows = fit | judged
    sub = select_rows(blocks, rows)
    g = np.asarray(groups, dtype=str)[rows]
    n_folds = min(folds, len(np.unique(g)))
    z = out_of_fold_scores(opn, sub, np.asarray(y)[rows], fit[rows], g, outliers, outlier_groups, n_folds, seed)
    rate = opn.false_unknown_rate
    opn.offset_ = float(np.quantile(z, rate))
    lo, hi = group_rate_interval(z < opn.offset_, g, seed=seed)
    info = {
        "source": "out-of-fold",
        "folds": int(n_folds),
        "groups": int(len(np.unique(g))),
        "rows": int(rows.sum()),
        "threshold": opn.offset_,
        "flag_rate_ci": [lo, hi],
        "flag_rate_per_group": list(group_rate_spread(z < opn.offset_, g)),
    }
    zv, thr, is_view = z, opn.offset_, None if views is None else np.asarray(views, bool)[rows]
    if image is not None:
        per = ImageGroups(np.asarray(image)[rows])
        zv = zi = per.mean(z)
        gi = g[per.first]
        thr = opn.image_threshold_ = float(np.quantile(zi, rate))
        lo, hi = group_rate_interval(zi < opn.image_threshold_, gi, seed=seed)
        info.update(
            image_threshold=opn.image_threshold_,
            images=int(len(zi)),
            flag_rate_ci=[lo, hi],
            flag_rate_per_group=list(group_rate_spread(zi < opn.image_threshold_, gi)),
        )
        is_view = None if is_view is None else is_view[per.first]
    if is_view is not None and is_view.any() and (~is_view).any():
        info.update(
            flagged_as_given=float((zv[~is_view] < thr).mean()), flagged_views=float((zv[is_view] < thr).mean())
        )
    opn.oof_flag_lo_, opn.oof_flag_hi_ = info["flag_rate_ci"]
    return info


def record_validation_flagged(opn: OpenSetScorer, blocks: dict, rows: np.ndarray, image: np.ndarray | None) -> None:
    """What the threshold flags on the validation `rows` (`val_flagged_`; of whole images,
    `val_images_flagged_`, when `image` (N,) groups crops): the figure the training summary and the
    evaluation report give beside the asked rate. Train records it once its threshold is final, on
    the validation images as given, not their training views: the figure `evaluate --split val`
    gives."""
    if not np.any(rows):
        return
    val = opn.score_samples(select_rows(blocks, rows))
    opn.val_flagged_ = float((val < opn.offset_).mean())
    if image is not None and getattr(opn, "image_threshold_", None) is not None:
        per = ImageGroups(np.asarray(image)[rows])
        opn.val_images_flagged_ = float((per.mean(val) < opn.image_threshold_).mean())
