"""Batch scoring with dask.distributed: one row per input, in input order, failures recorded.

Input is a featurized store (dask maps the model over the store's chunks; no VAE, no GPU
needed) or raw images (folders, manifests, globs, lists: workers featurize each partition
with the exact featurize config recorded in the model, then score it).

Each worker loads the model once, through `LoadModel` (a WorkerPlugin); tasks are pure
functions of (model path, partition), so a worker lost mid-job only means its partitions
are recomputed elsewhere: no row is lost or written twice.
"""
from __future__ import annotations

import glob
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from leakstore.errors import InputError

_MODELS: dict[str, object] = {}
_LOCK = threading.Lock()
PARTITION_IMAGES = 256


# ---------------------------------------------------------------------------- model, once per process
def get_bundle(run_dir: str, device: str = "cpu"):
    """The model for run_dir, loaded once per process (keyed by path, device and file time)."""
    from model.checkpoint import load_bundle
    key = f"{os.path.abspath(run_dir)}|{device}|{os.path.getmtime(Path(run_dir) / 'model.json')}"
    with _LOCK:
        if key not in _MODELS:
            if device == "cpu" and os.environ.get("LEAKSTORE_WORKER"):
                import torch
                torch.set_num_threads(1)  # one thread per dask worker process: workers scale, threads fight
            _MODELS[key] = load_bundle(run_dir, device)
        return _MODELS[key]


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency
    WorkerPlugin = object


class LoadModel(WorkerPlugin):
    """Loads the model into each worker process when the worker starts (or joins later)."""

    def __init__(self, run_dir: str, device: str = "cpu"):
        self.run_dir, self.device = str(run_dir), device

    def setup(self, worker):
        os.environ["LEAKSTORE_WORKER"] = "1"
        get_bundle(self.run_dir, self.device)


def local_cluster(n_workers: int):
    """A LocalCluster of worker processes (one thread each) for leakstore's work.

    dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 into every worker; setting it also
    freezes glibc's mmap threshold, so each large tensor is mmap'd and unmapped again
    (measured here: TAEF2 featurizing on one thread, 85.6 -> 105 ms/image). The nanny reads
    this config when it is built, so restarted workers keep it; dask's thread caps stay."""
    import dask
    from distributed import LocalCluster
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0")


# ---------------------------------------------------------------------------- one partition
def frame(bundle, n: int, paths, feats, ok_index: np.ndarray, errors: dict[int, str], extra: dict | None = None,
          device="cpu") -> pd.DataFrame:
    """One row per input (n of them): predictions where features exist, the error otherwise."""
    from model.predict import predict
    names = bundle.class_names
    df = pd.DataFrame({"path": [str(p) for p in paths], "status": "failed", "error": "",
                       "pred": None, "confidence": np.nan, "is_unknown": None, "log_density": np.nan,
                       "nearest_prototypes": ""})
    for c in names:
        df[f"p_{c}"] = np.nan
    for i, e in errors.items():
        df.loc[i, "error"] = e
    if len(feats):
        p = predict(bundle, feats, device)
        df.loc[ok_index, "status"] = "ok"
        df.loc[ok_index, "pred"] = np.where(p["is_unknown"], "unknown", p["pred_name"])
        df["nearest_generator"] = None
        df.loc[ok_index, "nearest_generator"] = p["pred_name"]
        df.loc[ok_index, "confidence"] = p["confidence"]
        df.loc[ok_index, "is_unknown"] = p["is_unknown"]
        df.loc[ok_index, "log_density"] = p["log_density"]
        df.loc[ok_index, "nearest_prototypes"] = [";".join(x) for x in p["nearest_prototypes"]]
        for i, c in enumerate(names):
            df.loc[ok_index, f"p_{c}"] = p["proba"][:, i]
    else:
        df["nearest_generator"] = None
    for k, v in (extra or {}).items():
        df[k] = v
    df["is_unknown"] = df["is_unknown"].astype("boolean")
    return df


def score_store_rows(run_dir: str, store_path: str, start: int, stop: int, device: str = "cpu") -> pd.DataFrame:
    """Score rows [start, stop) of a store (one chunk): rows not featurized are reported, not guessed."""
    from leakstore.config import check_compatible
    from leakstore.store import DONE, STATUS_NAMES, FeatureStore
    from model.data import load_features
    bundle = get_bundle(run_dir, device)
    store = FeatureStore.open(store_path)
    check_compatible(bundle.featurize, store.config, f"store {store_path}", ignore=("view",))
    st = store.read("status", slice(start, stop))
    paths = store.read("path", slice(start, stop))
    err = store.read("error", slice(start, stop))
    ok = np.flatnonzero(st == DONE)
    errors = {int(i): (str(err[i]) or f"not featurized ({STATUS_NAMES[int(st[i])]})") for i in np.flatnonzero(st != DONE)}
    feats = load_features(store, rows=np.arange(start, stop)) if len(ok) else _empty(bundle)
    return frame(bundle, stop - start, paths, feats, ok, errors, {"row": np.arange(start, stop)}, device)


def score_image_paths(run_dir: str, paths: list[str], first_row: int, device: str = "cpu") -> pd.DataFrame:
    """Featurize and score one partition of image files."""
    from featurize.inmemory import featurize_paths
    from featurize.vae import encoder_for_config
    bundle = get_bundle(run_dir, device)
    key = f"enc|{run_dir}|{device}"
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = encoder_for_config(bundle.featurize)
        enc = _MODELS[key]
    feats, sha, errors = featurize_paths(paths, bundle.featurize, enc, device=device)
    return frame(bundle, len(paths), paths, feats, feats.rows, errors,
                 {"row": np.arange(first_row, first_row + len(paths)), "sha256": sha}, device)


