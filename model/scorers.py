"""Scorers on embeddings, as scikit-learn estimators (keyword-only hyperparameters, `fit`
returns self, learned state ends in `_`, `score_samples` gives a log density).

They consume the model's gated embedding `z * sqrt(g)` (see `model.train.gated`), computed
the same way for every image, known or unknown.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, OutlierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


class _ClassDensity(ClassifierMixin, BaseEstimator):
    """Shared closed-set logic: per-class log densities -> probabilities, with an optional
    per-class affine calibration (multinomial logistic regression) fitted on validation data."""

    def class_log_density(self, X) -> np.ndarray:  # (N, K)
        raise NotImplementedError

    def calibrate(self, X, y) -> _ClassDensity:
        s = self.class_log_density(X)
        y = np.searchsorted(self.classes_, y)
        self.calib_mu_, self.calib_sd_ = s.mean(0), s.std(0) + 1e-6
        lr = LogisticRegression(C=1.0, max_iter=2000)
        lr.fit((s - self.calib_mu_) / self.calib_sd_, y)
        if len(lr.classes_) != len(self.classes_):
            return self  # a class missing from validation: keep the uncalibrated densities
        self.calib_coef_, self.calib_intercept_ = lr.coef_, lr.intercept_
        return self

    def _fit_targets(self, X, y):
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_, y = np.unique(y, return_inverse=True)
        self.calib_coef_ = None
        return X, y

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        s = self.class_log_density(X)
        if getattr(self, "calib_coef_", None) is not None:
            d = ((s - self.calib_mu_) / self.calib_sd_) @ self.calib_coef_.T + self.calib_intercept_
            return np.c_[-d / 2, d / 2] if d.shape[1] == 1 else d  # binary: one logit -> two
        return s

    def decision_function(self, X) -> np.ndarray:
        """(N, K) class scores; (N,) for two classes, as scikit-learn expects."""
        z = self._logits(X)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def predict_proba(self, X) -> np.ndarray:
        return softmax(self._logits(X), axis=1)

    def predict(self, X) -> np.ndarray:
        logits = self._logits(X)
        return self.classes_[np.argmax(logits, axis=1)]

    def score_samples(self, X) -> np.ndarray:
        """Log density under the equal-weight mixture of the class densities."""
        check_is_fitted(self)
        return logsumexp(self.class_log_density(X), axis=1) - np.log(len(self.classes_))


class DiagonalMahalanobis(_ClassDensity):
    """One diagonal Gaussian per class; variances shrunk towards the pooled variance by `reg`."""

    def __init__(self, *, reg: float = 0.1):
        self.reg = reg

    def fit(self, X, y):
        X, y = self._fit_targets(X, y)
        self.classes_idx_ = np.arange(len(self.classes_))
        pooled = X.var(0) + 1e-6
        self.means_ = np.stack([X[y == c].mean(0) for c in self.classes_idx_])
        self.vars_ = (
            np.stack(
                [
                    (1 - self.reg) * (X[y == c].var(0) if (y == c).sum() > 1 else pooled) + self.reg * pooled
                    for c in self.classes_idx_
                ]
            )
            + 1e-6
        )
        return self

    def class_log_density(self, X):
        check_is_fitted(self, "means_")
        X = validate_data(self, X, reset=False)
        d = (X[:, None, :] - self.means_[None]) ** 2 / self.vars_[None]
        return -0.5 * (d.sum(-1) + np.log(2 * np.pi * self.vars_).sum(-1)[None])


class ClassGMM(_ClassDensity):
    """A diagonal Gaussian mixture per class (at most `n_components`, fewer for small classes).

    scikit-learn's GaussianMixture fits each class; its weights, means and variances are then kept
    as plain arrays, padded to `n_components` (a padded component has weight 0), and the log
    density is computed here: a saved model holds no scikit-learn object state, so a later
    scikit-learn reads it the same."""

    def __init__(self, *, n_components: int = 3, reg_covar: float = 1e-3, random_state: int = 0):
        self.n_components, self.reg_covar, self.random_state = n_components, reg_covar, random_state

    def fit(self, X, y):
        X, y = self._fit_targets(X, y)
        k, d, m = len(self.classes_), X.shape[1], max(1, self.n_components)
        self.mix_log_weights_ = np.full((k, m), -np.inf)
        self.mix_means_, self.mix_vars_ = np.zeros((k, m, d)), np.ones((k, m, d))
        for c in range(k):
            g = GaussianMixture(
                n_components=max(1, min(m, int((y == c).sum()) // 2)),
                covariance_type="diag",
                reg_covar=self.reg_covar,
                random_state=self.random_state,
            ).fit(X[y == c])
            put_mixture(self, c, g.weights_, g.means_, g.covariances_)
        return self

    def class_log_density(self, X):
        """(N, K) log density of each row under each class's mixture."""
        check_is_fitted(self, "mix_means_")
        X = validate_data(self, X, reset=False)
        out = np.empty((len(X), len(self.mix_means_)))
        for c, (lw, mu, var) in enumerate(zip(self.mix_log_weights_, self.mix_means_, self.mix_vars_)):
            log_n = -0.5 * (
                (((X[:, None, :] - mu[None]) ** 2) / var[None]).sum(-1) + np.log(2 * np.pi * var).sum(-1)[None]
            )  # (N, M)
            out[:, c] = logsumexp(log_n + lw[None], axis=1)
        return out


