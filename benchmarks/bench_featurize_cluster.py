"""Scaling of featurizing on a local dask cluster: images/s with 1, 2, ... worker processes.

    python -m benchmarks.bench_featurize_cluster lb128/manifest.csv --images 192 --cluster 1,2

TAEF2 (set LEAKSTORE_WEIGHTS) at 128 px with the residual, as `leakstore featurize` defaults to.
Each size gets a fresh LocalCluster (one thread per worker) whose workers first featurize a
warm-up store of 16 images with the same config (encoder loaded, kernels warm); then a new store of
--images images is timed from the first task to the last. Efficiency(n) = rate(n) / (n rate(1)).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", help="a manifest or class folders")
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--cluster", default="1,2")
    ap.add_argument("--vae", default="taef2")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--residual-bins", type=int, default=12)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: every worker on the visible GPU")
    ap.add_argument("--out", type=Path, default=None, help="write results.json here")
    a = ap.parse_args(argv)
    import dataclasses

    import numpy as np
    from distributed import Client

    from leakstore.config import RunOptions
    from leakstore.featurize.api import prepare
    from leakstore.pipelines.cluster import local_cluster
    from leakstore.pipelines.featurize_dask import featurize_on_dask

    catalog, encoder, cfg = prepare(
        a.data, vae=a.vae, resolution=a.resolution, residual_bins=a.residual_bins, device=a.device
    )
    n_warm = min(16, a.images)
    pick = np.random.default_rng(0).permutation(len(catalog))[: a.images + n_warm]

    def sub(idx):
        return dataclasses.replace(
            catalog,
            paths=tuple(catalog.paths[i] for i in idx),
            labels=catalog.labels[idx],
            splits=catalog.splits[idx],
            groups=tuple(catalog.groups[i] for i in idx),
        )

    warm, timed = sub(pick[:n_warm]), sub(pick[n_warm:])
    tmp = Path(tempfile.mkdtemp(prefix="bench-fc-"))
    opts = RunOptions(device=a.device, chunk_size=a.chunk_size, progress=False)
    results = {
        "images": len(timed),
        "vae": a.vae,
        "resolution": a.resolution,
        "residual_bins": a.residual_bins,
        "chunk_size": a.chunk_size,
        "rates": {},
    }
    try:
        for n in (int(x) for x in a.cluster.split(",")):
            with local_cluster(n) as c, Client(c) as client:
                featurize_on_dask(
                    warm,
                    tmp / f"warm{n}.zarr",
                    cfg,
                    encoder,
                    dataclasses.replace(opts, chunk_size=max(1, n_warm // n)),
                    client=client,
                )
                t = time.perf_counter()
                rep = featurize_on_dask(timed, tmp / f"run{n}.zarr", cfg, encoder, opts, client=client)
                rate = rep.processed / (time.perf_counter() - t)
            results["rates"][n] = round(rate, 2)
            base = results["rates"][min(results["rates"])]
            print(
                f"{n} workers: {rate:7.2f} images/s  speed-up {rate / base:.2f}  efficiency {rate / (n * base):.2f}",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
