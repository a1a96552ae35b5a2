"""Open-set scoring: is an image from a generator the model never saw?

A class-agnostic density of the classifier's embedding (the paper's KDE) is weak here: the
embedding is trained to separate known classes, so an unseen generator lands on a known cluster
(docs/open-set.md). These scorers also look at what the classifier is unsure about and at what it may
discard (input statistics, the reconstruction residual):

    block        what                                              from
    embedding    gated embedding z * sqrt(g) (N, D)                the network
    proba        calibrated closed-set class probabilities (N, K)  the closed-set scorer
    prototypes   gate-weighted distances to every prototype        the network's head
    stats        per-channel mean and log std of the smallest-     the latents
                 timestep latent (N, 2C)
    residual     reconstruction-residual vector (N, F)             the store (--residual)
    periodicity  pixel-gradient phase profile (N, 2P)              the store (--period)
    pixel_spectrum  band powers of the pixel spectrum (N, 2B)      the store (--pixel-spectrum)
    noise_spectrum  the noise residual's 2-D spectrum (N, B*B)     the store (--noise-spectrum)
    cooccurrence  residual co-occurrences, colour, texture (N, F)  the store (--cooccurrence)
    features     every one of the six above that the model has,   stats and the store
                 side by side (N, sum)

Every base scorer is a scikit-learn estimator on one block (higher `score_samples` = more like a
known generator). `OpenSetScorer` scales each component by its own lower tail on known validation
rows and fuses them by a soft minimum (an image is about as unknown as its most alarmed component,
more so when several are alarmed; `temperature` 0: the plain minimum); its threshold
is the `false_unknown_rate` quantile of known validation images.

Outlier exposure (`train --outliers STORE`, made by `leakstore make-outliers`): images that are no
known generator's (photographs, copies through simulated decoders or another autoencoder) join the
`lda` scorer as more classes, one per kind (OUTLIER - k), so that "none of these" competes with the
known classes instead of every image being pushed into its nearest one. Each kind is fitted as
`outlier_components` classes (k-means on its rows): a kind is seldom one cloud (a decoder's copies of
six generators' images; photographs' smooth and textured crops), and a Gaussian class centred between
its clouds explains little near either (docs/results: two per kind ranked the outside sources 1.6-3.4
points higher against re-saved validation images and flagged fewer of those, held-out generators
unchanged).

The scorers a user chooses among are `model.config.OPEN_SCORERS` (each measured in docs/results);
the other names here are components they are built from.

"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from leakstore.errors import InputError
from leakstore.features import BY_NAME
from leakstore.model.config import OPEN_SCORERS, ModelConfig
from leakstore.model.images import ImageGroups
from leakstore.model.scorers import OpenSetKDE, ThresholdMixin


class _Scorer(ThresholdMixin, OutlierMixin, BaseEstimator):
    """A base scorer: `score_samples` (higher: more like the training data); `fit` leaves a
    provisional threshold at the `false_unknown_rate` quantile of the training scores
    (OpenSetScorer sets the real one on validation data)."""

    def _set_offset(self, X):
        return self.set_threshold(X)


class ClassGaussian(_Scorer):
    """Max over known classes of a Gaussian log density with one shared (Ledoit-Wolf shrunk)
    covariance, on standardised features: how close an image lies to its nearest known class,
    in the metric of within-class variation. Without y: one Gaussian for all rows."""

    def __init__(self, *, false_unknown_rate: float = 0.05):
        self.false_unknown_rate = false_unknown_rate

    def fit(self, X, y=None):
        X, _ = self._fit_gaussians(X, y)
        return self._set_offset(X)

    def _fit_gaussians(self, X, y):
        """Class means and the shared shrunk precision on standardised X -> (X, class index per row)."""
        if y is None:
            X = validate_data(self, X)
            y = np.zeros(len(X), dtype=int)
        else:
            X, y = validate_data(self, X, y)
            check_classification_targets(y)
        self.classes_, yi = np.unique(y, return_inverse=True)
        self.mean_, self.scale_ = X.mean(0), X.std(0) + 1e-6
        Z = (X - self.mean_) / self.scale_
        self.means_ = np.stack([Z[yi == k].mean(0) for k in range(len(self.classes_))])
        self.precision_ = LedoitWolf().fit(Z - self.means_[yi]).precision_
        return X, yi

    def class_distances(self, X) -> np.ndarray:
        """(N, K) squared Mahalanobis distances to each class mean."""
        check_is_fitted(self, "precision_")
        Z = (validate_data(self, X, reset=False) - self.mean_) / self.scale_
        # whitened by the precision's Cholesky factor (P = L L^T): |(z - m) L|^2 per class is N K D
        # multiply-adds after one N D^2 product, where the quadratic form on (N, K, D) differences
        # was N K D^2 (14 s per call on 4,392 rows of 437 features and 15 classes, one core)
        L = _root(self.precision_)
        W, M = Z @ L, self.means_ @ L
        out = np.empty((len(W), len(M)))
        for k, m in enumerate(M):
            out[:, k] = np.square(W - m).sum(1)
        return out

    def score_samples(self, X) -> np.ndarray:
        return -0.5 * self.class_distances(X).min(1)


def _root(precision: np.ndarray) -> np.ndarray:
    """L with L L^T = precision: its Cholesky factor, or, for a singular one (a class of one row), the
    eigenvector root with negative rounding-error eigenvalues set to zero."""
    try:
        return np.linalg.cholesky(precision)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh((precision + precision.T) / 2)
        return v * np.sqrt(np.clip(w, 0, None))


OUTLIER = -1  # the label of outlier-exposure rows in y (known classes are 0..K-1); outlier class k is OUTLIER - k


class ClassPosterior(ClassGaussian):
    """The largest known-class log posterior of a linear discriminant: class Gaussians with one shared
    (Ledoit-Wolf shrunk) covariance on standardised features, priors from the class counts.

    Rows labelled OUTLIER (or below it: OUTLIER - k is outlier class k) form more classes, one per
    kind of outlier; an image then scores low when one of these "none of the known classes" explains
    it better than any known one does, not only when it is far from all of them.
    Without outliers it is the discriminant's confidence: low between classes, where a generator
    that none of them made tends to land. Chosen on RealGen-dev's leave-one-generator-out
    validation rows (docs/results)."""

    def fit(self, X, y=None):
        X, yi = self._fit_gaussians(X, y)
        counts = np.bincount(yi, minlength=len(self.classes_)).astype(float)
        self.log_prior_ = np.log(counts / counts.sum())
        self.known_ = (self.classes_ > OUTLIER).astype(np.int8)
        if not self.known_.any():
            raise InputError("the lda open-set scorer got outlier rows only: it needs rows of known classes")
        return self._set_offset(X[self.known_[yi].astype(bool)])

    def log_posterior(self, X) -> np.ndarray:
        """(N, K) log posterior of every class (`classes_` order, outlier classes included)."""
        logit = -0.5 * self.class_distances(X) + self.log_prior_
        return logit - logsumexp(logit, axis=1, keepdims=True)

    def score_samples(self, X) -> np.ndarray:
        return self.log_posterior(X)[:, self.known_.astype(bool)].max(1)


class MaxColumn(_Scorer):
    """The largest column, or minus the smallest with `negate`: max class probability
    ("confidence", on `proba`) or minus the nearest prototype distance ("prototype", on
    `prototypes`). Nothing to learn but the provisional threshold."""

    def __init__(self, *, negate: bool = False, false_unknown_rate: float = 0.05):
        self.negate, self.false_unknown_rate = negate, false_unknown_rate

    def fit(self, X, y=None):
        X = validate_data(self, X)
        self.fitted_ = True
        return self._set_offset(X)

    def score_samples(self, X) -> np.ndarray:
        check_is_fitted(self, "fitted_")
        X = validate_data(self, X, reset=False)
        return -X.min(1) if self.negate else X.max(1)


# The components open-set scorers are built from: name -> (block it reads, estimator factory, description).
BASE_SCORERS = {
    "kde": (
        "embedding",
        lambda seed: OpenSetKDE(random_state=seed),
        "class-agnostic KDE of the embedding (the paper's)",
    ),
    "prototype": (
        "prototypes",
        lambda seed: MaxColumn(negate=True),
        "distance to the nearest prototype of the model's head",
    ),
    "confidence": ("proba", lambda seed: MaxColumn(), "largest calibrated class probability"),
    "residual": (
        "residual",
        lambda seed: ClassGaussian(),
        "nearest known class, Gaussian on the reconstruction residual",
    ),
    "periodicity": (
        "periodicity",
        lambda seed: ClassGaussian(),
        "nearest known class, Gaussian on the pixel periodicity profile",
    ),
    "spectrum": (
        "pixel_spectrum",
        lambda seed: ClassGaussian(),
        "nearest known class, Gaussian on the pixel spectrum's band powers",
    ),
    "lda": (
        "features",
        lambda seed: ClassPosterior(),
        "largest known-class posterior of a linear discriminant on the latent and pixel statistics "
        "side by side (with --outliers: an 'other' class competes)",
    ),
}
# fused scorers: the soft minimum of tail-matched components (those whose block the model has)
FUSED = {
    "fused-period": ("confidence", "periodicity"),
    "fused-pixel": ("confidence", "periodicity", "spectrum"),
    "fused-lda": ("confidence", "lda"),
    "fused": ("confidence", "residual"),  # not offered: what a fused scorer falls back to (FALLBACK)
}
# A fused scorer left with one component on a model without its input block falls back to another
# (fused-period on a store featurized with --period 0: confidence + residual). The fitted scorer
# records it (`fallback_`), the training summary and evaluate's metrics.json say it, train prints it.
FALLBACK = {"fused-period": "fused", "fused-pixel": "fused", "fused-lda": "fused"}
assert set(OPEN_SCORERS) <= set(BASE_SCORERS) | set(FUSED), "model.config.OPEN_SCORERS names a scorer not built here"
OUTLIER_SCORERS = ("lda",)  # the base scorers that take outlier-exposure rows as one more class
MIN_ROWS_PER_COMPONENT = 10  # an outlier kind with fewer rows per asked component stays one class


def split_outlier_kinds(X: np.ndarray, kind: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(len(kind),) int64 outlier classes: each kind's rows cut into `n` by k-means (seeded) on X
    standardised over all outlier rows, kind k's clusters numbered k * n + j; a kind with fewer than
    n * MIN_ROWS_PER_COMPONENT rows stays whole (class k * n). n = 1: the kinds themselves."""
    kind = np.asarray(kind, dtype=np.int64)
    if n <= 1 or not len(kind):
        return kind
    Z = (X - X.mean(0)) / (X.std(0) + 1e-6)
    out = kind * n
    for k in np.unique(kind):
        m = kind == k
        if m.sum() >= n * MIN_ROWS_PER_COMPONENT:
            out[m] += KMeans(n, n_init=4, random_state=seed).fit_predict(Z[m])
    return out


