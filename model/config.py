"""The model's hyperparameters: data, saved as JSON beside every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from leakstore.config import from_fields
from leakstore.errors import ConfigFieldError

BACKBONES = ("cnn", "resnet", "patch-transformer")
TEMPORAL = ("attention", "transformer")
SCORERS = ("mahalanobis", "gmm", "kde", "prototype")
SCORER_ROWS = ("all", "clean", "clean-fit")
# the open-set scorer a run with outlier exposure (train --outliers) gets unless one is named
# (the leave-one-generator-out study's choice with outliers: docs/results)
OUTLIER_OPEN_SCORER = "lda"
# the open-set scorers offered (built in model/openset.py), each with a measured row in docs/results:
# the default, the one with outliers, its fusion, the pixel one, the paper's KDE, the prototype distance
OPEN_SCORERS = ("fused-period", "lda", "fused-lda", "fused-pixel", "kde", "prototype")
RETIRED_IN = "0.2.0"
# open scorers earlier builds offered, none measured on real generators; a model naming one fails in one line
RETIRED_OPEN_SCORERS = (
    "gauss",
    "knn",
    "confidence",
    "stats",
    "residual",
    "periodicity",
    "spectrum",
    "noise",
    "fused",
    "fused-stats",
    "fused-all",
    "fused-input",
    "fused-noise",
)


# fields a saved model may lack, with what trained it then (not today's default): paired view
# training did not exist before `consistency`, nor training on the test split before `final`,
# nor attribution with the discriminant beside the networks before `discriminant`, nor more than one
# outlier class per kind before `outlier_components`
ABSENT_MEANS = {"consistency": 0.0, "final": False, "discriminant": 0.0, "outlier_components": 1}


def with_absent(d: dict) -> dict:
    """A saved model config `d` with ABSENT_MEANS filled in where it lacks them."""
    return {**ABSENT_MEANS, **d}


@dataclass(frozen=True)
class ModelConfig:
    """Defaults follow the Proto-LeakNet reference (AdamW 3e-4, wd 1e-4, clip 5, 128-d, M = 6)."""

    backbone: str = "cnn"
    width: int = 64
    embed_dim: int = 128
    use_spectra: bool = True
    use_residual: bool = True  # use the store's reconstruction residual when it has one
    use_periodicity: bool = True  # use the store's pixel periodicity profile when it has one
    drop_jpeg_grid: bool = True  # read the profile without the phases JPEG's 8x8 block grid prints on
    temporal: str = "attention"
    time_dropout: float = 0.3
    entropy_reg: float = 0.1
    gates: bool = True
    protos_per_class: int = 6
    extra_protos: int = 2  # post-hoc prototype slots per class, used for weak classes only
    weak_recall: float = 0.9  # a class below this validation recall gets its extra prototypes
    init_temperature: float = 1.0
    lr: float = 3e-4
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    epochs: int = 30
    batch_size: int = 64
    epoch_samples: int = 0  # > 0: an epoch is this many training samples (a seeded random share of the
    # rows; for stores too big to validate only once a pass); 0: every row
    patience: int = 6
    renoise: bool = True  # fresh noise from latent0 every batch, as the reference redraws it
    view_prob: float = 0.5  # per image and epoch: train on one of its post-processed views (featurize --train-views)
    consistency: float = 1.0  # > 0: every clean row trains beside one of its views (not instead of it), whose
    # class distribution is pulled toward the clean row's (KL, this weight); view_prob > 0 then only turns views on
    scorer_rows: str = "all"  # rows the closed- and open-set scorers are fitted and calibrated on: "all"
    # (clean and views), "clean" (the network still trains on views) or
    # "clean-fit" (every scorer fitted on clean rows, the open-set scales and
    # threshold calibrated on all validation rows, views included)
    roll_augment: bool = True  # random circular shifts of the latent: FFT magnitudes, hence the
    # low-frequency leak, are exactly invariant; the content is not
    dropout: float = 0.1
    select_on: str = "val_auc"  # early stopping / best epoch on "val_auc" or "val_loss"
    scorer: str = "mahalanobis"  # closed-set scorer on embeddings
    discriminant: float = 0.2  # attribution: this weight on a linear discriminant of the stored statistics
    # (the lda scorer's features, known classes only), 1 - it on the networks' calibrated log-probabilities;
    # 0: the networks alone. Chosen out of fold over the training prompts (docs/results)
    open_scorer: str = "fused-period"  # open-set scorer (model/openset.py), chosen by the leave-one-out study;
    # with outlier exposure, OUTLIER_OPEN_SCORER (default_open_scorer)
    false_unknown_rate: float = 0.05  # open-set threshold: this share of known val images called unknown
    open_temperature: float = 1.0  # fused scorers' soft minimum (0: the plain minimum), chosen by the study
    outlier_components: int = 2  # outlier exposure: each kind of outlier fitted as this many classes of the
    # lda scorer (k-means on its rows; 1: one class per kind). Chosen on the validation prompts (docs/results)
    seed: int = 0
    members: int = 3  # networks trained from seeds seed, seed+1, ...; their embeddings joined
    # (chosen by the leave-one-out study: docs/open-set.md)
    final: bool = False  # the test split trains too (the model to deploy once one without it was
    # evaluated); evaluate then refuses the training store's test split: its figures would be in-sample
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name, value, allowed in (
            ("backbone", self.backbone, BACKBONES),
            ("temporal", self.temporal, TEMPORAL),
            ("scorer", self.scorer, SCORERS),
            ("open_scorer", self.open_scorer, OPEN_SCORERS),
            ("scorer_rows", self.scorer_rows, SCORER_ROWS),
        ):
            if name == "open_scorer" and value in RETIRED_OPEN_SCORERS:
                raise ConfigFieldError(
                    name,
                    value,
                    f"retired in leakstore {RETIRED_IN} (docs: Open set); choose "
                    f"one of {', '.join(allowed)} and train again",
                )
            if value not in allowed:
                raise ConfigFieldError(name, value, f"choose one of {', '.join(allowed)}")
        if not 0 <= self.time_dropout < 1:
            raise ConfigFieldError("time_dropout", self.time_dropout, "must lie in [0, 1)")
        if self.consistency < 0:
            raise ConfigFieldError("consistency", self.consistency, "must be 0 or more")
        if not 0 <= self.discriminant <= 1:
            raise ConfigFieldError("discriminant", self.discriminant, "must lie in [0, 1] (0: the networks alone)")
        if not 0 <= self.view_prob <= 1:
            raise ConfigFieldError("view_prob", self.view_prob, "must lie in [0, 1]")
        for name in ("epochs", "batch_size", "protos_per_class", "patience", "width", "members", "outlier_components"):
            if getattr(self, name) < 1:
                raise ConfigFieldError(name, getattr(self, name), "must be at least 1")
        if self.epoch_samples < 0:
            raise ConfigFieldError("epoch_samples", self.epoch_samples, "must be 0 (every row) or more")
        if not self.open_temperature >= 0:
            raise ConfigFieldError("open_temperature", self.open_temperature, "must be 0 (the plain minimum) or more")
        if not 0 < self.false_unknown_rate < 1:
            raise ConfigFieldError("false_unknown_rate", self.false_unknown_rate, "must lie in (0, 1), e.g. 0.05")

    def uses(self, feature: str) -> bool:
        """Whether the model reads `feature` when the store has it (use_<feature>, default True)."""
        return bool(getattr(self, f"use_{feature}", True))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return from_fields(cls, with_absent(d), "model config")

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)


def default_open_scorer(outliers: bool) -> str:
    """The open-set scorer a run gets when none is named: OUTLIER_OPEN_SCORER with outlier exposure
    (its 'other' class needs the outlier rows), ModelConfig's default without."""
    return OUTLIER_OPEN_SCORER if outliers else ModelConfig.open_scorer
