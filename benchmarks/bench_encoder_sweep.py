"""Time the bare SD-VAE-architecture encoder under several compile settings (device-resident
inputs, no files), to pick the featurize defaults. Prints a table; writes sweep.json to --out.

    python -m benchmarks.bench_encoder_sweep --resolution 256 --out /tmp/sweep
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.bench_featurize import SD_VAE, rate

VARIANTS = [  # (name, compile mode, batch, dtype)
    ("default-b128-bf16", "default", 128, torch.bfloat16),
    ("default-b256-bf16", "default", 256, torch.bfloat16),
    ("default-b128-fp16", "default", 128, torch.float16),
    ("autotune-b128-bf16", "max-autotune-no-cudagraphs", 128, torch.bfloat16),
]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("/tmp/sweep"))
    ap.add_argument("--only", default="", help="comma-separated variant names")
    args = ap.parse_args(argv)
    from diffusers import AutoencoderKL

    from leakstore.featurize.runner import compile_encoder
    from leakstore.featurize.vae import load_encoder

    torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    vae_dir = args.out / "sd-vae-random"
    if not (vae_dir / "config.json").exists():
        torch.manual_seed(0)
        AutoencoderKL(**SD_VAE).save_pretrained(vae_dir)
    dev = torch.device("cuda")
    rows = {}
    for name, mode, batch, dtype in VARIANTS:
        if args.only and name not in args.only.split(","):
            continue
        torch._dynamo.reset()
        enc = load_encoder(str(vae_dir)).to(device=dev, dtype=dtype, memory_format=torch.channels_last)
        run = compile_encoder(enc, mode)
        x = torch.randint(
            0, 256, (batch, 3, args.resolution, args.resolution), dtype=torch.uint8, device=dev
        ).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            t = time.perf_counter()
            run(x)
            torch.cuda.synchronize()
            built = time.perf_counter() - t
            r = rate(lambda run=run, x=x: run(x), batch, 20, dev)
        rows[name] = {"images_per_s": round(r, 1), "compile_s": round(built, 1)}
        print(f"{name:<24} {r:8.1f} img/s   (compile {built:.0f} s)", flush=True)
        del enc, run
    (args.out / f"sweep{args.resolution}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
