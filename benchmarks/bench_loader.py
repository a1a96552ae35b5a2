"""What one featurize loader process spends per image, by step, on one CPU thread.

    python -m benchmarks.bench_loader --sizes 256,512,1024 --json loader.json

The loader (featurize.runner.ImageRows) reads, hashes and decodes each file, computes the
pixel-domain features at the image's own size (periodicity, pixel spectrum, noise spectrum,
co-occurrences), resizes to the VAE's resolution and draws the seeded noise. This times each step
on synthetic PNGs (smooth content with grain) of each native size with the default featurize
config at 256 px, and reports ms per image and the images/s that `--workers W` loader processes
can feed a GPU at most (W / per-image seconds), so that a GPU pipeline figure can be read against
it: the loader keeps up where this exceeds the device's compiled compute.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np


def _png(side: int, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = Image.fromarray((rng.random((side // 16, side // 16, 3)) * 255).astype(np.uint8)).resize(
        (side, side), Image.Resampling.BICUBIC
    )
    a = np.clip(np.asarray(base).astype(np.int16) + rng.integers(-6, 7, (side, side, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--workers", type=int, default=15, help="loader processes to project for (a 16-core GPU node: 15)")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    import hashlib

    import torch

    torch.set_num_threads(1)
    from leakstore.config import DEFAULT_MAX_PIXELS, FeaturizeConfig, VAEIdentity
    from leakstore.features import features_for
    from leakstore.features.noising import seeded_noise
    from leakstore.featurize.images import decode_image, prepare

    cfg = FeaturizeConfig(vae=VAEIdentity("sd21", "synthetic", "kl", 4), decoder="synthetic")
    native = [f for f in features_for(cfg) if f.native is not None]
    res = {
        "config": {
            "resolution": cfg.resolution,
            "period": cfg.period,
            "spectrum_bins": cfg.spectrum_bins,
            "noise_bins": cfg.noise_bins,
            "cooccurrence": cfg.cooccurrence,
        },
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "sizes": {},
    }
    for side in (int(s) for s in args.sizes.split(",")):
        files = [_png(side, i) for i in range(args.images)]
        steps: dict[str, float] = {}

        def timed(name, fn):
            t = time.perf_counter()
            out = fn()
            steps[name] = steps.get(name, 0.0) + time.perf_counter() - t
            return out

        warm = decode_image(files[0], "bench.png", max_pixels=DEFAULT_MAX_PIXELS, min_side=cfg.min_side)
        for f in native:  # first calls import and plan: not a per-image cost
            f.native(warm, cfg)
        for data in files:
            sha = timed("hash", lambda: hashlib.sha256(data).hexdigest())
            arr = timed(
                "decode", lambda: decode_image(data, "bench.png", max_pixels=DEFAULT_MAX_PIXELS, min_side=cfg.min_side)
            )
            for f in native:
                timed(f.name, lambda: f.native(arr, cfg))
            timed("resize", lambda: prepare(arr, cfg.resolution, cfg.resize_policy, cfg.resample, "bench.png"))
            timed("noise", lambda: seeded_noise(sha, cfg.seed, (len(cfg.timesteps),) + cfg.latent_shape))
        ms = {k: round(1000 * v / len(files), 2) for k, v in steps.items()}
        total = sum(steps.values()) / len(files)
        res["sizes"][str(side)] = {
            "ms_per_image": ms,
            "total_ms": round(1000 * total, 2),
            "pixel_features_ms": round(sum(ms[f.name] for f in native), 2),
            "images_per_s_one_process": round(1 / total, 1),
            f"images_per_s_{args.workers}_processes": round(args.workers / total, 1),
        }
        print(side, json.dumps(res["sizes"][str(side)]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
