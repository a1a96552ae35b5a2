"""Featurize on a dask cluster: one task per store chunk.

    leakstore featurize DATA STORE.zarr --cluster 4                  # a LocalCluster of 4 worker processes
    leakstore featurize DATA STORE.zarr --scheduler tcp://host:8786  # workers started with `dask worker`

The client builds the catalog and creates the store (or opens the one to resume); each task
featurizes and writes one whole chunk, reading its rows from the store itself, on a worker
that loaded the encoder once (`LoadEncoder`). Tasks are pure functions of (store, chunk):
chunks are written whole, data before status, in batches aligned to the chunk, so a chunk run
again after a lost worker is rewritten with the same bytes, and the finished store equals a
single-process run. GPU nodes: one worker per GPU (`dask worker ADDR --nworkers 1 --nthreads 1`
with CUDA_VISIBLE_DEVICES set per worker, or dask-cuda's `dask cuda worker` where installed).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from leakstore.config import BATCH_CPU, RunOptions
from leakstore.featurize.runner import FeaturizeReport
from leakstore.store import FAILED, FeatureStore

_CACHE: dict[str, object] = {}
_LOCK = threading.Lock()

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency
    WorkerPlugin = object


def _runner(store: FeatureStore, device: str, batch: int, worker_number: int | None = None):
    """The encoder and its DeviceFeaturizer for this store's config, built once per worker process
    (`worker_number`: the dask worker's number, which picks its GPU on a local cluster)."""
    from leakstore.device import resolve_device, worker_process_device
    from leakstore.featurize.runner import DeviceFeaturizer
    from leakstore.featurize.vae import encoder_for_config

    key = f"{store.config.hash}|{store.config.decoder}|{device}|{batch}"
    with _LOCK:
        if key not in _CACHE:
            # in a worker: a local cluster's GPU workers spread over the GPUs, one CPU thread per process
            dev = (
                worker_process_device(device, worker_number)
                if os.environ.get("LEAKSTORE_WORKER")
                else resolve_device(device)
            )
            enc = encoder_for_config(store.config)
            _CACHE[key] = (
                enc,
                DeviceFeaturizer(enc, store.config, dev, batch, use_compile=dev.type == "cuda", pad=True),
            )
        return _CACHE[key]


class LoadEncoder(WorkerPlugin):
    """Loads the store's encoder into each worker when it starts (or joins later)."""

    def __init__(self, store_path: str, device: str, batch: int):
        self.store_path, self.device, self.batch = store_path, device, batch

    def setup(self, worker):
        os.environ["LEAKSTORE_WORKER"] = "1"
        from leakstore.device import number_of

        _runner(FeatureStore.open(self.store_path), self.device, self.batch, number_of(worker))


def _catalog(store: FeatureStore):
    """The store's catalog, read and fingerprinted once per worker (not once per chunk: reading every
    path for each of a large store's chunks would make the whole job quadratic)."""
    key = f"catalog|{store.path.resolve()}|{store.attrs['store_id']}"
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = store.catalog()
        return _CACHE[key]


def featurize_chunk(store_path: str, k: int, device: str, batch: int, max_pixels: int) -> dict:
    """Featurize and write chunk k of the store (skipped when already done)."""
    from leakstore.featurize.runner import featurize_store

    store = FeatureStore.open(store_path)
    enc, runner = _runner(store, device, batch)
    t = time.perf_counter()
    rep = featurize_store(
        _catalog(store),
        store_path,
        store.config,
        enc,
        RunOptions(device=device, batch_size=batch, workers=0, progress=False, chunks=(k,), max_pixels=max_pixels),
        runner=runner,
    )
    return {
        "chunk": k,
        "processed": rep.processed,
        "done": rep.done,
        "failed": rep.failed,
        "failures": rep.failures,
        "seconds": time.perf_counter() - t,
    }


def featurize_on_dask(
    catalog,
    store_path,
    cfg,
    encoder,
    opts: RunOptions,
    *,
    cluster: int | None = None,
    scheduler: str | None = None,
    client=None,
) -> FeaturizeReport:
    """Featurize `catalog` into the store with one dask task per pending chunk."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    from leakstore.device import featurize_workers, resolve_device
    from leakstore.pipelines.cluster import connect

    store = FeatureStore.create(
        store_path, cfg, catalog, chunk_size=opts.chunk_size, codec=opts.codec, overwrite=opts.overwrite
    )
    todo = store.todo_chunks()
    dev = str(resolve_device(opts.device)) if opts.device != "auto" else opts.device
    batch = opts.batch_size or BATCH_CPU
    own = client is None
    local = None
    t0 = time.perf_counter()
    done = failed = processed = 0
    failures: list[dict] = []
    if todo:
        if own:
            if cluster and not scheduler:
                cluster, notice = featurize_workers(cluster, dev)
                if notice:
                    print(f"featurize: {notice}", file=sys.stderr)
            client, local = connect(scheduler, cluster)
        try:
            client.register_plugin(LoadEncoder(str(Path(store_path).resolve()), dev, batch), name="leakstore-encoder")
            futures = [
                client.submit(
                    featurize_chunk,
                    str(Path(store_path).resolve()),
                    k,
                    dev,
                    batch,
                    opts.max_pixels,
                    key=f"featurize-{store.attrs['store_id']}-{k}",
                    pure=False,
                )
                for k in todo
            ]
            n_rows = sum(len(store.chunk_rows(k)) for k in todo)
            bar = tqdm(
                total=n_rows,
                unit="img",
                desc=f"featurize {Path(store_path).name} ({len(todo)} chunks)",
                disable=not opts.progress,
                dynamic_ncols=True,
            )
            try:
                for fut in as_completed(futures):
                    r = fut.result()
                    processed, done, failed = processed + r["processed"], done + r["done"], failed + r["failed"]
                    failures += r["failures"]
                    bar.update(r["processed"])
            finally:
                bar.close()
                client.cancel(futures)
        finally:
            if own:
                client.close()
                if local is not None:
                    local.close()
    seconds = time.perf_counter() - t0
    st = store.status()
    return FeaturizeReport(
        store=str(store_path),
        config_hash=cfg.hash,
        shard="dask",
        n_images=len(catalog),
        already_done=len(catalog) - processed,
        processed=processed,
        done=done,
        failed=failed,
        failed_in_store=int((st == FAILED).sum()),
        seconds=round(seconds, 3),
        images_per_s=round(processed / seconds, 1) if processed and seconds > 0 else 0.0,
        device=dev,
        builtin_encoder=cfg.vae.builtin,
        failures=failures,
    )