def takes_outliers(method: str) -> bool:
    """Whether open-set scorer `method` (base or fused) has a component that takes outlier rows."""
    return any(c in OUTLIER_SCORERS for c in FUSED.get(method, (method,)))


BLOCKS = (
    "embedding",
    "proba",
    "prototypes",
    "stats",
    "residual",
    "periodicity",
    "pixel_spectrum",
    "noise_spectrum",
    "cooccurrence",
    "features",
)
STORED_BLOCKS = tuple(b for b in BLOCKS if b in BY_NAME)  # read from the store's feature of that name
FEATURE_PARTS = ("stats",) + STORED_BLOCKS  # what the `features` block puts side by side


def stored_blocks(blocks, cfg) -> tuple[str, ...]:
    """The stored features that open-set blocks read (`features`: every stored one the model config
    `cfg` reads, as model.predict.feature_blocks puts them side by side)."""
    out = [p for b in blocks for p in (FEATURE_PARTS if b == "features" else (b,)) if b != "features" or cfg.uses(p)]
    return tuple(b for b in dict.fromkeys(out) if b in BY_NAME)


def components(method: str, available_blocks) -> tuple[str, ...]:
    """The base scorers `method` combines, given the blocks a model can provide."""
    if method in BASE_SCORERS:
        if BASE_SCORERS[method][0] not in available_blocks:
            raise InputError(
                f"open-set scorer {method!r} reads the {BASE_SCORERS[method][0]!r} block, which this "
                "model lacks (featurize with --residual for the residual, --period for the periodicity, "
                "--pixel-spectrum for the pixel spectrum); "
                "choose another --open-scorer"
            )
        return (method,)
    if method not in FUSED:
        raise InputError(f"unknown open-set scorer {method!r}; choose one of {', '.join(OPEN_SCORERS)}")
    comps = tuple(c for c in FUSED[method] if BASE_SCORERS[c][0] in available_blocks)
    if len(comps) < 2 and method in FALLBACK:
        return components(FALLBACK[method], available_blocks)
    return comps or ("confidence",)


