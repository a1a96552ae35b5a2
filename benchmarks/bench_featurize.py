"""Featurize throughput, measured side by side in one run (docs/speed.md).

    python -m benchmarks.bench_featurize --resolution 256 --images 32768 --out /tmp/bench

Builds an SD-VAE-architecture encoder with random weights (same cost as the real one) as a
local diffusers folder, writes PNG files, then times:
  naive     diffusers `vae.encode(x).latent_dist.mean`, fp32, batch 1
  eager     the same in bf16, batch 64, channels_last
  compiled  leakstore's LatentEncoder, torch.compile (default mode), bf16, on device-resident uint8
  compute   with --residual-bins > 0 (the default featurize config): everything the device computes per
            batch, compiled, on device-resident uint8: the bf16 encoder, then the residual's float32
            encoder, decoder and encoder again; the pipeline's ratio is then taken to this
  pipeline  `featurize_store` end to end: PNG files -> decode workers -> encoder -> noise -> FFT ->
            committed Zarr store (after a warm-up run on a small store, so compile time is excluded;
            the cold figure is printed too)
Prints a table and writes bench.json under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

SD_VAE = dict(
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    scaling_factor=0.18215,
)


def _write_images(args):
    folder, start, count, res = args
    from PIL import Image

    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        base = rng.random((res // 16, res // 16, 3)) * 255
        img = Image.fromarray(base.astype(np.uint8)).resize((res, res), Image.Resampling.BICUBIC)
        a = np.asarray(img).astype(np.int16) + rng.integers(-6, 7, (res, res, 3))
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(f"{folder}/{i:07d}.png")


def make_images(root: Path, n: int, res: int) -> Path:
    folder = root / f"images{res}" / "gen"
    if folder.exists() and len(list(folder.glob("*.png"))) >= n:
        return folder.parent
    folder.mkdir(parents=True, exist_ok=True)
    procs = os.cpu_count() or 2
    per = -(-n // procs)
    jobs = [(str(folder), s, min(per, n - s), res) for s in range(0, n, per)]
    with ProcessPoolExecutor(procs) as ex:
        list(ex.map(_write_images, jobs))
    return folder.parent


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(fn, n_images: int, iters: int, device, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return n_images * iters / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/leakstore-bench"))
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--images", type=int, default=32768)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=-1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--compile-mode", default="default")
    ap.add_argument("--skip-anchors", action="store_true")
    ap.add_argument("--codec", default="zstd1")
    ap.add_argument("--writer-threads", type=int, default=4)
    ap.add_argument("--residual-bins", type=int, default=0, help="> 0: the pipeline also computes the residual")
    ap.add_argument(
        "--vae-dir",
        type=Path,
        default=None,
        help="an AutoencoderKL folder to measure instead of the random SD VAE (gpu_check --smoke: a tiny one)",
    )
    args = ap.parse_args(argv)

    from diffusers import AutoencoderKL

    from leakstore.config import RunOptions
    from leakstore.featurize.api import build_config
    from leakstore.featurize.datasets import build_catalog
    from leakstore.featurize.runner import compile_encoder, featurize_store
    from leakstore.featurize.vae import load_encoder

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # as the pipeline sets it: compare like with like
    res, B = args.resolution, args.batch
    prec = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec, torch.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    vae_dir = args.vae_dir or args.out / "sd-vae-random"
    if args.vae_dir is not None and not (vae_dir / "config.json").exists():
        ap.error(f"--vae-dir {vae_dir}: no AutoencoderKL folder there (config.json)")
    if not (vae_dir / "config.json").exists():
        torch.manual_seed(0)
        AutoencoderKL(**SD_VAE).save_pretrained(vae_dir)
    t = time.perf_counter()
    data = make_images(args.out, args.images, res)
    print(f"images ready ({args.images} PNG at {res}^2) in {time.perf_counter() - t:.1f} s", flush=True)
    results: dict = {
        "compile_mode": args.compile_mode,
        "resolution": res,
        "images": args.images,
        "batch": B,
        "precision": prec,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }

    x = torch.randint(0, 256, (B, 3, res, res), dtype=torch.uint8, device=device)
    if not args.skip_anchors:
        vae = AutoencoderKL.from_pretrained(vae_dir).to(device).eval()
        with torch.inference_mode():
            x1 = x[:1].float() / 127.5 - 1
            results["naive_fp32_b1"] = rate(lambda: vae.encode(x1).latent_dist.mean * 0.18215, 1, 40, device)
            vae_lp = vae.to(dtype=dtype, memory_format=torch.channels_last)
            xb = (x[:64].to(dtype) / 127.5 - 1).contiguous(memory_format=torch.channels_last)
            results[f"eager_{prec}_b64"] = rate(lambda: vae_lp.encode(xb).latent_dist.mean * 0.18215, 64, 10, device)
        del vae, vae_lp
        print({k: round(v, 1) for k, v in results.items() if isinstance(v, float)}, flush=True)

    enc = load_encoder(str(vae_dir)).to(
        device=device,
        dtype=dtype,
        memory_format=(torch.channels_last if device.type == "cuda" else torch.contiguous_format),
    )
    compiled = compile_encoder(enc, args.compile_mode) if device.type == "cuda" else enc
    xc = x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x
    with torch.inference_mode():
        t = time.perf_counter()
        compiled(xc)
        sync(device)
        results["compile_seconds"] = round(time.perf_counter() - t, 1)
        results["compiled_encoder"] = rate(
            lambda compiled=compiled: compiled(xc), B, 20 if device.type == "cuda" else 2, device
        )
        ref = load_encoder(str(vae_dir)).to(device)(x[:16])
        low = compiled(xc)[:16]
        results["bf16_rel_err"] = float((low.float() - ref).norm() / ref.norm())
    print(
        f"compiled encoder alone: {results['compiled_encoder']:.1f} img/s "
        f"(compile {results['compile_seconds']} s; rel. error vs fp32 {results['bf16_rel_err']:.2e})",
        flush=True,
    )
    if args.residual_bins > 0:
        results["compiled_compute"] = _compute_rate(vae_dir, compiled, xc, device, args.compile_mode, B)
        print(
            f"compiled compute (encoder + float32 encoder, decoder, encoder): {results['compiled_compute']:.1f} img/s",
            flush=True,
        )
    del compiled, enc

    catalog = build_catalog(data)
    opts = RunOptions(
        device=args.device,
        batch_size=B,
        workers=args.workers,
        codec=args.codec,
        compile_mode=args.compile_mode,
        writer_threads=args.writer_threads,
        progress=False,
        overwrite=True,
    )
    encoder = load_encoder(str(vae_dir), decoder=args.residual_bins > 0)
    cfg = build_config(encoder, resolution=res, precision=prec, device=args.device, residual_bins=args.residual_bins)
    results["residual_bins"] = args.residual_bins
    warm = type(catalog)(
        **{
            **catalog.__dict__,
            "paths": catalog.paths[:2048],
            "labels": catalog.labels[:2048],
            "splits": catalog.splits[:2048],
            "groups": catalog.groups[:2048],
        }
    )
    rep = featurize_store(warm, args.out / "warm.zarr", cfg, encoder, opts)
    results["pipeline_cold_2048"] = rep.images_per_s
    print(f"warm-up run (includes compile): {rep.images_per_s} img/s over {rep.processed} images", flush=True)
    store = args.out / f"bench{res}.zarr"
    rep = featurize_store(catalog, store, cfg, load_encoder(str(vae_dir), decoder=args.residual_bins > 0), opts)
    results["pipeline"] = rep.images_per_s
    results["pipeline_seconds"] = rep.seconds
    results["pipeline_failed"] = rep.failed
    results["store_bytes"] = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    # the pipeline against everything its device computes (the encoder alone without the residual)
    results["pipeline_over_compiled"] = round(
        rep.images_per_s / results.get("compiled_compute", results["compiled_encoder"]), 3
    )
    print(f"\ncompile mode {args.compile_mode}\n| what | images/s |\n|---|---|")
    for k in (
        "naive_fp32_b1",
        f"eager_{prec}_b64",
        "compiled_encoder",
        "compiled_compute",
        "pipeline_cold_2048",
        "pipeline",
    ):
        if k in results:
            print(f"| {k} | {results[k]:.1f} |")
    print(
        f"pipeline / compiled {'compute' if 'compiled_compute' in results else 'encoder'} = "
        f"{results['pipeline_over_compiled']}; store "
        f"{results['store_bytes'] / 1e6:.0f} MB for {rep.done} images; {rep.failed} failed"
    )
    (args.out / f"bench{res}.json").write_text(json.dumps(results, indent=2))
    shutil.rmtree(args.out / "warm.zarr", ignore_errors=True)
    return results


def _compute_rate(vae_dir: Path, compiled, xc: torch.Tensor, device, mode: str, batch: int) -> float:
    """Images/s of the device work of one default-config batch, compiled: the store's encoder (`compiled`, at
    the run's precision) and the residual's float32 encode, decode and encode (featurize.runner does the same)."""
    from leakstore.featurize.runner import compile_encoder
    from leakstore.featurize.vae import load_encoder

    cuda = device.type == "cuda"
    res = (
        load_encoder(str(vae_dir), decoder=True)
        .to(
            device=device, dtype=torch.float32, memory_format=(torch.channels_last if cuda else torch.contiguous_format)
        )
        .eval()
    )
    enc = compile_encoder(res, mode) if cuda else res
    dec = compile_encoder(res.decoder, mode) if cuda else res.decoder

    def step():
        compiled(xc)
        z = enc(xc).float()
        enc(dec(z).float() * 255.0)

    with torch.inference_mode():
        step()  # compiles (on CUDA)
        return rate(step, batch, 10 if cuda else 1, device, warmup=2 if cuda else 0)


if __name__ == "__main__":
    main()
