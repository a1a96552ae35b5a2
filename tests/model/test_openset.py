"""Open-set scorers: scikit-learn estimators, the fused scorer, and a planted store where only an
input-aware score can see the unseen generator."""

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from leakstore.model.checkpoint import load_bundle
from leakstore.model.config import ModelConfig
from leakstore.model.metrics import open_set
from leakstore.model.openset import ClassGaussian, MaxColumn, OpenSetScorer
from leakstore.model.predict import predict
from leakstore.model.train import train
from leakstore.store import FeatureStore
from tests.synthetic import CFG_RESIDUAL, planted_store

FAST = ModelConfig(width=8, embed_dim=16, epochs=6, batch_size=32, renoise=False, members=1)


@parametrize_with_checks([ClassGaussian(), MaxColumn(), MaxColumn(negate=True)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def blobs(seed, n=100, centres=(0, 4, -4), d=5):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(c, 1, (n, d)) for c in centres]), np.repeat(np.arange(len(centres)), n)


def test_class_gaussian_sees_the_gap_between_classes_that_a_single_density_covers():
    """Known classes at -4 and +4: a point at 0 lies between them, inside their pooled spread."""
    X, y = blobs(0, centres=(-4, 4))
    gap = np.random.default_rng(1).normal(0, 1, (100, 5))
    Xv, _ = blobs(2, centres=(-4, 4))
    per_class = ClassGaussian().fit(X, y)
    pooled = ClassGaussian().fit(X)
    auc = lambda m: open_set(m.score_samples(Xv), m.score_samples(gap))["auroc"]  # noqa: E731
    assert auc(per_class) > 0.99 and auc(pooled) < 0.6


def test_class_distances_are_the_squared_mahalanobis_distances_to_each_class_mean():
    X, y = blobs(4, d=7)
    X[:, 1] = 3 * X[:, 0] + 0.1 * X[:, 1]  # correlated features: the precision is far from diagonal
    m = ClassGaussian().fit(X, y)
    Xq = np.random.default_rng(5).normal(0, 3, (40, 7))
    D = (Xq - m.mean_) / m.scale_
    want = np.stack([np.einsum("nd,de,ne->n", D - mu, m.precision_, D - mu) for mu in m.means_], 1)
    np.testing.assert_allclose(m.class_distances(Xq), want, rtol=1e-8, atol=1e-8)


def test_fused_scorer_threshold_follows_validation_and_flags_by_the_most_alarmed_component():
    X, y = blobs(0)
    Xv, yv = blobs(1)
    far_a = np.random.default_rng(3).normal(12, 1, (50, 5))  # unknown in block a only
    blocks = lambda a, b: {"periodicity": a, "pixel_spectrum": b, "proba": np.full((len(a), 3), 1 / 3)}  # noqa: E731
    sc = OpenSetScorer(method="fused-pixel", false_unknown_rate=0.1).fit(blocks(X, X), y, blocks(Xv, Xv))
    assert set(sc.components_) == {"confidence", "periodicity", "spectrum"} and sc.fallback_ == ""
    assert abs(sc.val_flagged_ - 0.1) < 0.02
    assert (sc.predict(blocks(far_a, Xv[:50])) == -1).mean() > 0.95  # alarmed through the periodicity alone
    with pytest.raises(Exception, match="residual"):
        OpenSetScorer(method="residual").fit({"embedding": X, "residual": None}, y)


def _heavy_and_light(n, rng, unknown=False):
    """Two known classes. Periodicity: class means apart, Student-t noise (heavy tails), the same for
    unknown images (no signal). Confidence: light-tailed, clearly lower for unknown images."""
    y = rng.integers(0, 2, n)
    per = rng.standard_t(2, size=(n, 16))
    per[:, 0] += np.where(y == 1, 2.0, -2.0)
    p = rng.uniform(0.5, 0.75, n) if unknown else rng.uniform(0.8, 1.0, n)
    return {"proba": np.stack([p, 1 - p], 1), "periodicity": per}, y


def test_a_heavy_tailed_component_does_not_hide_the_signal_of_another():
    """Each component is scaled by its own lower tail on known validation rows. Scaled by spread
    (median / interquartile range) the heavy-tailed component's known outliers ran the minimum:
    AUROC 0.92 and 5.5 % of these unknown images flagged at the 5 % threshold (measured)."""
    rng = np.random.default_rng(0)
    (tr, y), (va, _) = _heavy_and_light(3000, rng), _heavy_and_light(1000, rng)
    (known, _), (unknown, _) = _heavy_and_light(1000, rng), _heavy_and_light(1000, rng, unknown=True)
    sc = OpenSetScorer(method="fused-period", temperature=0.0).fit(tr, y, va)
    assert sc.components_ == ("confidence", "periodicity")
    assert open_set(sc.score_samples(known), sc.score_samples(unknown))["auroc"] > 0.99
    assert (sc.predict(unknown) == -1).mean() > 0.95
    assert (sc.predict(known) == -1).mean() < 0.08