def fallback(method: str, comps: tuple[str, ...]) -> str | None:
    """A line saying that `method` runs on other components than its own (`comps`, as `components`
    chose them for a model without some block), or None when it runs as named."""
    own = FUSED.get(method, (method,))
    if tuple(comps) == tuple(own):
        return None
    missing = [BASE_SCORERS[c][0] for c in own if c not in comps]
    return (
        f"open scorer {method} needs the {', '.join(missing)} feature(s), which this store lacks: "
        f"it runs as {' + '.join(comps)}"
    )


def select_rows(blocks: dict, rows) -> dict:
    """The same blocks for a subset of rows (a mask or indices); absent blocks stay None."""
    return {k: (None if v is None else v[rows]) for k, v in blocks.items()}


def channel_stats(latents) -> np.ndarray:
    """latents (N, T, C, h, w) -> (N, 2C) float64: mean and log std per channel of the smallest
    timestep (the least noised latent)."""
    z = latents[:, 0].float()
    return np.concatenate(
        [z.mean((2, 3)).double().numpy(), z.flatten(2).std(2).clamp_min(1e-6).log().double().numpy()], 1
    )


TAIL = 0.01  # each component's scale: its known validation median minus this quantile
TAIL_ROWS = 5  # ... and at least this many rows below it (the quantile rises on small sets)


