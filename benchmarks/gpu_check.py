"""Every GPU measurement in one prepared command, so the figures never wait for a GPU again.

    python -m benchmarks.gpu_check --out gpu-check          # on a GPU machine: more than 10 min at full size
    python -m benchmarks.gpu_check --out gc --budget-s 220 --size train_images=1024 --size score_rows=20000
                                                           # what a 15-minute lease holds (docs/speed.md)
    python -m benchmarks.gpu_check --smoke                  # every part at toy size on the CPU (CI runs it)

Parts, in this order (each a benchmark script of pipelines/, run in this process with the sizes
below; random weights, no download; the SD-VAE architecture at 256 px, under --smoke its shape at a
few channels at 64 px). The order puts first what has no GPU figure yet, so a run cut short by
--budget-s keeps the most needed ones:

    featurize_default    the default featurize config (residual, periodicity, pixel and noise spectra) at 256 px:
                         images/s, and the ratio to its own compiled compute (bf16 encoder + the residual's
                         float32 encoder, decoder and encoder) (bench_featurize --residual-bins 12)
    train                training 10 epochs from the store vs re-encoding every epoch in fp32 (bench_train)
    score_store          dask store scoring with 1, 2, 4, 8, 16 workers (bench_score)
    featurize            files -> store without the residual vs the compiled encoder alone (bench_featurize)
    featurize_cluster    featurize on a local dask cluster of 1 and 2 workers (bench_featurize_cluster)
    score_images         raw-image scoring, in process and with dask, on the device (bench_score_images)

Writes gpu_check.json (every part's results, seconds, and status: a failing part is recorded
and the others still run) and gpu_check.md (one table), and prints the table. Exit code 1 when a
part failed. `--size KEY=VALUE` shrinks a part to fit a short lease (the sizes are recorded in the
JSON); `--budget-s S` starts no part after S seconds and records the rest as skipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
import traceback
from pathlib import Path

FULL = {
    "res": 256,
    "images": 8192,
    "train_images": 2048,
    "score_rows": 100_000,
    "score_workers": "1,2,4,8,16",
    "score_images": 4096,
    "cluster_images": 2048,
}
SMOKE = {  # the fewest that still run every code path (partial batches, two workers, four classes)
    "res": 64,
    "images": 16,
    "train_images": 32,
    "score_rows": 1_000,
    "score_workers": "1,2",
    "score_images": 16,
    "cluster_images": 8,
}


def _labelled(root: Path, n: int, res: int) -> Path:
    """A manifest over bench_featurize's random PNGs in four classes, splits drawn by leakstore."""
    from benchmarks.bench_featurize import make_images

    files = sorted((make_images(root, n, res) / "gen").glob("*.png"))[:n]
    lines = ["path,label"] + [f"{f},class{i % 4}" for i, f in enumerate(files)]
    (root / "labelled.csv").write_text("\n".join(lines) + "\n")
    return root / "labelled.csv"


