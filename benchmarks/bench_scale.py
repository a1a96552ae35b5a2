"""Memory and speed of training and scoring as the store grows (no VAE: the store is written directly).

    python -m benchmarks.bench_scale --rows 20000,200000 --json scale.json

For each size, a synthetic store with the default featurize config's arrays at 256 px with the SD VAE's
shapes (4 x 32 x 32 latents, 5 timesteps, residual, periodicity, pixel and noise spectra; four classes
with planted low-frequency biases, split 80/10/10) is written through the store API, then, each in a
process of its own so that its peak resident memory is its own:

- train streamed from the store (`--stream on`): `train_peak_rss_mb`, `train_samples_per_s`;
- train with the store loaded into memory (`--stream off`): `in_memory_samples_per_s`,
  `in_memory_peak_rss_mb` (skipped, null, when the features would not fit in half the RAM);
- score the store on a local dask cluster into one Parquet file: `score_client_peak_rss_mb` (the
  client process, scheduler included; the workers are processes of their own), `score_rows_per_s`.

Both training arms run one epoch of `--epoch-samples` samples (the same for every size, so samples/s
compare), one member, the network `--width 16 --embed-dim 32` by default: at the default width (64) the
2-core CPU spends its time in convolutions (about 70 samples/s training, 180 rows/s scoring per process
at these shapes) and 200,000 rows would not score within the bench's 25 minutes; a small network also
leaves the store's reading a larger share of each step, the harder case for streaming. OUT holds one list
per field, one entry per size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = ("real", "gen-a", "gen-b", "gen-c")


def config():
    from leakstore.config import FeaturizeConfig, VAEIdentity
    from leakstore.featurize.vae import PRESETS

    p = PRESETS["sd21"]
    vae = VAEIdentity(
        name="sd21",
        source=p.hub_id,
        subfolder=p.subfolder,
        kind=p.kind,
        latent_channels=p.latent_channels,
        scaling_factor=p.scaling_factor,
        revision="synthetic",
    )
    return FeaturizeConfig(vae=vae, resolution=256, decoder="synthetic")


def write_store(path: Path, n: int, chunk: int = 256, seed: int = 0):
    """A synthetic store of n rows at the shapes of `config()`; reused when already complete."""
    from leakstore.store import DONE, Catalog, FeatureStore, array_specs, data_arrays

    cfg = config()
    if path.exists():
        st = FeatureStore.open(path)
        if st.n == n and (st.status() == DONE).all():
            return st
    labels = (np.arange(n) % len(CLASSES)).astype(np.int16)
    j = (np.arange(n) // len(CLASSES)) % 10
    splits = np.where(j < 8, 0, np.where(j == 8, 1, 2)).astype(np.int8)
    cat = Catalog(
        tuple(f"/synthetic/{CLASSES[lab]}/{i}.png" for i, lab in enumerate(labels)),
        labels,
        splits,
        ("",) * n,
        CLASSES,
        "real",
        "synthetic",
    )
    st = FeatureStore.create(path, cfg, cat, chunk_size=chunk, overwrite=True)
    specs = array_specs(n, cfg)
    rng = np.random.default_rng(seed)
    bias = np.random.default_rng(1).normal(0, 0.5, (len(CLASSES), cfg.latent_shape[0]))
    for k in range(st.n_chunks):
        r = st.chunk_rows(k)
        m = len(r)
        data = {}
        for name in data_arrays(cfg):
            spec, shape = specs[name]
            if spec.dtype == "str":
                data[name] = np.array(["0" * 64 if name == "sha256" else ""] * m)
                continue
            x = rng.standard_normal((m,) + shape[1:], dtype=np.float32)
            if name in ("latent0", "latents"):  # a per-class channel offset: something to learn
                off = bias[labels[r.start : r.stop]]
                x += off.reshape((m,) + (1,) * (x.ndim - 4) + (off.shape[1], 1, 1))
            data[name] = x.astype(spec.dtype)
        st.write_chunk(k, data, np.full(m, DONE, dtype=np.uint8))
    return st


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_train(store: str, out: str, stream: str, epoch_samples: int, width: int, embed_dim: int) -> dict:
    from leakstore.model.config import ModelConfig
    from leakstore.model.train import train

    cfg = ModelConfig(members=1, epochs=1, patience=1, epoch_samples=epoch_samples, width=width, embed_dim=embed_dim)
    t0 = time.perf_counter()
    s = train(store, out, cfg, overwrite=True, progress=False, stream=stream, device="cpu")
    return {
        "samples_per_s": s["samples_per_s"],
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "streamed": s["streamed"],
    }


def child_score(run: str, store: str, out: str, workers: int) -> dict:
    from distributed import Client

    from leakstore.pipelines.cluster import local_cluster
    from leakstore.pipelines.score import score

    with local_cluster(workers) as cluster, Client(cluster) as client:
        t0 = time.perf_counter()
        counts = score(run, store, out, client=client, progress=False)
        dt = time.perf_counter() - t0
    return {
        "rows_per_s": round(counts["rows"] / dt, 1),
        "seconds": round(dt, 1),
        "rows": counts["rows"],
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _run_child(fn: str, *args) -> dict:
    code = f"import json, benchmarks.bench_scale as b; print('RESULT' + json.dumps(b.{fn}(*{list(args)!r})))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    raise RuntimeError(f"{fn} failed:\n{p.stderr[-3000:]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="20000,200000", help="store sizes, comma-separated")
    ap.add_argument("--json", type=Path, required=True, help="where the results go")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench-scale"), help="stores and runs (kept, reused)")
    ap.add_argument("--epoch-samples", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 2))
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--embed-dim", type=int, default=32)
    args = ap.parse_args(argv)
    from leakstore.envinfo import collect
    from leakstore.model.rows import memory_row_bytes, physical_memory

    args.dir.mkdir(parents=True, exist_ok=True)
    sizes = [int(x) for x in args.rows.split(",")]
    res = {
        "rows": sizes,
        "train_peak_rss_mb": [],
        "train_samples_per_s": [],
        "in_memory_samples_per_s": [],
        "in_memory_peak_rss_mb": [],
        "score_client_peak_rss_mb": [],
        "score_rows_per_s": [],
        "store_gb": [],
        "write_seconds": [],
        "epoch_samples": args.epoch_samples,
        "network": {"width": args.width, "embed_dim": args.embed_dim},
        "environment": collect(),
    }
    for n in sizes:
        path = args.dir / f"store-{n}.zarr"
        t0 = time.perf_counter()
        st = write_store(path, n)
        res["write_seconds"].append(round(time.perf_counter() - t0, 1))
        names = [
            a
            for a in ("latent0", "latents", "spectra", "residual", "periodicity", "noise_spectrum", "pixel_spectrum")
            if a in st.group
        ]
        res["store_gb"].append(round(n * memory_row_bytes(st, names) / 1e9, 2))
        print(
            f"{n} rows: store {res['store_gb'][-1]} GB in memory, written in {res['write_seconds'][-1]} s", flush=True
        )
        s = _run_child(
            "child_train",
            str(path),
            str(args.dir / f"run-{n}-stream"),
            "on",
            args.epoch_samples,
            args.width,
            args.embed_dim,
        )
        res["train_peak_rss_mb"].append(s["peak_rss_mb"])
        res["train_samples_per_s"].append(s["samples_per_s"])
        print(f"  streamed training: {s}", flush=True)
        if n * memory_row_bytes(st, names) < 0.5 * physical_memory():
            m = _run_child(
                "child_train",
                str(path),
                str(args.dir / f"run-{n}-memory"),
                "off",
                args.epoch_samples,
                args.width,
                args.embed_dim,
            )
            print(f"  in-memory training: {m}", flush=True)
        else:
            m = {"samples_per_s": None, "peak_rss_mb": None}
            print("  in-memory training: skipped (the features would take more than half the RAM)", flush=True)
        res["in_memory_samples_per_s"].append(m["samples_per_s"])
        res["in_memory_peak_rss_mb"].append(m["peak_rss_mb"])
        c = _run_child(
            "child_score",
            str(args.dir / f"run-{n}-stream"),
            str(path),
            str(args.dir / f"scores-{n}.parquet"),
            args.workers,
        )
        res["score_client_peak_rss_mb"].append(c["peak_rss_mb"])
        res["score_rows_per_s"].append(c["rows_per_s"])
        print(f"  scoring: {c}", flush=True)
        del st
    if len(sizes) > 1:
        res["growth"] = {k: round(res[k][-1] / res[k][0], 2) for k in ("train_peak_rss_mb", "score_client_peak_rss_mb")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
