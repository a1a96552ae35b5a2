"""Scaling of dask scoring over a store: rows/s with 1, 2, 4, ... local worker processes.

    python -m benchmarks.bench_score --rows 100000 --out /tmp/bench-score

Builds a synthetic store (planted leaks through the real store API: the test fixture
tests/synthetic.py, so run it from the repository root) and a small trained model, then times
`score()` end to end (cluster start excluded: each size gets a fresh LocalCluster, warmed up on
one partition first). Efficiency(n) = rate(n) / (n * rate(1)).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-score"))
    ap.add_argument("--workers", default="")
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument(
        "--members", type=int, default=3, help="networks in the model scored (train --members; 3 is the default model)"
    )
    args = ap.parse_args(argv)
    from distributed import Client

    from leakstore.config import FeaturizeConfig
    from leakstore.model.config import ModelConfig
    from leakstore.model.train import train
    from leakstore.pipelines.cluster import local_cluster
    from leakstore.pipelines.score import score, scoring_frame
    from tests.synthetic import VAE, planted_store

    cfg = FeaturizeConfig(
        vae=VAE, resolution=128, residual_bins=0, period=0, spectrum_bins=0, noise_bins=0, cooccurrence=0
    )
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / f"s{args.rows}.zarr"
    if not store.exists():
        t = time.perf_counter()
        planted_store(store, per_class=args.rows // 4, cfg=cfg, chunk=args.chunk)
        print(f"store of {args.rows} rows in {time.perf_counter() - t:.0f} s", flush=True)
    run = args.out / "model"
    if not (run / "model.json").exists():
        train(
            store,
            run,
            ModelConfig(epochs=1, width=32, embed_dim=64, members=args.members),
            progress=False,
            overwrite=True,
        )
    cpus = os.cpu_count() or 2
    sizes = (
        [int(x) for x in args.workers.split(",")] if args.workers else [n for n in (1, 2, 4, 8, 16, 32) if n <= cpus]
    )
    rows = {}
    for n in sizes:
        with local_cluster(n) as c, Client(c) as cl:
            from leakstore.pipelines.score import LoadModel

            cl.register_plugin(LoadModel(str(run.resolve())), name="leakstore-model")
            cl.compute(scoring_frame(run, store).partitions[:n]).result()  # warm: imports, model, first reads
            t = time.perf_counter()
            df = score(run, store, client=cl, progress=False)
            dt = time.perf_counter() - t
        assert len(df) == args.rows
        rows[n] = args.rows / dt
        eff = rows[n] / (n * rows[sizes[0]] / sizes[0])
        print(f"{n:>3} workers: {rows[n]:9.0f} rows/s  efficiency {eff:.2f}", flush=True)
    (args.out / "bench_score.json").write_text(
        json.dumps({"rows": args.rows, "cpus": cpus, "members": args.members, "rows_per_s": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
