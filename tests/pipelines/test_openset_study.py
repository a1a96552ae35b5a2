import json

import numpy as np
import pandas as pd
import zarr
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from leakstore.cli import app
from leakstore.model.config import OPEN_SCORERS
from leakstore.pipelines.openset_study import _unseen_rows, _weighted_aurocs, group_bootstrap, study_fold
from leakstore.store import FeatureStore
from tests.synthetic import CFG_RESIDUAL, planted_store


def test_the_leave_one_out_study_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    planted_store(
        tmp_path / "s.zarr",
        classes=("real", "gen-a", "gen-b", "gen-c"),
        per_class=40,
        cfg=CFG_RESIDUAL,
        residual_strength=0.5,
    )
    # an outside store: the known generators on new rows, and gen-d, which no fold ever saw
    planted_store(
        tmp_path / "u.zarr",
        classes=("real", "gen-a", "gen-b", "gen-c", "gen-d"),
        per_class=20,
        seed=1,
        cfg=CFG_RESIDUAL,
        residual_strength=0.5,
    )
    args = [
        "openset-study",
        str(tmp_path / "s.zarr"),
        "--out",
        str(tmp_path / "logo"),
        "--epochs",
        "2",
        "--members",
        "2",
    ]
    r = CliRunner().invoke(app, args + ["--unseen", str(tmp_path / "u.zarr")])
    assert r.exit_code == 0, r.output
    u = json.loads((tmp_path / "logo" / "study.json").read_text())["unseen"]
    assert u["stores"] == [str(tmp_path / "u.zarr")] and "outside generators" in r.output
    assert u["outlier_photos"] == {}  # no outliers, no photographs to be in-sample on
    per = u["per_scorer"]  # AUROC of each label's rows against the known test rows
    assert set(per) <= set(OPEN_SCORERS) and all(
        set(v) == {"real", "gen-a", "gen-b", "gen-c", "gen-d"} for v in per.values()
    )
    # gen-d, which no fold saw, is flagged more than real, known in every fold
    assert per["kde"]["gen-d"] > per["kde"]["real"] and per["fused-lda"]["gen-d"] > per["fused-lda"]["real"], per
    assert "Generators outside the study" in (tmp_path / "logo" / "report.html").read_text()
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "logo" / "study.json").read_text())
    assert s["generators"] == ["gen-a", "gen-b", "gen-c"] and s["chosen_on"] == "mean validation AUROC"
    df = pd.read_parquet(tmp_path / "logo" / "study.parquet")
    scorers = {r["scorer"] for r in s["scorers"]}
    assert {"kde", "prototype", "lda", "fused-lda"} <= scorers <= set(OPEN_SCORERS) and s["chosen"] in scorers
    assert len(df) == 3 * len(scorers) and df.test_auroc.between(0, 1).all()
    best = max(s["scorers"], key=lambda r: (r["mean_val_auroc"], r["min_val_auroc"]))
    assert best["scorer"] == s["chosen"]  # chosen on validation, not on test
    support = s["choice_support"]["per_scorer"]  # how firmly: bootstrap over validation photographs
    assert set(support) == scorers and abs(sum(support.values()) - 1) < 1e-9 and support[s["chosen"]] > 0
    assert "bootstrap draws" in r.output and "bootstrap draws" in (tmp_path / "logo" / "report.html").read_text()
    sup = s["supervised_ceiling"]  # a model trained with every generator
    assert sorted(sup["per_generator"]) == ["gen-a", "gen-b", "gen-c"]
    assert (tmp_path / "logo" / "supervised" / "model.json").exists()
    for g, v in sup["per_generator"].items():
        assert 0 <= v["test_auroc"] <= 1 and v["test_ci95"][0] <= v["test_ci95"][1]
        lo, hi = s["chosen_test"]["per_generator"][g]["test_ci95"]
        assert 0 <= lo <= hi <= 1
    assert "supervised ceiling" in r.output and "95 % CI" in r.output
    page = (tmp_path / "logo" / "report.html").read_text()
    assert "data:image/png;base64" in page and "Supervised ceiling" in page
    assert "Leave-one-generator-out" in page and "chosen" in r.output
    stamp = (tmp_path / "logo" / "folds" / "gen-a" / "model.safetensors").stat().st_mtime_ns
    r = CliRunner().invoke(app, args + ["--json"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "logo" / "folds" / "gen-a" / "model.safetensors").stat().st_mtime_ns == stamp  # reused
    # scorer-only settings refit the scorers on the same fold models: nothing is retrained
    fused = {r["scorer"]: r["mean_val_auroc"] for r in s["scorers"]}
    r = CliRunner().invoke(app, args + ["--json", "--open-temperature", "0"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "logo" / "folds" / "gen-a" / "model.safetensors").stat().st_mtime_ns == stamp
    s0 = json.loads((tmp_path / "logo" / "study.json").read_text())
    assert s0["model_config"]["open_temperature"] == 0 and s["model_config"]["open_temperature"] == 1
    plain = {r["scorer"]: r["mean_val_auroc"] for r in s0["scorers"]}
    assert plain["kde"] == fused["kde"] and plain["lda"] == fused["lda"]  # one component: unchanged
    # the folds share what they read: each store once, and the same numbers as reading it afresh
    store = FeatureStore.open(tmp_path / "s.zarr")
    outside = [_unseen_rows(FeatureStore.open(tmp_path / "u.zarr"), store)]
    reads, load = [], FeatureStore.load
    monkeypatch.setattr(FeatureStore, "load", lambda self, *a, **k: reads.append(self.path) or load(self, *a, **k))
    cache, shared, fresh = {}, [], []
    for g in ("gen-a", "gen-b"):
        shared += study_fold(store, tmp_path / "logo" / "folds" / g, g, [], unseen=outside, cache=cache)
    assert len(reads) == 2 and len(cache) == 2
    for g in ("gen-a", "gen-b"):
        fresh += study_fold(store, tmp_path / "logo" / "folds" / g, g, [], unseen=outside)
    assert len(reads) == 6
    table = lambda rows: pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])  # noqa: E731
    assert len(shared) > 0 and table(shared).equals(table(fresh))