def test_the_tail_scale_falls_back_on_a_flat_tail_and_on_constant_scores():
    from leakstore.model.openset import _tail_scale

    assert _tail_scale(np.r_[np.zeros(50), np.arange(1.0, 51.0)]) > 0  # flat lower tail: the IQR scale
    assert _tail_scale(np.ones(40)) == 1.0
    assert _tail_scale(np.arange(10.0)) == pytest.approx(4.5 - np.quantile(np.arange(10.0), 0.25))  # small: a quartile
    big = np.random.default_rng(0).normal(size=2000)
    assert _tail_scale(big) == pytest.approx(np.median(big) - np.quantile(big, 0.01))


@pytest.fixture(scope="module")
def residual_only_unknown(tmp_path_factory):
    """gen-c has exactly gen-a's latents and spectra, and differs only in the residual vector,
    which no known class needs (their residuals are alike)."""
    d = tmp_path_factory.mktemp("residual_only")
    classes = ("real", "gen-a", "gen-b", "gen-c")
    planted_store(d / "s.zarr", classes=classes, per_class=60, cfg=CFG_RESIDUAL, residual_strength=0.0)
    g = FeatureStore.open(d / "s.zarr", mode="r+").group
    labels = g["label"][:]
    a, c = np.flatnonzero(labels == 1), np.flatnonzero(labels == 3)
    for name in ("latent0", "latents", "spectra"):
        g[name][c[0] : c[-1] + 1] = g[name][a[0] : a[-1] + 1]
    res = g["residual"][:]
    res[c] += 1.5 * np.random.default_rng(7).normal(0, 1, res.shape[1])
    g["residual"][:] = res
    train(d / "s.zarr", d / "run", FAST.replace(open_scorer="fused-period"), unknown_labels=["gen-c"], progress=False)
    return d


def test_an_unknown_seen_only_in_statistics_the_classifier_ignores_is_flagged_by_the_input_aware_score(
    residual_only_unknown,
):
    d = residual_only_unknown
    b = load_bundle(d / "run")
    store = FeatureStore.open(d / "s.zarr")
    feats = store.load(b.feature_names)
    test = feats.subset(feats.splits == 2)
    p = predict(b, test)
    unk = test.labels == 3
    fused = open_set(p["open_score"][~unk], p["open_score"][unk])["auroc"]
    # the paper's class-agnostic KDE on the embedding and the residual alone, fitted on the same training rows
    tr = feats.subset((feats.splits == 0) & (feats.labels != 3))
    auroc = {}
    for m in ("kde", "residual"):
        v = OpenSetScorer(method=m).fit(predict(b, tr)["blocks"], tr.labels).score_samples(p["blocks"])
        auroc[m] = open_set(v[~unk], v[unk])["auroc"]
    assert fused > 0.9 and auroc["residual"] > 0.9, (fused, auroc)
    assert auroc["kde"] < 0.75, auroc


def test_the_fused_scorer_survives_the_checkpoint_exactly(residual_only_unknown):
    d = residual_only_unknown
    b1, b2 = load_bundle(d / "run"), load_bundle(d / "run")
    assert b1.open.components_ == ("confidence", "residual") and "residual" in b1.feature_names
    assert "periodicity" in b1.open.fallback_ and "confidence + residual" in b1.open.fallback_  # said, not silent
    assert "confidence + residual" in b1.meta["training"]["open_scorer"]["fallback"]
    feats = FeatureStore.open(d / "s.zarr").load(b1.feature_names)
    np.testing.assert_array_equal(predict(b1, feats)["open_score"], predict(b2, feats)["open_score"])


def test_the_default_open_scorer_falls_back_to_the_residual_on_a_store_without_periodicity():
    from leakstore.model.config import ModelConfig
    from leakstore.model.openset import components

    assert ModelConfig().open_scorer == "fused-period"
    assert components("fused-period", ["proba", "periodicity", "residual"]) == ("confidence", "periodicity")
    assert components("fused-period", ["proba", "residual"]) == ("confidence", "residual")
    assert components("fused-period", ["proba"]) == ("confidence",)


def test_fused_pixel_uses_the_pixel_cues_it_has_and_falls_back_without_them():
    from leakstore.model.openset import components

    assert components("fused-pixel", ["proba", "periodicity", "pixel_spectrum"]) == (
        "confidence",
        "periodicity",
        "spectrum",
    )
    assert components("fused-pixel", ["proba", "pixel_spectrum"]) == ("confidence", "spectrum")
    assert components("fused-pixel", ["proba", "residual"]) == ("confidence", "residual")