def put_mixture(est: ClassGMM, c: int, weights, means, variances) -> None:
    """Write class c's mixture into a ClassGMM's arrays (in fit, and when loading a model saved with
    scikit-learn's mixture arrays): weights (n,), means (n, D), diagonal variances (n, D), n <= M."""
    n = len(weights)
    est.mix_log_weights_[c, :n] = np.log(weights)
    est.mix_means_[c, :n], est.mix_vars_[c, :n] = means, variances


class ClassKDE(_ClassDensity):
    """A Gaussian KDE per class (Scott's bandwidth on standardised features)."""

    def __init__(self, *, bandwidth: str | float = "scott"):
        self.bandwidth = bandwidth

    def fit(self, X, y):
        X, y = self._fit_targets(X, y)
        self.mu_, self.sd_ = X.mean(0), X.std(0) + 1e-6
        Z = (X - self.mu_) / self.sd_
        self.kdes_ = [KernelDensity(bandwidth=self.bandwidth).fit(Z[y == c]) for c in range(len(self.classes_))]
        return self

    def class_log_density(self, X):
        check_is_fitted(self, "kdes_")
        Z = (validate_data(self, X, reset=False) - self.mu_) / self.sd_
        return np.stack([k.score_samples(Z) for k in self.kdes_], 1)


class ThresholdMixin:
    """The unknown threshold of every open-set scorer (one API): `offset_` (scikit-learn's name; read
    as `threshold_`) is the score under which a row is called unknown, `set_threshold` puts it at the
    `false_unknown_rate` quantile of known rows' scores, `decision_function` is the score minus it and
    `predict` +1 (known) / -1 (unknown), scikit-learn's outlier convention."""

    def set_threshold(self, X_known, false_unknown_rate: float | None = None):
        rate = self.false_unknown_rate if false_unknown_rate is None else false_unknown_rate
        self.offset_ = float(np.quantile(self.score_samples(X_known), rate))
        return self

    @property
    def threshold_(self) -> float:
        return self.offset_

    def decision_function(self, X) -> np.ndarray:
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        return np.where(self.decision_function(X) >= 0, 1, -1)


class OpenSetKDE(ThresholdMixin, OutlierMixin, BaseEstimator):
    """Class-agnostic density of known-generator embeddings, for "unknown generator".

    Standardise, project on the top `n_components` principal axes (a KDE in 128-d is all
    tails), fit a Gaussian KDE whose bandwidth maximises cross-validated log likelihood.
    `set_threshold` picks the log density under which an image is called unknown, so that a
    share `false_unknown_rate` of known validation images would be.
    """

    def __init__(
        self,
        *,
        n_components: int = 16,
        bandwidths=None,
        cv: int = 5,
        max_points: int = 4000,
        false_unknown_rate: float = 0.05,
        random_state: int = 0,
    ):
        self.n_components, self.bandwidths, self.cv = n_components, bandwidths, cv
        self.max_points, self.false_unknown_rate, self.random_state = max_points, false_unknown_rate, random_state

    def _project(self, X):
        return ((X - self.mean_) / self.scale_) @ self.components_.T

    def fit(self, X, y=None):
        X = validate_data(self, X)
        rng = np.random.default_rng(self.random_state)
        if len(X) > self.max_points:
            X = X[rng.choice(len(X), self.max_points, replace=False)]
        self.mean_, self.scale_ = X.mean(0), X.std(0) + 1e-6
        Z = (X - self.mean_) / self.scale_
        k = max(1, min(self.n_components, Z.shape[1], Z.shape[0] - 1))
        _, _, vt = np.linalg.svd(Z - Z.mean(0), full_matrices=False)
        self.components_ = vt[:k]
        P = Z @ self.components_.T
        grid = self.bandwidths if self.bandwidths is not None else np.geomspace(0.05, 3.0, 16) * np.sqrt(k)
        folds = min(self.cv, len(P))
        if folds >= 2:
            search = GridSearchCV(KernelDensity(), {"bandwidth": list(grid)}, cv=folds).fit(P)
            self.bandwidth_ = float(search.best_params_["bandwidth"])
        else:
            self.bandwidth_ = float(grid[len(grid) // 2])
        self.points_ = P
        self.kde_ = KernelDensity(bandwidth=self.bandwidth_).fit(P)
        # provisional threshold from the (in-sample) training scores; set_threshold on validation data replaces it
        self.offset_ = float(np.quantile(self.kde_.score_samples(P), self.false_unknown_rate))
        return self

    def score_samples(self, X) -> np.ndarray:
        check_is_fitted(self, "kde_")
        return self.kde_.score_samples(self._project(validate_data(self, X, reset=False)))


CLOSED_SCORERS = {"mahalanobis": DiagonalMahalanobis, "gmm": ClassGMM, "kde": ClassKDE}
