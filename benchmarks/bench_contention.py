"""Training speed on an idle machine and with busy processes beside it, by thread setting.

    python -m benchmarks.bench_contention --json contention.json             # the demo's store, made if missing
    python -m benchmarks.bench_contention --store STORE.zarr --busy 2 --json contention.json

Each arm trains the demo's network (width 32, embedding 64, batch 32; one member, --epochs epochs,
store in memory) in a fresh `leakstore train` process, once on the idle machine and once beside
`--busy` processes that spin on a core each (default: one per core). Arms:

    default    leakstore's defaults: one torch thread per core, idle OpenMP threads sleep
               (OMP_WAIT_POLICY=PASSIVE, set by leakstore unless the user set it)
    spinning   the same threads, waiting as libgomp does when nothing is set (GOMP_SPINCOUNT=300000,
               what leakstore did before it set the policy)
    threads-1  --threads 1

Writes samples/s per arm, idle and busy, and busy/idle for each (the "ratio" fields).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ARMS = {"default": ({}, []), "spinning": ({"GOMP_SPINCOUNT": "300000"}, []), "threads-1": ({}, ["--threads", "1"])}
NETWORK = ["--members", "1", "--width", "32", "--embed-dim", "64", "--batch-size", "32", "--lr", "1e-3"]


def _train(store: Path, out: Path, epochs: int, env: dict, extra: list[str]) -> float:
    cmd = [
        sys.executable,
        "-m",
        "leakstore.cli",
        "train",
        str(store),
        "--out",
        str(out),
        "--overwrite",
        "--epochs",
        str(epochs),
        "--patience",
        str(epochs),
        "--no-progress",
        "--json",
        "--stream",
        "off",
        "--device",
        "cpu",
        *NETWORK,
        *extra,
    ]
    e = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "LEAKSTORE_THREADS")
    }
    p = subprocess.run(cmd, capture_output=True, text=True, env={**e, **env})
    if p.returncode:
        raise RuntimeError(f"train failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout)["samples_per_s"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--store", type=Path, default=None, help="a store (default: the demo's, made under --dir if missing)"
    )
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench-contention"))
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy processes beside training")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    store = args.store
    if store is None:
        store = args.dir / "leakstore-demo" / "features.zarr"
        if not (store / "zarr.json").exists():
            from leakstore.pipelines.demo import run_demo

            run_demo(args.dir / "leakstore-demo", epochs=2, progress=False)
    from leakstore.envinfo import collect

    res = {
        "store": str(store),
        "busy_processes": args.busy,
        "epochs": args.epochs,
        "network": NETWORK,
        "cpu_count": os.cpu_count(),
        "idle": {},
        "busy": {},
        "environment": collect(),
    }
    for mode in ("idle", "busy"):
        spinners = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy if mode == "busy" else 0)
        ]
        try:
            time.sleep(1 if spinners else 0)
            for name, (env, extra) in ARMS.items():
                res[mode][name] = _train(store, args.dir / f"run-{name}", args.epochs, env, extra)
                print(f"{mode:>5} {name:<10} {res[mode][name]:8.1f} samples/s", flush=True)
        finally:
            for p in spinners:
                p.kill()
                p.wait()
    res["ratio"] = {name: round(res["busy"][name] / res["idle"][name], 3) for name in ARMS}
    res["ratio_to_default_idle"] = {name: round(res["busy"][name] / res["idle"]["default"], 3) for name in ARMS}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: res[k] for k in ("idle", "busy", "ratio", "ratio_to_default_idle")}, indent=2))


if __name__ == "__main__":
    main()