def test_the_soft_minimum_lies_within_t_log_n_below_the_minimum_and_tends_to_it():
    rng = np.random.default_rng(1)
    (tr, y), (va, _) = _heavy_and_light(600, rng), _heavy_and_light(300, rng)
    (x, _) = _heavy_and_light(200, rng, unknown=True)
    hard = OpenSetScorer(method="fused-period", temperature=0.0).fit(tr, y, va)  # temperature 0: the plain minimum
    comps = hard.component_scores(x)
    z = np.stack([(comps[c] - m) / s for c, m, s in zip(hard.components_, hard.centers_, hard.scales_)])
    np.testing.assert_array_equal(hard.score_samples(x), z.min(0))
    for t in (0.5, 1.0, 2.0):
        soft = OpenSetScorer(method="fused-period", temperature=t).fit(tr, y, va).score_samples(x)
        assert (soft <= z.min(0) + 1e-12).all() and (soft >= z.min(0) - t * np.log(2) - 1e-12).all()
    tiny = OpenSetScorer(method="fused-period", temperature=1e-6).fit(tr, y, va).score_samples(x)
    np.testing.assert_allclose(tiny, z.min(0), atol=1e-5)


def _two_weak_cues(n, rng, unknown=False):
    """Unknown images sit a little low on both components; neither alone separates them well."""
    y = rng.integers(0, 2, n)
    per = rng.normal(size=(n, 4))
    per[:, 0] += np.where(y == 1, 3.0, -3.0)
    p = rng.uniform(0.6, 1.0, n)
    if unknown:
        per[:, 1] += 1.5
        p = rng.uniform(0.5, 0.9, n)
    return {"proba": np.stack([p, 1 - p], 1), "periodicity": per}, y


def test_the_soft_minimum_adds_up_weak_evidence_that_the_minimum_ignores():
    rng = np.random.default_rng(2)
    (tr, y), (va, _) = _two_weak_cues(2000, rng), _two_weak_cues(1000, rng)
    (known, _), (unknown, _) = _two_weak_cues(1000, rng), _two_weak_cues(1000, rng, unknown=True)
    auc = {
        t: open_set(
            *(
                OpenSetScorer(method="fused-period", temperature=t).fit(tr, y, va).score_samples(b)
                for b in (known, unknown)
            )
        )["auroc"]
        for t in (0.0, 1.0)
    }
    assert auc[1.0] > auc[0.0] + 0.01, auc  # 0.780 against 0.758 when written


def test_a_saved_scorer_without_a_temperature_loads_as_the_plain_minimum():
    from leakstore.model.checkpoint import pack_scorer, unpack_scorer

    rng = np.random.default_rng(3)
    (tr, y), (va, _) = _heavy_and_light(400, rng), _heavy_and_light(200, rng)
    soft = OpenSetScorer(method="fused-period", temperature=1.0).fit(tr, y, va)
    arrays, meta = pack_scorer("open", soft)
    np.testing.assert_array_equal(unpack_scorer("open", meta, arrays).score_samples(va), soft.score_samples(va))


def test_the_open_scorer_takes_its_defaults_from_the_model_config_and_old_files_are_refused():
    import pytest

    from leakstore.errors import ConfigMismatchError, InputError
    from leakstore.model.config import ModelConfig

    cfg, opn = ModelConfig(), OpenSetScorer()
    assert (opn.method, opn.temperature, opn.false_unknown_rate, opn.random_state) == (
        cfg.open_scorer,
        cfg.open_temperature,
        cfg.false_unknown_rate,
        cfg.seed,
    )
    with pytest.raises(ConfigMismatchError, match="pre-release"):  # a model.json lacking settings: never guessed
        ModelConfig.from_dict({"width": 8})
    with pytest.raises(InputError, match="open_temperature = -1.0"):  # the caller's words: the field
        ModelConfig(open_temperature=-1.0)


def test_the_offered_scorers_are_few_built_here_and_retired_ones_fail_naming_the_release():
    """model.config names the offered open-set scorers without importing torch (the CLI's choices
    come from it); model.openset builds each; a retired one is refused in one line with its release."""
    import pytest

    from leakstore.errors import InputError
    from leakstore.model import openset
    from leakstore.model.config import OPEN_SCORERS, RETIRED_IN, RETIRED_OPEN_SCORERS, ModelConfig

    assert len(OPEN_SCORERS) <= 6 and not set(OPEN_SCORERS) & set(RETIRED_OPEN_SCORERS)
    assert set(OPEN_SCORERS) <= set(openset.BASE_SCORERS) | set(openset.FUSED)
    with pytest.raises(InputError, match=f"knn.*retired in leakstore {RETIRED_IN}"):
        ModelConfig(open_scorer="knn")
