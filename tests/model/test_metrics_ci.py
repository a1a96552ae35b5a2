"""95 % intervals of the evaluation figures (model/metrics.py): the unit resampled, the width, the
degenerate cases."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from leakstore.model.metrics import (
    auroc_ci,
    bootstrap_ci,
    group_rate_interval,
    group_rate_spread,
    macro_auc,
    proportion_ci,
    rank_auc,
    resampling_units,
)


def test_rank_auc_is_roc_auc_with_ties():
    rng = np.random.default_rng(0)
    for n in (7, 94, 3000):
        pos = rng.random(n) < 0.3
        pos[:2] = [True, False]
        score = np.round(rng.normal(size=n) + pos, 1)  # rounded: many ties
        assert rank_auc(pos, score) == pytest.approx(roc_auc_score(pos, score), abs=1e-12)


def test_units_are_groups_when_there_are_enough_of_them():
    units, name = resampling_units([f"p{i % 6}" for i in range(30)])
    assert name == "6 groups" and len(set(units)) == 6
    units, name = resampling_units([f"p{i % 3}" for i in range(30)])
    assert name.startswith("images (3 groups") and len(set(units)) == 30
    units, name = resampling_units([""] * 30)  # folders without a manifest: no groups
    assert name == "images" and len(set(units)) == 30


def _classes(n, rng, strength=1.2):
    y = rng.integers(0, 3, n)
    return y, np.eye(3)[y] * strength + rng.normal(0, 1, (n, 3))


def test_the_interval_holds_the_figure_and_narrows_with_more_images():
    rng = np.random.default_rng(1)
    widths = []
    for n in (60, 1500):
        y, proba = _classes(n, rng)
        value = macro_auc(y, proba, range(3))
        lo, hi = bootstrap_ci(lambda i, y=y, proba=proba: macro_auc(y[i], proba[i], range(3)), np.arange(n))
        assert lo <= value <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # about 1/sqrt(25) as wide


def test_resampling_whole_prompts_widens_the_interval_when_prompts_differ():
    """Some prompts are easy, some hard: resampling images alone understates the spread."""
    rng = np.random.default_rng(2)
    ys, ps, gs = [], [], []
    for k in range(8):
        y, proba = _classes(40, rng, strength=rng.uniform(0, 3))  # how separable depends on the prompt
        ys.append(y)
        ps.append(proba)
        gs += [f"p{k}"] * 40
    y, proba, g = np.concatenate(ys), np.concatenate(ps), np.array(gs)

    def stat(i):
        return macro_auc(y[i], proba[i], range(3))

    lo_i, hi_i = bootstrap_ci(stat, np.arange(len(y)))
    units, name = resampling_units(g)
    lo_g, hi_g = bootstrap_ci(stat, units)
    assert name == "8 groups" and hi_g - lo_g > 1.5 * (hi_i - lo_i)


def test_draws_that_lose_a_class_are_skipped_and_too_few_units_give_none():
    y = np.array([0] * 49 + [1])  # one image of class 1: about a third of the draws lose it
    proba = np.c_[1 - np.linspace(0, 1, 50), np.linspace(0, 1, 50)]
    assert bootstrap_ci(lambda i: macro_auc(y[i], proba[i], range(2)), np.arange(50)) == [1.0, 1.0]
    # defined in about a quarter of the draws only: no interval rather than one from the few
    assert bootstrap_ci(lambda i: 1.0 if (i == 0).sum() >= 2 else float("nan"), np.arange(50)) is None
    assert bootstrap_ci(lambda i: 0.5, np.zeros(10)) is None  # one unit


def test_the_flag_rate_interval_is_not_zero_wide_at_zero():
    lo, hi = proportion_ci(np.zeros(94, bool), np.arange(94))
    assert lo == 0.0 and 0.03 < hi < 0.05  # Wilson: 0 of 94 is compatible with up to 3.9 %
    flags = np.arange(100) < 10
    lo, hi = proportion_ci(flags, np.arange(100))
    assert lo < 0.1 < hi
    lo, hi = proportion_ci(flags, np.repeat(np.arange(10), 10))  # grouped: a bootstrap over groups
    assert lo <= 0.1 <= hi


def test_the_open_set_interval_holds_the_auroc():
    rng = np.random.default_rng(3)
    known, unknown = rng.normal(1, 1, 200), rng.normal(0, 1, 40)
    value = roc_auc_score(np.r_[np.ones(200), np.zeros(40)], np.r_[known, unknown])
    lo, hi = auroc_ci(known, unknown)
    assert lo < value < hi and hi - lo < 0.3
    assert auroc_ci(known, unknown[:1]) is None


def test_a_prompts_flag_rate_spreads_wider_than_the_pooled_rates_interval():
    """Twenty prompts of 40 images, flagged 0 % on half of them and 10 % on the rest: the pooled 5 %
    has a narrow interval, one prompt at a time reads 0 % or 10 %."""
    groups = np.repeat([f"p{k}" for k in range(20)], 40)
    flags = np.zeros(800, bool)
    for k in range(10, 20):
        flags[k * 40 : k * 40 + 4] = True
    lo, hi = group_rate_interval(flags, groups)
    assert lo < 0.05 < hi and hi - lo < 0.06
    assert group_rate_spread(flags, groups) == (0.0, 0.1)
    # the percentiles are of the prompts, not of the images: a large prompt counts once
    big = np.r_[groups, np.repeat("huge", 400)]
    assert group_rate_spread(np.r_[flags, np.zeros(400, bool)], big) == (0.0, 0.1)
