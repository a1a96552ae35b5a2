"""Scoring throughput with and without reading the files' metadata (featurize.provenance).

    python -m benchmarks.bench_provenance RUN_DIR IMAGES [--reps 3]

Scores the same images in one process (Predictor.score_paths), alternating provenance on and off
`--reps` times (alternating which goes first) after one warm-up each, and prints the median
images/s of both and their ratio (the issue's bar:
with provenance >= 0.9x without). The metadata is read from the bytes the loader already holds."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("images", help="A folder, manifest or glob of images.")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    from leakstore.api.predictor import Predictor
    from leakstore.featurize.datasets import list_inputs

    paths = list_inputs(args.images)
    pred = Predictor.load(args.run_dir, args.device)
    for on in (True, False):  # warm-up: the encoder, the kernels, the file cache
        pred.score_paths(paths[:16], provenance=on)
    secs = {True: [], False: []}
    for r in range(args.reps):
        for on in (True, False) if r % 2 == 0 else (False, True):  # alternate which goes first
            t = time.perf_counter()
            df = pred.score_paths(paths, provenance=on)
            if on:
                claims = df.meta_source[df.meta_source != ""].value_counts().to_dict()
            secs[on].append(time.perf_counter() - t)
    rate = {on: len(paths) / float(np.median(v)) for on, v in secs.items()}
    res = {
        "images": len(paths),
        "with_provenance_images_per_s": round(rate[True], 2),
        "without_images_per_s": round(rate[False], 2),
        "ratio": round(rate[True] / rate[False], 3),
        "claims": claims,
    }
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
