"""The one-call API.

    from leakstore import Attributor
    a = Attributor.load("runs/m1")
    a.score("image.png")        # dict: generator, confidence, is_unknown, log_density, nearest prototypes, ...
    a.score_many("folder/")     # pandas DataFrame, one row per image, failures included
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd


class Attributor:
    def __init__(self, run_dir: str | Path, device: str = "cpu"):
        from featurize.runner import DeviceFeaturizer, resolve_device
        from featurize.vae import encoder_for_config
        from model.checkpoint import load_bundle
        self.run_dir, self.device = Path(run_dir), str(resolve_device(device))
        self.bundle = load_bundle(run_dir, self.device)
        self.encoder = encoder_for_config(self.bundle.featurize)
        self._runner = DeviceFeaturizer(self.encoder, self.bundle.featurize, resolve_device(self.device), 16,
                                        use_compile=False)

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> "Attributor":
        return cls(run_dir, device)

    @property
    def classes(self) -> list[str]:
        return list(self.bundle.class_names)

    @property
    def builtin_encoder(self) -> bool:
        return bool(self.bundle.featurize.vae.builtin)

    def score_many(self, images, batch_size: int = 16) -> pd.DataFrame:
        """A folder, manifest, glob or list of paths -> one row per image, in input order."""
        from featurize.inmemory import featurize_paths
        from pipelines.score import frame, list_inputs
        paths = list_inputs(images)
        frames = []
        for s in range(0, len(paths), 256):
            part = paths[s:s + 256]
            feats, sha, errors = featurize_paths(part, self.bundle.featurize, self.encoder, device=self.device,
                                                 batch_size=batch_size, runner=self._runner)
            frames.append(frame(self.bundle, len(part), part, feats, feats.rows, errors, {"sha256": sha},
                                self.device))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def score(self, image: str | Path) -> dict:
        """One image -> {generator, confidence, is_unknown, log_density, probabilities, nearest_prototypes, error}."""
        row = self.score_many([str(image)]).iloc[0]
        return {"path": row.path, "generator": row.pred, "nearest_generator": row.nearest_generator,
                "confidence": float(row.confidence), "is_unknown": None if pd.isna(row.is_unknown) else bool(row.is_unknown),
                "log_density": float(row.log_density), "status": row.status, "error": row.error,
                "probabilities": {c: float(row[f"p_{c}"]) for c in self.classes},
                "nearest_prototypes": row.nearest_prototypes.split(";") if row.nearest_prototypes else [],
                "builtin_encoder": self.builtin_encoder}
