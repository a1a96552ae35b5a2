"""The one-call API.

from leakstore import Attributor
a = Attributor.load("runs/m1")
a.score("image.png")        # dict: pred, confidence, is_unknown, open_score, nearest prototypes, ...
a.score_many("folder/")     # pandas DataFrame, one row per image, failures included
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from leakstore.api.predictor import PROVENANCE_COLUMNS as PROVENANCE
from leakstore.config import DEFAULT_DEVICE, DEFAULT_SCORE_BATCH, DEFAULT_SCORE_CHUNK

BOOLEAN = tuple(k for k, v in PROVENANCE.items() if v == "boolean")


class Attributor:
    def __init__(self, run_dir: str | Path, device: str = DEFAULT_DEVICE):
        from leakstore.api.predictor import Predictor

        self.run_dir = Path(run_dir)
        self.predictor = Predictor.load(run_dir, device)
        self.device = self.predictor.device
        self.bundle = self.predictor.bundle

    @classmethod
    def load(cls, run_dir: str | Path, device: str = DEFAULT_DEVICE) -> Attributor:
        return cls(run_dir, device)

    @property
    def encoder(self):
        """The VAE encoder raw images go through (with its decoder only when the model reads a feature that
        needs it)."""
        return self.predictor.encoder

    @property
    def classes(self) -> list[str]:
        return list(self.bundle.class_names)

    @property
    def builtin_encoder(self) -> bool:
        return bool(self.bundle.featurize.vae.builtin)

    def score_many(self, images, batch_size: int = DEFAULT_SCORE_BATCH, stability: int = 0) -> pd.DataFrame:
        """A folder, manifest, glob or list of paths -> one row per image, in input order. With
        `stability` K, also columns `stability` and `unsure` (the verdict under K re-encodings)."""
        from leakstore.featurize.datasets import list_inputs

        paths = list_inputs(images)
        frames = [
            self.predictor.score_paths(paths[s : s + DEFAULT_SCORE_CHUNK], s, batch_size, stability).drop(columns="row")
            for s in range(0, len(paths), DEFAULT_SCORE_CHUNK)
        ]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def score(self, image: str | Path) -> dict:
        """One image -> {pred, confidence, is_unknown, open_score, probabilities, nearest_prototypes, status, error,
        and the provenance columns meta_claim, meta_source, c2pa_valid, meta_agrees, meta_error, meta_detail}:
        the keys are the columns of `score_many` and of `leakstore score`'s Parquet file. pred: a generator,
        the real class, or "unknown" when is_unknown (the open-set score fell below the model's threshold);
        nearest_generator: the most probable known class (also when pred is "unknown")."""
        row = self.score_many([str(image)]).iloc[0]
        return {
            "path": row.path,
            "pred": row.pred,
            "nearest_generator": row.nearest_generator,
            "confidence": float(row.confidence),
            "is_unknown": None if pd.isna(row.is_unknown) else bool(row.is_unknown),
            "open_score": float(row.open_score),
            "status": row.status,
            "error": row.error,
            "probabilities": {c: float(row[f"p_{c}"]) for c in self.classes},
            "nearest_prototypes": row.nearest_prototypes.split(";") if row.nearest_prototypes else [],
            "builtin_encoder": self.builtin_encoder,
            # what the file's own metadata claims, beside the verdict (never in it): featurize.provenance
            **{k: (None if pd.isna(row[k]) else (bool(row[k]) if k in BOOLEAN else row[k])) for k in PROVENANCE},
        }