class OpenSetScorer(ThresholdMixin, OutlierMixin, BaseEstimator):
    """Known-ness of an image from one or more base scorers, each on its block, fused by a soft
    minimum. `fit` takes a dict of blocks (N rows each).

    Each component is put on one scale by its own lower tail on known validation rows: (score -
    median) / (median - 1 % quantile), so -1 is where that component alone would call 1 % of known
    images unknown; the minimum then flags an image when any component sees it far out in that
    component's own tail. (Scaled by their spread instead, the heaviest-tailed component drove the
    minimum on known images and its false alarms hid the others' signal: docs/open-set.md.)

    `temperature` T: the components are fused by -T log sum exp(-z / T), a minimum that also
    counts the evidence of the other components (an image far out on two components scores
    lower than one far out on one); T = 0 is the plain minimum. T is in units of the tail scale
    (1: the 1 % tail's depth). `outlier_components`: classes per outlier kind (split_outlier_kinds).
    Defaults: ModelConfig's."""

    def __init__(
        self,
        *,
        method: str = ModelConfig.open_scorer,
        false_unknown_rate: float = ModelConfig.false_unknown_rate,
        random_state: int = ModelConfig.seed,
        temperature: float = ModelConfig.open_temperature,
        outlier_components: int = ModelConfig.outlier_components,
    ):
        self.method, self.false_unknown_rate, self.random_state = method, false_unknown_rate, random_state
        self.temperature, self.outlier_components = temperature, outlier_components

    def fit(self, blocks: dict, y, val_blocks: dict | None = None, outliers: dict | None = None):
        """Fit every component on training rows; scale them and set the threshold on validation
        rows (`val_blocks`; the training rows when none are given). `outliers`: blocks of
        outlier-exposure rows, one more class for the components that take one (`lda`)."""
        self.components_ = components(self.method, [b for b in BLOCKS if blocks.get(b) is not None])
        self.fallback_ = fallback(self.method, self.components_) or ""
        self.estimators_, self.n_outliers_, self.n_outlier_classes_, self.n_outlier_kinds_ = [], 0, 0, 0
        for c in self.components_:
            blk, make, _ = BASE_SCORERS[c]
            est, X, yc = make(self.random_state), blocks[blk], np.asarray(y)
            if c in OUTLIER_SCORERS and outliers is not None and outliers.get(blk) is not None and len(outliers[blk]):
                X = np.concatenate([X, outliers[blk]])
                kind = np.asarray(outliers.get("outlier_class", np.zeros(len(outliers[blk]), np.int64)))
                sub = split_outlier_kinds(outliers[blk], kind, int(self.outlier_components), self.random_state)
                yc = np.concatenate([yc, (OUTLIER - sub).astype(yc.dtype)])
                self.n_outliers_, self.n_outlier_kinds_ = len(outliers[blk]), len(np.unique(kind))
                self.n_outlier_classes_ = len(np.unique(sub))
            self.estimators_.append(est.fit(X, yc))
        raw = self.component_scores(val_blocks if val_blocks is not None else blocks)
        self.centers_ = np.array([np.median(raw[c]) for c in self.components_])
        self.scales_ = np.array([_tail_scale(raw[c]) for c in self.components_])
        self.set_threshold(val_blocks if val_blocks is not None else blocks)
        return self

    @property
    def blocks_(self) -> tuple[str, ...]:
        return tuple(BASE_SCORERS[c][0] for c in self.components_)

    def component_scores(self, blocks: dict) -> dict[str, np.ndarray]:
        return {c: est.score_samples(blocks[BASE_SCORERS[c][0]]) for c, est in zip(self.components_, self.estimators_)}

    def score_samples(self, blocks: dict) -> np.ndarray:
        """(N,) fused known-ness: the soft minimum (`temperature`; 0: the minimum) over components
        of (score - median) / tail scale on known validation rows."""
        check_is_fitted(self, "estimators_")
        return self.fuse(self.component_scores(blocks))

    def fuse(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        """(N,) the soft minimum of raw component scores ({component: (N,)}) in this scorer's units."""
        z = np.stack([(raw[c] - m) / s for c, m, s in zip(self.components_, self.centers_, self.scales_)])
        t = float(self.temperature or 0.0)
        return z.min(0) if t <= 0 or len(z) == 1 else -t * logsumexp(-z / t, axis=0)

    def set_threshold(self, val_blocks: dict, false_unknown_rate: float | None = None) -> OpenSetScorer:
        super().set_threshold(val_blocks, false_unknown_rate)
        self.val_flagged_ = float((self.score_samples(val_blocks) < self.offset_).mean())
        return self

    def set_image_threshold(
        self, val_blocks: dict, image: np.ndarray, false_unknown_rate: float | None = None
    ) -> OpenSetScorer:
        """For models trained on crops: the threshold on an image's mean crop score, at the
        false-unknown rate over validation *images* (`image` (N,): the image of each row). A mean
        over crops spreads less than one crop's score, so the row threshold would flag too few."""
        rate = self.false_unknown_rate if false_unknown_rate is None else false_unknown_rate
        per_image = ImageGroups(image).mean(self.score_samples(val_blocks))
        self.image_threshold_ = float(np.quantile(per_image, rate))
        self.val_images_flagged_ = float((per_image < self.image_threshold_).mean())
        return self


def _tail_scale(known: np.ndarray) -> float:
    """median - lower quantile of a component's scores on known rows (TAIL, or TAIL_ROWS rows on a
    small set, at most the lower quartile); the interquartile scale where that is zero (a component
    flat on its tail); 1 if both are."""
    q = max(TAIL, TAIL_ROWS / max(len(known), 1))
    med = np.median(known)
    for scale in (med - np.quantile(known, min(q, 0.25)), np.subtract(*np.percentile(known, [75, 25])) / 1.349):
        if scale > 1e-12:
            return float(scale)
    return 1.0