def _empty(bundle):
    import torch

    from model.data import Features
    f = bundle.featurize
    c, h, w = f.latent_shape
    t, k = len(f.timesteps), f.fft_size
    return Features(np.zeros(0, np.int64), torch.zeros((0, t, c, h, w)), torch.zeros((0, t, c, k, k)), None,
                    np.zeros(0), np.zeros(0), np.zeros(0, dtype=object),
                    torch.zeros((0, f.residual_dim)) if f.residual_bins else None)


# ---------------------------------------------------------------------------- inputs
def list_inputs(inp) -> list[str]:
    """A folder (recursively), a manifest (.csv/.parquet with a 'path' column), a glob, one image, or a list."""
    from featurize.images import IMAGE_EXTENSIONS
    if isinstance(inp, (list, tuple)):
        return [str(p) for p in inp]
    s = str(inp)
    p = Path(s)
    if p.is_dir():
        return sorted(str(q.resolve()) for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
    if p.is_file() and p.suffix.lower() in (".csv", ".parquet"):
        df = pd.read_parquet(p) if p.suffix.lower() == ".parquet" else pd.read_csv(p, dtype=str, keep_default_na=False)
        if "path" not in df:
            raise InputError(f"{p}: a manifest needs a 'path' column")
        return [str((p.parent / q).resolve()) if not Path(q).is_absolute() else q for q in df["path"]]
    if p.is_file():
        return [str(p.resolve())]
    hits = sorted(glob.glob(s, recursive=True))
    if not hits:
        raise InputError(f"no input at {s}: give a store, a folder, a manifest, a glob or an image")
    return hits


def is_store(inp) -> bool:
    return not isinstance(inp, (list, tuple)) and (Path(str(inp)) / "zarr.json").is_file()


# ---------------------------------------------------------------------------- the lazy graph
def scoring_frame(run_dir, inp, device: str = "cpu", partition: int = PARTITION_IMAGES):
    """A lazy dask DataFrame of predictions, one partition per store chunk (or per `partition`
    images). Nothing runs until it is computed."""
    import dask.dataframe as dd

    from model.checkpoint import load_bundle
    run_dir = str(Path(run_dir).resolve())
    bundle = load_bundle(run_dir)  # on the client: validates the model and gives the output schema
    if is_store(inp):
        from leakstore.config import check_compatible
        from leakstore.store import FeatureStore
        store = FeatureStore.open(inp)
        check_compatible(bundle.featurize, store.config, f"store {inp}", ignore=("view",))
        parts = [(r.start, r.stop) for r in (store.chunk_rows(k) for k in range(store.n_chunks))]
        meta = _meta(bundle, {"row": np.int64})
        return dd.from_map(_store_part, parts, run_dir=run_dir, store_path=str(Path(inp).resolve()), device=device,
                           meta=meta, divisions=None, enforce_metadata=False)
    paths = list_inputs(inp)
    parts = [(s, paths[s:s + partition]) for s in range(0, len(paths), partition)]
    meta = _meta(bundle, {"row": np.int64, "sha256": object})
    return dd.from_map(_image_part, parts, run_dir=run_dir, device=device, meta=meta, enforce_metadata=False)


def _store_part(part, run_dir, store_path, device):
    return score_store_rows(run_dir, store_path, part[0], part[1], device)


def _image_part(part, run_dir, device):
    return score_image_paths(run_dir, part[1], part[0], device)


def _meta(bundle, extra: dict) -> pd.DataFrame:
    cols = {"path": object, "status": object, "error": object, "pred": object, "confidence": float,
            "is_unknown": "boolean", "log_density": float, "nearest_prototypes": object}
    cols.update({f"p_{c}": float for c in bundle.class_names})
    cols["nearest_generator"] = object
    cols.update(extra)
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in cols.items()})


def score(run_dir, inp, out: str | Path | None = None, *, workers: int | None = None, scheduler: str | None = None,
          device: str = "cpu", progress: bool = True, client=None) -> pd.DataFrame:
    """Score INPUT with the model in run_dir on a dask.distributed cluster; write Parquet to `out`."""
    from distributed import Client, progress as dask_progress
    own = client is None
    cluster = None
    if own:
        if scheduler:
            client = Client(scheduler)
        else:
            n = workers or max(1, (os.cpu_count() or 2))
            cluster = local_cluster(n)
            client = Client(cluster)
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        if not is_store(inp):
            inp = list_inputs(inp)  # listed once, here
        # image partitions: at most PARTITION_IMAGES, and at least four per worker so all stay busy
        part = PARTITION_IMAGES if is_store(inp) else max(8, min(PARTITION_IMAGES, -(-len(inp) // (4 * n_workers))))
        ddf = scoring_frame(run_dir, inp, device, partition=part)
        client.register_plugin(LoadModel(str(Path(run_dir).resolve()), device), name="leakstore-model")
        if progress:
            print(f"dask dashboard: {client.dashboard_link}", flush=True)
        fut = client.compute(ddf)
        if progress:
            dask_progress(fut)
            print(flush=True)
        df = fut.result().sort_values("row", kind="stable").reset_index(drop=True)
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(out, index=False)
    return df


def summarise(df: pd.DataFrame) -> dict:
    ok = df[df.status == "ok"]
    return {"rows": int(len(df)), "scored": int(len(ok)), "failed": int((df.status != "ok").sum()),
            "unknown": int(ok.is_unknown.sum()) if len(ok) else 0,
            "predicted": {str(k): int(v) for k, v in ok.pred.value_counts().items()}}
