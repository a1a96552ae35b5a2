"""The unknown threshold from out-of-fold scores over the training groups (model/threshold.py)."""

import re

import numpy as np
from typer.testing import CliRunner

from leakstore.cli import app
from leakstore.model.checkpoint import load_bundle
from leakstore.model.config import ModelConfig
from leakstore.model.openset import OpenSetScorer, select_rows
from leakstore.model.predict import threshold_expects
from leakstore.model.threshold import fold_of_groups, set_out_of_fold_threshold, takes_out_of_fold
from leakstore.model.train import train
from tests.synthetic import planted_store


def _prompts(n_groups, seed, per=6, classes=3, dim=24):
    """Rows of `classes` classes on `n_groups` prompts: each prompt shifts all of its images alike
    (what a subject does to an image's statistics), so new prompts lie further from a fit than its own."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(7).normal(0, 2.0, (classes, dim))
    X, y, g = [], [], []
    for k in range(n_groups):
        shift = rng.normal(0, 1.0, dim)
        for c in range(classes):
            X.append(means[c] + shift + rng.normal(0, 1, (per, dim)))
            y += [c] * per
            g += [f"{seed}-p{k}"] * per
    return np.concatenate(X), np.array(y), np.array(g)


def test_folds_hold_whole_groups_and_are_balanced():
    g = np.repeat([f"p{i}" for i in range(11)], 3)
    f = fold_of_groups(g, 5, seed=0)
    assert all(len(set(f[g == k])) == 1 for k in set(g))
    sizes = np.bincount(f[::3], minlength=5)
    assert sizes.max() - sizes.min() <= 1


def test_the_out_of_fold_threshold_holds_on_new_prompts_where_the_in_sample_one_does_not():
    X, y, g = _prompts(24, seed=10)
    Xn, _, _ = _prompts(40, seed=11)  # new prompts of the same classes
    fit = np.isin(g, [f"10-p{k}" for k in range(20)])  # 20 training prompts, 4 validation ones
    blocks, new = {"features": X}, {"features": Xn}

    insample = OpenSetScorer(method="lda", false_unknown_rate=0.05).fit(
        {"features": X[fit]}, y[fit]
    )  # threshold on the rows it was fitted on
    flagged_in = float((insample.decision_function(new) < 0).mean())

    opn = OpenSetScorer(method="lda", false_unknown_rate=0.05).fit({"features": X[fit]}, y[fit], {"features": X[~fit]})
    assert takes_out_of_fold(opn)
    info = set_out_of_fold_threshold(opn, blocks, y, fit, ~fit, g)
    flagged_oof = float((opn.decision_function(new) < 0).mean())
    assert info["source"] == "out-of-fold" and info["folds"] == 20 and info["groups"] == 24  # MAX_FOLDS
    # measured: 0.103 and 0.046 (other seeds: 0.10-0.11 and 0.05-0.06)
    assert flagged_in > 0.085  # the in-sample threshold over-flags new prompts
    assert 0.02 <= flagged_oof <= 0.075 and flagged_oof < flagged_in - 0.025
    lo, hi = info["flag_rate_ci"]
    assert lo <= 0.05 <= hi and hi - lo < 0.1
    # prompt by prompt the rate strays further than the pooled rate's interval
    plo, phi = info["flag_rate_per_group"]
    assert plo <= lo and phi >= hi and plo < 0.05 < phi


def test_up_to_max_folds_groups_each_prompt_is_its_own_fold_and_no_seed_moves_the_threshold():
    X, y, g = _prompts(12, seed=3)
    fit = ~np.isin(g, ["3-p0", "3-p1"])
    thresholds = []
    for seed in (0, 1, 7):
        opn = OpenSetScorer(method="lda", false_unknown_rate=0.05).fit({"features": X[fit]}, y[fit])
        info = set_out_of_fold_threshold(opn, {"features": X}, y, fit, ~fit, g, seed=seed)
        assert info["folds"] == info["groups"] == 12
        thresholds.append(info["threshold"])
    assert thresholds[0] == thresholds[1] == thresholds[2]
    # seeded folds would have moved it: three groups per fold, drawn differently per seed
    drawn = []
    for seed in (0, 1, 7):
        opn = OpenSetScorer(method="lda", false_unknown_rate=0.05).fit({"features": X[fit]}, y[fit])
        drawn.append(set_out_of_fold_threshold(opn, {"features": X}, y, fit, ~fit, g, folds=4, seed=seed)["threshold"])
    assert len(set(drawn)) > 1


def test_with_views_the_summary_splits_the_flag_rate_between_images_and_their_views():
    X, y, g = _prompts(12, seed=5)
    rng = np.random.default_rng(0)
    # one degraded copy of every row (a training view): noisier, so further from the fit
    Xv = X + rng.normal(0, 1.5, X.shape)
    blocks = {"features": np.concatenate([X, Xv])}
    yy, gg = np.r_[y, y], np.r_[g, g]
    views = np.r_[np.zeros(len(y), bool), np.ones(len(y), bool)]
    fit = ~np.isin(gg, ["5-p0", "5-p1"])
    opn = OpenSetScorer(method="lda", false_unknown_rate=0.05).fit(select_rows(blocks, fit), yy[fit])
    info = set_out_of_fold_threshold(opn, blocks, yy, fit, ~fit, gg, views=views)
    a, v = info["flagged_as_given"], info["flagged_views"]
    assert abs((a + v) / 2 - 0.05) < 0.005  # one view per row: the asked rate is over both together
    assert v > a  # the degraded copies are flagged more often
    # without views marked, no split is claimed
    assert "flagged_views" not in set_out_of_fold_threshold(opn, blocks, yy, fit, ~fit, gg)


def test_training_sets_the_out_of_fold_threshold_for_stored_feature_scorers_only(tmp_path):
    store = planted_store(tmp_path / "s.zarr", per_class=40, chunk=16)
    n = store.n
    store.group["group"][:] = np.array([f"p{i % 10}" for i in range(n)], dtype=object).astype(store.read("group").dtype)
    fast = dict(width=8, embed_dim=16, epochs=2, batch_size=32, members=1)
    s = train(store.path, tmp_path / "lda", ModelConfig(open_scorer="lda", **fast), progress=False)
    t = s["open_scorer"]["threshold_from"]
    assert t["source"] == "out-of-fold" and t["groups"] == 10 and t["threshold"] == s["open_scorer"]["threshold"]
    lo, hi = t["flag_rate_per_group"]
    assert 0 <= lo <= hi <= 1
    # the CLI says both: the pooled rate's interval and one prompt's spread
    args = [
        "--open-scorer",
        "lda",
        "--width",
        "8",
        "--embed-dim",
        "16",
        "--epochs",
        "2",
        "--members",
        "1",
        "--no-progress",
    ]
    r = CliRunner().invoke(app, ["train", str(store.path), "--out", str(tmp_path / "cli"), *args])
    assert r.exit_code == 0, r.output
    assert re.search(r"out-of-fold scores over 10 prompts.*95 % CI .*one prompt at a time [\d.]+%-[\d.]+%", r.output)
    # evaluate reads a few prompts' flag rate against what the threshold expects, in text and report
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "cli"), str(store.path), "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    assert re.search(
        r"known flagged: 5.0% asked of new prompts, 95 % CI .*one prompt at a time \(out of fold over the 10", r.output
    )
    assert "the rate to expect on new prompts" in (tmp_path / "ev" / "report.html").read_text()
    out = ["--out", str(tmp_path / "p.parquet"), "--cluster", "1", "--no-progress"]
    r = CliRunner().invoke(app, ["score", str(tmp_path / "cli"), str(store.path), *out])
    assert r.exit_code == 0, r.output
    assert "of new prompts' known images, 95 % CI" in r.output and "one prompt at a time" in r.output
    bundle = load_bundle(tmp_path / "cli", "cpu")
    assert threshold_expects(bundle)["prompts"] == 10
    bundle.meta["calibration"] = {"rate": 0.05}  # a threshold calibrate moved expects nothing of training's
    assert threshold_expects(bundle) is None
    s = train(store.path, tmp_path / "fp", ModelConfig(open_scorer="fused-period", **fast), progress=False)
    assert s["open_scorer"]["threshold_from"] == {"source": "validation"}  # reads the network: not out-of-fold
