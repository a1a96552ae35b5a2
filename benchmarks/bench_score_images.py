"""Per-image cost of scoring raw images: in process (featurize + model, nothing else) versus
dask workers that featurize and score their partitions.

    python -m benchmarks.bench_score_images DATA --vae taef2 --resolution 128 --images 4096 --workers 1,2,4,8

DATA is a manifest or folder of images (LeakBench, say). A small model is featurized and
trained on them first (or reused from --out); the scored list repeats DATA's files until it
has --images paths, so every path is decoded, encoded and scored for real. Each dask size
gets a fresh LocalCluster warmed up on one partition per worker (imports, model and encoder
load), then `score()` is timed end to end; the in-process arm is `Attributor.score_many`,
warmed up the same way. Prints ms/image per arm and writes bench_score_images.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--vae", default="taef2")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument(
        "--members", type=int, default=3, help="networks in the model scored (train --members; 3 is the default model)"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-score-images"))
    args = ap.parse_args(argv)
    from distributed import Client

    from leakstore.api.attributor import Attributor
    from leakstore.config import RunOptions
    from leakstore.featurize.api import build_config
    from leakstore.featurize.datasets import build_catalog
    from leakstore.featurize.runner import featurize_store
    from leakstore.featurize.vae import load_encoder
    from leakstore.model.config import ModelConfig
    from leakstore.model.train import train
    from leakstore.pipelines.cluster import local_cluster
    from leakstore.pipelines.score import LoadModel, score, scoring_frame

    args.out.mkdir(parents=True, exist_ok=True)
    cat = build_catalog(args.data)
    run = args.out / "model"
    if not (run / "model.json").exists():
        enc = load_encoder(args.vae)
        fcfg = build_config(
            enc,
            resolution=args.resolution,
            device=args.device,
            residual_bins=0,
            period=0,
            spectrum_bins=0,
            noise_bins=0,
            cooccurrence=0,
        )  # latents and spectra, as first measured
        featurize_store(
            cat,
            args.out / "store.zarr",
            fcfg,
            enc,
            RunOptions(device=args.device, workers=2, progress=False, overwrite=True, compile=False),
        )
        train(
            args.out / "store.zarr",
            run,
            ModelConfig(epochs=2, members=args.members),
            device=args.device,
            progress=False,
            overwrite=True,
        )
    paths = [cat.paths[i % len(cat)] for i in range(args.images)]
    res = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "cpus": os.cpu_count(),
        "images": len(paths),
        "members": args.members,
        "vae": args.vae,
        "resolution": args.resolution,
        "ms_per_image": {},
    }

    a = Attributor.load(run, device=args.device)
    a.score_many(paths[:64])  # warm: kernels, first decodes
    t = time.perf_counter()
    df = a.score_many(paths)
    dt = time.perf_counter() - t
    assert len(df) == len(paths) and (df.status == "ok").all()
    res["ms_per_image"]["in_process"] = 1000 * dt / len(paths)
    print(f"in process (featurize + model): {res['ms_per_image']['in_process']:7.2f} ms/image", flush=True)
    del a

    for n in [int(x) for x in args.workers.split(",")]:
        with local_cluster(n) as c, Client(c) as cl:
            cl.register_plugin(LoadModel(str(run.resolve()), args.device), name="leakstore-model")
            cl.compute(scoring_frame(run, paths[: 16 * n], args.device, partition=16).partitions[:n]).result()  # warm
            t = time.perf_counter()
            df = score(run, paths, client=cl, device=args.device, progress=False)
            dt = time.perf_counter() - t
        assert len(df) == len(paths) and (df.status == "ok").all()
        res["ms_per_image"][f"dask_{n}"] = 1000 * dt / len(paths)
        print(f"dask, {n:>2} workers:               {res['ms_per_image'][f'dask_{n}']:7.2f} ms/image", flush=True)
    (args.out / "bench_score_images.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
