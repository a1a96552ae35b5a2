"""The one predictor: a trained bundle (+ the featurizer it needs for raw images) -> one DataFrame
row per input. `Attributor`, dask scoring and evaluation all go through it.

    p = Predictor.load("runs/m1")
    p.score_paths(["a.png", "b.jpg"])            # featurize in memory, then predict
    p.score_store("store.zarr", 0, 256)          # rows of a featurized store (no VAE needed)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from leakstore.config import DEFAULT_DEVICE, DEFAULT_REAL_LABEL, DEFAULT_SCORE_BATCH, check_compatible
from leakstore.device import resolve_device
from leakstore.errors import ConfigMismatchError, InputError
from leakstore.features import FeatureBatch, minimal_config
from leakstore.store import DONE, STATUS_NAMES, FeatureStore

# The re-encodings `score --stability K` tries, in order: what sharing, messaging and screenshots do.
STABILITY_VIEWS = ("jpeg:90", "jpeg:75", "resize:0.5", "webp:80", "jpeg:60", "resize:0.75+jpeg:85")
STABILITY_COLUMNS = {"stability": float, "unsure": "boolean"}
# what the file's own metadata claims (featurize.provenance), beside the signal's verdict, never in it
PROVENANCE_COLUMNS = {
    "meta_claim": object,
    "meta_source": object,
    "c2pa_valid": "boolean",
    "meta_agrees": "boolean",
    "meta_error": object,
    "meta_detail": object,
}
STORE_PROVENANCE = "not read: scored from stored features (score the image files to read their metadata)"
BASE_COLUMNS = {
    "path": object,
    "status": object,
    "error": object,
    "pred": object,
    "confidence": float,
    "is_unknown": "boolean",
    "open_score": float,
    "nearest_prototypes": object,
}


class Predictor:
    def __init__(self, bundle, device: str = DEFAULT_DEVICE):
        self.bundle = bundle
        self.device = str(resolve_device(device))
        self._encoder = self._runner = None

    @classmethod
    def load(cls, run_dir: str | Path, device: str = DEFAULT_DEVICE) -> Predictor:
        from leakstore.model.checkpoint import load_bundle

        dev = str(resolve_device(device))
        return cls(load_bundle(run_dir, dev), dev)

    # ------------------------------------------------------------------ what the model reads
    @property
    def inputs(self) -> tuple[str, ...]:
        """The stored features predictions read (Bundle.feature_names)."""
        return self.bundle.feature_names

    @property
    def featurize_config(self):
        """The config raw images are featurized with: the model's, minus optional features it does
        not read (a model trained with --no-residual on a residual store needs no decoder pass)."""
        return minimal_config(self.bundle.featurize, self.inputs)

    @property
    def encoder(self):
        """The VAE encoder (and decoder when a read feature needs it), loaded once, checked
        against the weights revision recorded in the model."""
        if self._encoder is None:
            from leakstore.featurize.vae import encoder_for_config

            self._encoder = encoder_for_config(self.featurize_config)
        return self._encoder

    def _featurizer(self):
        if self._runner is None:
            from leakstore.featurize.runner import DeviceFeaturizer

            self._runner = DeviceFeaturizer(
                self.encoder, self.featurize_config, resolve_device(self.device), DEFAULT_SCORE_BATCH, use_compile=False
            )
        return self._runner

    # ------------------------------------------------------------------ predictions
    def predict(self, batch: FeatureBatch) -> dict:
        from leakstore.model.predict import predict

        return predict(self.bundle, batch, self.device)

    def meta(self, extra: dict | None = None) -> pd.DataFrame:
        """The empty output frame: column names and dtypes (dask's `meta`)."""
        crops = {"crops": np.int64, "open_spread": float} if self.bundle.featurize.crops > 1 else {}
        cols = {
            **BASE_COLUMNS,
            **{f"p_{c}": float for c in self.bundle.class_names},
            "nearest_generator": object,
            **crops,
            **PROVENANCE_COLUMNS,
            **(extra or {}),
        }
        return pd.DataFrame({k: pd.Series(dtype=v) for k, v in cols.items()})

    @property
    def real_class(self) -> str | None:
        """The model's class of camera photographs, if it has one (what a camera claim should match)."""
        saved = self.bundle.meta.get("training", {}).get("real_class")
        if saved in self.bundle.class_names:
            return saved
        return DEFAULT_REAL_LABEL if DEFAULT_REAL_LABEL in self.bundle.class_names else None

    def frame(
        self,
        paths,
        batch: FeatureBatch,
        ok_index: np.ndarray,
        errors: dict[int, str],
        extra: dict | None = None,
        provenance: dict | None = None,
        predictions: dict | None = None,
    ) -> pd.DataFrame:
        """One row per input path: predictions where `batch` has features (at positions ok_index),
        the error otherwise. With crops (the model's featurize config), several batch rows share one
        position of ok_index: they are one image's crops, judged together (model.predict.aggregate_images).
        `provenance` {position: Provenance} of image files; None for a store (its files are not read).
        `predictions`: `self.predict(batch)` where the caller has it already (explain reads its rows too)."""
        names = self.bundle.class_names
        df = pd.DataFrame(
            {
                "path": [str(p) for p in paths],
                "status": "failed",
                "error": "",
                "pred": None,
                "confidence": np.nan,
                "is_unknown": None,
                "open_score": np.nan,
                "nearest_prototypes": "",
            }
        )
        for c in names:
            df[f"p_{c}"] = np.nan
        df["nearest_generator"] = None
        if self.bundle.featurize.crops > 1:  # how many crops an image was judged on, and how they disagreed
            df["crops"], df["open_spread"] = 0, np.nan
        for i, e in errors.items():
            df.loc[i, "error"] = e
        if len(batch):
            p = self.predict(batch) if predictions is None else predictions
            if self.bundle.featurize.crops > 1:
                from leakstore.model.predict import aggregate_images, image_threshold

                ok_index, p = aggregate_images(p, np.asarray(ok_index), names, image_threshold(self.bundle))
                keep = np.array([i not in errors for i in ok_index], dtype=bool)  # a failed crop fails its image
                ok_index, p = ok_index[keep], {k: _take(v, keep) for k, v in p.items()}
                df.loc[ok_index, "crops"] = p["crops"]
                df.loc[ok_index, "open_spread"] = p["open_spread"]
            df.loc[ok_index, "status"] = "ok"
            df.loc[ok_index, "pred"] = np.where(p["is_unknown"], "unknown", p["pred_name"])
            df.loc[ok_index, "nearest_generator"] = p["pred_name"]
            df.loc[ok_index, "confidence"] = p["confidence"]
            df.loc[ok_index, "is_unknown"] = p["is_unknown"]
            df.loc[ok_index, "open_score"] = p["open_score"]
            df.loc[ok_index, "nearest_prototypes"] = [";".join(x) for x in p["nearest_prototypes"]]
            for i, c in enumerate(names):
                df.loc[ok_index, f"p_{c}"] = p["proba"][:, i]
        self._provenance(df, provenance)
        for k, v in (extra or {}).items():
            df[k] = v
        df["is_unknown"] = df["is_unknown"].astype("boolean")
        return df

    def _provenance(self, df: pd.DataFrame, provenance: dict | None) -> None:
        """The PROVENANCE_COLUMNS of `df`, in place: each file's claim and whether the verdict agrees."""
        from leakstore.featurize.provenance import NONE, agrees

        n = len(df)
        if provenance is None:
            df["meta_claim"], df["meta_source"] = "", ""
            df["c2pa_valid"] = df["meta_agrees"] = pd.array([None] * n, dtype="boolean")
            df["meta_error"], df["meta_detail"] = "", STORE_PROVENANCE
            return
        got = [provenance.get(i, NONE) for i in range(n)]
        pred = df["pred"].to_numpy(object)
        ok = (df["status"] == "ok").to_numpy()
        names, real = self.bundle.class_names, self.real_class
        df["meta_claim"] = [m.claim for m in got]
        df["meta_source"] = [m.source for m in got]
        df["c2pa_valid"] = pd.array([m.c2pa_valid for m in got], dtype="boolean")
        df["meta_agrees"] = pd.array(
            [agrees(m, pred[i], names, real) if ok[i] else None for i, m in enumerate(got)], dtype="boolean"
        )
        df["meta_error"] = [m.error for m in got]
        df["meta_detail"] = [m.detail for m in got]

    def score_paths(
        self,
        paths: list[str],
        first_row: int = 0,
        batch_size: int = DEFAULT_SCORE_BATCH,
        stability: int = 0,
        provenance: bool = True,
    ) -> pd.DataFrame:
        """Featurize image files in memory with the model's featurize config, then predict. With
        `stability` K > 0, each image is also scored under the first K re-encodings of
        STABILITY_VIEWS: `stability` is the share of them whose verdict (`pred`, "unknown" included)
        is the image's own, and `unsure` says that at least one differs. `provenance` False leaves the
        metadata unread (its columns empty; benchmarks compare the two)."""
        df = self._score_view(paths, first_row, batch_size, provenance=provenance)
        if stability:
            df["stability"], df["unsure"] = self._stability(paths, df, first_row, batch_size, stability)
        return df

    def _score_view(
        self, paths, first_row: int, batch_size: int, view: str | None = None, provenance: bool = True
    ) -> pd.DataFrame:
        """The image files scored as they are (`view` None; their metadata read from the same bytes), or
        re-encoded by `view` (no metadata: a re-encoding is not the user's file)."""
        from leakstore.featurize.inmemory import featurize_paths

        cfg = self.featurize_config if view is None else self.featurize_config.replace(view=view)
        meta = {} if view is None and provenance else None
        batch, sha, errors = featurize_paths(
            paths,
            cfg,
            self.encoder,
            device=self.device,
            batch_size=batch_size,
            runner=self._featurizer(),
            provenance=meta,
        )
        return self.frame(
            paths,
            batch,
            batch.rows // cfg.crops,
            errors,
            {"row": np.arange(first_row, first_row + len(paths)), "sha256": sha},
            provenance=meta if meta is not None else {},  # nothing read: no claims
        )

    def explain(self, path: str) -> dict:
        """One file for an analyst's case notes: the verdict (as `score` gives it), each crop's own
        verdict and scores, the attention over timesteps, the unknown threshold, and what the file's
        metadata claims (featurize.provenance) with whether it agrees with the verdict."""
        from dataclasses import asdict

        from leakstore.featurize.inmemory import featurize_paths
        from leakstore.model.predict import aggregate_images, image_threshold

        cfg = self.featurize_config
        meta: dict = {}
        batch, sha, errors = featurize_paths(
            [path], cfg, self.encoder, device=self.device, runner=self._featurizer(), provenance=meta
        )
        p = self.predict(batch) if len(batch) else None  # once: the verdict row and the crop lines read it
        row = self.frame(
            [path], batch, batch.rows // cfg.crops, errors, {"sha256": sha}, provenance=meta, predictions=p
        )
        verdict = {k: (None if v is pd.NA or (isinstance(v, float) and v != v) else v) for k, v in row.iloc[0].items()}
        crops, companion = [], None
        if p is not None:
            names = self.bundle.class_names
            _, pi = aggregate_images(p, np.zeros(len(batch), dtype=np.int64), names, image_threshold(self.bundle))
            if pi["companion"][0]:  # one window: the verdict is half the companion's
                top = np.argsort(-p["small_proba"][0])[:3]
                companion = {names[i]: float(p["small_proba"][0][i]) for i in top}
            for j in range(len(batch)):
                top = np.argsort(-p["proba"][j])[:3]
                crops.append(
                    {
                        "crop": int(batch.rows[j] % cfg.crops),
                        "nearest_generator": str(p["pred_name"][j]),
                        "confidence": float(p["confidence"][j]),
                        "open_score": float(p["open_score"][j]),
                        "top_classes": {names[i]: float(p["proba"][j][i]) for i in top},
                        "attention": [float(a) for a in np.asarray(p["attention"][j]).ravel()],
                    }
                )
        threshold = image_threshold(self.bundle)  # the whole image's (crop models: on the mean crop score)
        prov = asdict(meta.get(0)) if 0 in meta else None
        return {
            "path": str(path),
            "verdict": verdict,
            "unknown_threshold": threshold,
            "open_scorer": self.bundle.cfg.open_scorer,
            "timesteps": list(cfg.timesteps),
            "crops": crops,
            # an image no larger than one crop, with a companion (RUN/small): its top classes, which the
            # verdict's probabilities average with the crops' (log-probabilities, half each); else None
            "companion": companion,
            "provenance": prov,
        }

    def _stability(self, paths, df: pd.DataFrame, first_row: int, batch_size: int, k: int):
        if not 1 <= k <= len(STABILITY_VIEWS):
            raise InputError(f"stability must lie in [1, {len(STABILITY_VIEWS)}], got {k}")
        same, tried = np.zeros(len(paths)), np.zeros(len(paths))
        for view in STABILITY_VIEWS[:k]:  # a re-encoding that cannot be featurized (too small) is not counted
            v = self._score_view(paths, first_row, batch_size, view)
            ok_v = (v["status"] == "ok").to_numpy()
            tried += ok_v
            same += ok_v & (v["pred"].to_numpy(object) == df["pred"].to_numpy(object))
        ok = (df["status"] == "ok").to_numpy() & (tried > 0)
        share = np.where(ok, same / np.maximum(tried, 1), np.nan)
        return share, pd.array(np.where(ok, share < 1, None), dtype="boolean")

    def check_store(self, store: FeatureStore) -> None:
        """Refuse a store featurized with another config. Post-processing views may differ, and so may
        optional features the model does not read (a store of a later release's defaults holds more)."""
        where = f"store {store.path}"
        try:
            check_compatible(self.featurize_config, minimal_config(store.config, self.inputs), where, ignore=("view",))
        except ConfigMismatchError:  # named with the whole configs' differences and hashes, as inspect shows them
            check_compatible(self.bundle.featurize, store.config, where, ignore=("view",))
            raise

    def score_store(self, store_path: str | Path, start: int, stop: int) -> pd.DataFrame:
        """Rows [start, stop) of a store (one chunk): rows not featurized are reported, not guessed."""
        store = FeatureStore.open(store_path)
        self.check_store(store)
        st = store.read("status", slice(start, stop))
        paths = store.read("path", slice(start, stop))
        err = store.read("error", slice(start, stop))
        ok = np.flatnonzero(st == DONE)
        errors = {
            int(i): (str(err[i]) or f"not featurized ({STATUS_NAMES[int(st[i])]})") for i in np.flatnonzero(st != DONE)
        }
        batch = (
            store.load(self.inputs, rows=np.arange(start, stop))
            if len(ok)
            else FeatureBatch.empty(self.bundle.featurize, self.inputs)
        )
        if not store.has_crops:
            return self.frame(paths, batch, ok, errors, {"row": np.arange(start, stop)})
        # one output row per image: its crops are whole in this chunk (chunks hold whole images)
        image = store.read("image", slice(start, stop)) - start  # its crop 0, as a chunk position
        heads = np.flatnonzero(image == np.arange(len(image)))
        out = np.searchsorted(heads, image)  # chunk row -> output row
        img_errors = {}
        for i, e in errors.items():
            img_errors.setdefault(int(out[i]), e)
        return self.frame(paths[heads], batch, out[ok], img_errors, {"row": start + heads})


def _take(v, keep: np.ndarray):
    return [x for x, k in zip(v, keep) if k] if isinstance(v, list) else v[keep]