def test_the_weighted_auroc_matches_scikit_learn_with_sample_weights():
    rng = np.random.default_rng(0)
    for i in range(50):  # many ties, within each side and (every other time) across them
        k, u = rng.integers(0, 6, 25).astype(float), rng.integers(0, 6, 15) - 0.5 * (i % 2)
        wk, wu = rng.integers(0, 3, (4, 25)), rng.integers(1, 3, (4, 15))  # four draws weighed at once
        got = _weighted_aurocs(k, u, wk, wu)
        for d in range(4):
            want = roc_auc_score(np.r_[np.ones(25), np.zeros(15)], np.r_[k, u], sample_weight=np.r_[wk[d], wu[d]])
            assert abs(got[d] - want) < 1e-12


def test_the_bootstrap_resamples_source_groups_not_rows():
    rng = np.random.default_rng(1)
    groups = np.repeat([f"photo{i}" for i in range(10)], 4)
    # perfectly separated: every draw gives 1
    ci, mean_ci = group_bootstrap({"g": (np.ones(40), np.zeros(40), groups, groups)}, n=200)
    assert ci["g"] == [1.0, 1.0] and mean_ci == [1.0, 1.0]
    # the score is a per-photo constant (crops of one photograph move together): the interval is as
    # wide as 10 photos allow, far wider than 40 independent rows would give
    known = np.repeat(rng.normal(size=10), 4)
    unknown = np.repeat(rng.normal(size=10), 4)
    ci, _ = group_bootstrap({"g": (known, unknown, groups, groups)}, n=500)
    rows_ci, _ = group_bootstrap({"g": (known, unknown, np.arange(40).astype(str), np.arange(40).astype(str))}, n=500)
    assert ci["g"][1] - ci["g"][0] > 1.3 * (rows_ci["g"][1] - rows_ci["g"][0])


def test_an_unseen_store_featurized_otherwise_is_refused_before_any_training(tmp_path):
    from tests.synthetic import CFG

    planted_store(tmp_path / "s.zarr", per_class=20, cfg=CFG_RESIDUAL)
    planted_store(tmp_path / "u.zarr", per_class=20, cfg=CFG)
    r = CliRunner().invoke(
        app,
        [
            "openset-study",
            str(tmp_path / "s.zarr"),
            "--out",
            str(tmp_path / "logo"),
            "--unseen",
            str(tmp_path / "u.zarr"),
        ],
    )
    assert r.exit_code != 0 and "featurized with other settings" in r.output
    assert not (tmp_path / "logo" / "folds").exists()


def test_a_label_held_by_two_unseen_stores_gets_one_column_per_store():
    from leakstore.pipelines.openset_study import _unseen_keys

    a, b = _unseen_keys([np.array(["real", "gan"]), np.array(["real", "vae"])], ["/x/one.zarr", "/y/two.zarr"])
    assert [a("real"), a("gan"), b("real"), b("vae")] == ["one/real", "gan", "two/real", "vae"]