def _tiny_sd(root: Path) -> str:
    """The SD VAE's shape (four stages, 8x downsampling, 4 latent channels) at a few channels: --smoke runs
    every code path with the full run's latent shapes in a fraction of the SD VAE's CPU time."""
    import torch
    from diffusers import AutoencoderKL

    from benchmarks.bench_featurize import SD_VAE

    vae_dir = root / "sd-vae-tiny"
    if not (vae_dir / "config.json").exists():
        torch.manual_seed(0)
        tiny = {**SD_VAE, "block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 8}
        AutoencoderKL(**tiny).save_pretrained(vae_dir)
    return str(vae_dir)


def _parts(out: Path, s: dict, device: str, smoke: bool):
    from benchmarks import bench_featurize, bench_featurize_cluster, bench_score, bench_score_images, bench_train
    from benchmarks.bench_train import _sd_random

    vae = _tiny_sd(out) if smoke else _sd_random(out)
    common = ["--resolution", str(s["res"]), "--device", device]
    feat = (
        ["--out", str(out / "featurize"), "--images", str(s["images"])]
        + common
        + (["--batch", "4", "--skip-anchors", "--vae-dir", vae] if smoke else [])
    )
    yield (
        "featurize_default",
        lambda: bench_featurize.main(
            [
                "--out",
                str(out / "featurize-default"),
                "--images",
                str(s["images"]),
                "--skip-anchors",
                "--residual-bins",
                "12",
            ]
            + common
            + (["--batch", "4", "--vae-dir", vae] if smoke else [])
        ),
        out / "featurize-default" / f"bench{s['res']}.json",
    )
    yield (
        "train",
        lambda: bench_train.main(
            [
                "synthetic",
                "--vae",
                vae if smoke else "sd-random",
                "--images",
                str(s["train_images"]),
                "--reference-precision",
                "fp32",
                "--out",
                str(out / "train"),
            ]
            + common
            + (["--epochs", "1", "--loader-workers", "0"] if smoke else [])
        ),
        out / "train" / "bench_train.json",
    )
    yield (
        "score_store",
        lambda: bench_score.main(
            ["--rows", str(s["score_rows"]), "--workers", s["score_workers"], "--out", str(out / "score-store")]
            + (["--chunk", "256", "--members", "1"] if smoke else [])
        ),
        out / "score-store" / "bench_score.json",
    )
    yield "featurize", lambda: bench_featurize.main(feat), out / "featurize" / f"bench{s['res']}.json"
    data = _labelled(out / "featurize", max(s["images"], 32), s["res"])  # score_images trains on it: 8 per class
    yield (
        "featurize_cluster",
        lambda: bench_featurize_cluster.main(
            [
                str(data),
                "--vae",
                vae,
                "--resolution",
                str(s["res"]),
                "--images",
                str(s["cluster_images"]),
                "--cluster",
                "1,2",
                "--device",
                device,
                "--out",
                str(out / "featurize-cluster"),
            ]
            + (["--residual-bins", "0"] if smoke else [])
        ),
        out / "featurize-cluster" / "results.json",
    )
    yield (
        "score_images",
        lambda: bench_score_images.main(
            [
                str(data),
                "--vae",
                vae,
                "--images",
                str(s["score_images"]),
                "--workers",
                "1" if smoke else "1,4",
                "--out",
                str(out / "score-images"),
            ]
            + common
            + (["--members", "1"] if smoke else [])
        ),
        out / "score-images" / "bench_score_images.json",
    )


def _table(results: dict) -> str:
    rows = ["| part | status | seconds | figures |", "|---|---|---|---|"]
    pick = {
        "featurize": ("compiled_encoder", "pipeline", "pipeline_over_compiled"),
        "featurize_default": ("compiled_compute", "pipeline", "pipeline_over_compiled"),
        "train": ("train_from_store_s", "train_reencoding_s", "speedup_training", "speedup_end_to_end"),
        "score_store": ("rows_per_s",),
        "score_images": ("ms_per_image",),
        "featurize_cluster": ("rates",),
    }
    for name, r in results["parts"].items():
        figs = r.get("result") or {}
        shown = "; ".join(f"{k} {_fmt(figs[k])}" for k in pick.get(name, ()) if k in figs) or r.get("error", "")
        rows.append(f"| {name} | {r['status']} | {r['seconds']:.0f} | {shown} |")
    return "\n".join(rows)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:,.0f}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-check"))
    ap.add_argument("--smoke", action="store_true", help="every part at toy size on the CPU (what CI runs)")
    ap.add_argument("--only", default="", help="comma-separated part names (default: all)")
    ap.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one size of the run (keys: {', '.join(FULL)}); repeatable",
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=0.0,
        help="start no part after this many seconds (0: no limit); skipped parts are recorded as such",
    )
    a = ap.parse_args(argv)
    import torch

    device = "cpu" if a.smoke or not torch.cuda.is_available() else "cuda"
    if not a.smoke and device == "cpu":
        print("no CUDA device here: run with --smoke for the CPU check, or on a GPU machine", flush=True)
        return 2
    sizes = dict(SMOKE if a.smoke else FULL)
    for kv in a.size:
        key, _, value = kv.partition("=")
        if key not in sizes or not value:
            ap.error(f"--size {kv}: expected KEY=VALUE with KEY one of {', '.join(sizes)}")
        sizes[key] = value if isinstance(sizes[key], str) else int(value)
    a.out.mkdir(parents=True, exist_ok=True)
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "smoke": a.smoke,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "sizes": sizes,
        "parts": {},
    }
    only = {p for p in a.only.split(",") if p}
    t_all = time.perf_counter()
    for name, run, produced in _parts(a.out, sizes, device, a.smoke):
        if only and name not in only:
            continue
        if a.budget_s and time.perf_counter() - t_all > a.budget_s:
            results["parts"][name] = {
                "status": "skipped",
                "error": f"not started: past --budget-s {a.budget_s:g}",
                "seconds": 0.0,
            }
            continue
        print(f"\n=== {name}", flush=True)
        t = time.perf_counter()
        try:
            run()
            r = {"status": "ok", "result": json.loads(produced.read_text())}
        except Exception as e:  # one part's failure is recorded; the others still run
            r = {
                "status": "failed",
                "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                "traceback": traceback.format_exc(limit=5),
            }
        r["seconds"] = round(time.perf_counter() - t, 1)
        results["parts"][name] = r
        (a.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    results["seconds"] = round(time.perf_counter() - t_all, 1)
    table = _table(results)
    (a.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    (a.out / "gpu_check.md").write_text(
        f"gpu_check {results['date']} on {results['device']} "
        f"({'smoke' if a.smoke else 'full'}, {results['seconds']} s)\n\n{table}\n"
    )
    print("\n" + table, flush=True)
    return 1 if any(r["status"] == "failed" for r in results["parts"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
