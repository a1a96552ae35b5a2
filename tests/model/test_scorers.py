import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from leakstore.model.scorers import ClassGMM, ClassKDE, DiagonalMahalanobis, OpenSetKDE


@parametrize_with_checks([DiagonalMahalanobis(), ClassGMM(n_components=1), ClassKDE(), OpenSetKDE(cv=2)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def blobs(seed=0, n=80, d=6):
    rng = np.random.default_rng(seed)
    X = np.r_[rng.normal(0, 1, (n, d)), rng.normal(3, 1, (n, d)), rng.normal(-3, 1, (n, d))]
    return X, np.repeat([0, 1, 2], n)


@pytest.mark.parametrize("est", [DiagonalMahalanobis(), ClassGMM(), ClassKDE()])
def test_closed_scorers_separate_blobs_and_calibrate(est):
    X, y = blobs()
    Xv, yv = blobs(1)
    est.fit(X, y).calibrate(Xv, yv)
    p = est.predict_proba(Xv)
    assert p.shape == (240, 3) and np.allclose(p.sum(1), 1)
    assert (est.predict(Xv) == yv).mean() > 0.97
    assert est.score_samples(Xv).shape == (240,)


def test_open_set_kde_threshold_and_far_points():
    X, _ = blobs()
    Xv, _ = blobs(1)
    o = OpenSetKDE(random_state=0).fit(X).set_threshold(Xv, 0.05)
    assert 0.0 <= (o.predict(Xv) == -1).mean() <= 0.1
    far = np.random.default_rng(2).normal(12, 1, (50, 6))
    assert (o.predict(far) == -1).all()
    assert o.score_samples(far).max() < o.score_samples(Xv).min()


def test_class_gmm_equals_sklearn_mixtures_and_keeps_no_sklearn_state():
    from sklearn.mixture import GaussianMixture

    X, y = blobs(n=60)
    Xv, _ = blobs(1, n=20)
    est = ClassGMM(n_components=3).fit(X, y)
    assert not any(hasattr(v, "get_params") for v in vars(est).values())  # only arrays are kept
    for c in range(3):
        g = GaussianMixture(n_components=3, covariance_type="diag", reg_covar=1e-3, random_state=0).fit(X[y == c])
        np.testing.assert_allclose(est.class_log_density(Xv)[:, c], g.score_samples(Xv), rtol=1e-8, atol=1e-8)