def test_choice_support_says_how_often_validation_photographs_make_the_same_choice():
    from leakstore.pipelines.openset_study import choice_support

    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(12)], 5)

    def fold(shift):  # known rows and unknown rows, `shift` apart, 60 rows each
        return rng.normal(shift, 1, 60), rng.normal(0, 1, 60), groups, groups

    firm = choice_support({"strong": {"a": fold(3.0), "b": fold(3.0)}, "weak": {"a": fold(0.2), "b": fold(0.2)}}, n=300)
    assert firm["strong"] > 0.99 and abs(sum(firm.values()) - 1) < 1e-9
    close = choice_support({"x": {"a": fold(1.0)}, "y": {"a": fold(1.05)}}, n=300)
    assert 0.1 < close["x"] < 0.9 and abs(close["x"] + close["y"] - 1) < 1e-9  # a near tie: no firm choice
    same = fold(1.0)
    assert choice_support({"x": {"a": same}, "y": {"a": same}}, n=50) == {"x": 0.5, "y": 0.5}  # a tie is shared
    assert (
        choice_support({"x": {"a": (np.ones(3), np.zeros(3), ["p"] * 3, ["p"] * 3)}}) == {}
    )  # one group: nothing to draw


def test_a_study_with_outliers_leaves_out_each_folds_own_copies_and_says_so(tmp_path, monkeypatch):
    import leakstore.pipelines.openset_study as study

    planted_store(tmp_path / "s.zarr", classes=("real", "gen-a", "gen-b", "gen-c"), per_class=30, cfg=CFG_RESIDUAL)
    # outlier rows "made from" gen-a and gen-b images, and photographs
    planted_store(tmp_path / "o.zarr", classes=("gen-a", "gen-b", "photo"), per_class=10, seed=3, cfg=CFG_RESIDUAL)
    o = zarr.open_group(str(tmp_path / "o.zarr"), mode="r+")  # the photo rows: crops of one photograph
    groups = [("photo:" + "0" * 64) if lab == 2 else str(g) for lab, g in zip(o["label"][:], o["group"][:])]
    o["group"][:] = np.asarray(groups, dtype=str)
    # an outside store whose images share that photograph's digest (planted rows all carry 0...0)
    planted_store(tmp_path / "u.zarr", classes=("real", "gen-d"), per_class=10, seed=4, cfg=CFG_RESIDUAL)
    seen = {}
    real_rows = study.outlier_rows

    def spy(path, store, exclude=(), seed=0):
        st, rows = real_rows(path, store, exclude, seed)
        seen[tuple(exclude)] = sorted({st.class_names[v] for v in st.read("label")[rows]})
        return st, rows

    monkeypatch.setattr(study, "outlier_rows", spy)
    reads, load = [], FeatureStore.load
    monkeypatch.setattr(FeatureStore, "load", lambda self, *a, **k: reads.append(str(self.path)) or load(self, *a, **k))
    r = CliRunner().invoke(
        app,
        [
            "openset-study",
            str(tmp_path / "s.zarr"),
            "--out",
            str(tmp_path / "logo"),
            "--epochs",
            "1",
            "--members",
            "1",
            "--no-ceiling",
            "--outliers",
            str(tmp_path / "o.zarr"),
            "--unseen",
            str(tmp_path / "u.zarr"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert f"{tmp_path / 'u.zarr'} holds 1 photograph the unknown flag was fitted on as outliers" in r.output
    assert seen[("gen-a",)] == ["gen-b", "photo"] and seen[("gen-b",)] == ["gen-a", "photo"]
    assert seen[("gen-c",)] == ["gen-a", "gen-b", "photo"]
    assert reads.count(str(tmp_path / "o.zarr")) == 1  # read once, each fold's rows cut from it
    s = json.loads((tmp_path / "logo" / "study.json").read_text())
    assert s["outliers"] == str(tmp_path / "o.zarr") and {"lda", "fused-lda"} <= {r["scorer"] for r in s["scorers"]}
    assert "Outlier exposure from" in (tmp_path / "logo" / "report.html").read_text()
    assert s["unseen"]["outlier_photos"] == {str(tmp_path / "u.zarr"): 1}  # one digest: one photograph
    assert "holds 1 photograph the folds" in (tmp_path / "logo" / "report.html").read_text()
