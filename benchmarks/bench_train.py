"""Training 10 epochs from the store versus re-encoding every image every epoch (the reference).

    python -m benchmarks.bench_train DATA --vae taef2 --resolution 128 --images 256 --out /tmp/bench-train
    # GPU: SD-VAE architecture at 256 px
    python -m benchmarks.bench_train synthetic --vae sd-random --resolution 256 --images 2048

Both arms train the same model on the same images with the same steps; the re-encoding arm
decodes, encodes (VAE), noises and transforms every image again in every epoch before the
step, as the reference code does. Prints seconds per arm, the speed-up of training from the
store, and the end-to-end speed-up when the one-time featurization is counted too.

DATA "synthetic" writes --images random PNGs in four labelled folders (timing only);
--vae sd-random is the SD-VAE architecture with random weights (the cost of the real one).
--reference-precision fp32 runs the re-encoding arm's VAE in fp32 (no autocast, as the
reference code does); the default runs it at the store's precision (bf16 on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--vae", default="taef2")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-train"))
    ap.add_argument("--loader-workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 1)))
    ap.add_argument("--reference-precision", choices=["same", "fp32"], default="same")
    args = ap.parse_args(argv)
    import dataclasses

    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from leakstore.config import DEFAULT_MAX_PIXELS, RunOptions
    from leakstore.device import resolve_device
    from leakstore.featurize.api import build_config
    from leakstore.featurize.datasets import build_catalog
    from leakstore.featurize.runner import DeviceFeaturizer, ImageRows, collate, featurize_store
    from leakstore.featurize.vae import load_encoder
    from leakstore.model.config import ModelConfig
    from leakstore.model.train import train
    from leakstore.store import Catalog

    dev = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    cat = build_catalog(_synthetic(args.out, args.images, args.resolution) if args.data == "synthetic" else args.data)
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(cat), min(args.images, len(cat)), replace=False))
    sub = Catalog(
        tuple(cat.paths[i] for i in pick),
        cat.labels[pick],
        np.zeros(len(pick), np.int8),
        tuple(cat.groups[i] for i in pick),
        cat.class_names,
        cat.real_class,
        "bench: all train",
        cat.source,
    )
    sub.splits[::5] = 1  # a validation row in five, for early stopping bookkeeping (never triggered here)
    enc = load_encoder(_sd_random(args.out) if args.vae == "sd-random" else args.vae)
    fcfg = build_config(
        enc,
        resolution=args.resolution,
        device=str(dev),
        residual_bins=0,
        period=0,
        spectrum_bins=0,
        noise_bins=0,
        cooccurrence=0,
    )  # latents and spectra, as first measured
    # one network in both arms (a default model trains --members of them, each as timed here)
    cfg = ModelConfig(epochs=args.epochs, patience=args.epochs + 1, renoise=False, roll_augment=False, members=1)
    res = {
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "images": len(pick),
        "epochs": args.epochs,
        "vae": args.vae,
        "resolution": args.resolution,
        "store_precision": fcfg.precision,
        "reference_precision": fcfg.precision if args.reference_precision == "same" else "fp32",
        "loader_workers": args.loader_workers,
    }
    _warm_up(cfg, fcfg, len(cat.class_names), dev)  # one-time imports and kernel set-up, out of both arms
    t = time.perf_counter()
    featurize_store(
        sub,
        args.out / "store.zarr",
        fcfg,
        enc,
        RunOptions(device=str(dev), workers=2, progress=False, overwrite=True, compile=False),
    )
    res["featurize_once_s"] = time.perf_counter() - t
    t = time.perf_counter()
    s = train(args.out / "store.zarr", args.out / "run", cfg, device=str(dev), progress=False, overwrite=True)
    res["train_from_store_s"] = time.perf_counter() - t
    res["store_samples_per_s"] = s["samples_per_s"]

    # the reference's way: every epoch re-reads, re-encodes and re-noises every image
    from leakstore.model.checkpoint import build_net

    net = build_net(cfg, fcfg, len(cat.class_names)).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ref_cfg = fcfg if args.reference_precision == "same" else dataclasses.replace(fcfg, precision="fp32")
    runner = DeviceFeaturizer(enc, ref_cfg, dev, 64, use_compile=False)
    tr = np.flatnonzero(sub.splits == 0)
    y_all = torch.as_tensor(sub.labels.astype(np.int64))
    # a training loader as the reference has one: decode workers kept alive across epochs
    ds = ImageRows(sub.paths, list(tr), ref_cfg, DEFAULT_MAX_PIXELS)
    sampler = _EpochShuffle(len(tr))
    loader = DataLoader(
        ds,
        batch_size=cfg.batch_size,
        num_workers=args.loader_workers,
        collate_fn=collate,
        persistent_workers=args.loader_workers > 0,
        sampler=sampler,
    )
    normalised = False
    t = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.epoch = epoch
        for b in loader:
            out = runner(b["images"], b["noise"], b["native"])
            if "event" in out:
                out.pop("event").synchronize()
            batch = {k: out[k].to(dev).float() for k in net.inputs}
            if not normalised:
                net.set_normalisation(batch)
                normalised = True
            net.train()
            o = net(batch, net.time_dropout_mask(len(b["ok_rows"]), dev))
            loss = F.cross_entropy(o["logits"], y_all[b["ok_rows"]].to(dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    res["train_reencoding_s"] = time.perf_counter() - t
    res["speedup_training"] = res["train_reencoding_s"] / res["train_from_store_s"]
    res["speedup_end_to_end"] = res["train_reencoding_s"] / (res["train_from_store_s"] + res["featurize_once_s"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_train.json").write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        print(f"{k:<22} {v:.2f}" if isinstance(v, float) else f"{k:<22} {v}")


class _EpochShuffle(torch.utils.data.Sampler):
    """A fresh seeded permutation each epoch (set .epoch), read by a persistent loader."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(np.random.default_rng(self.epoch).permutation(self.n).tolist())


def _synthetic(root: Path, n: int, res: int) -> Path:
    """n random PNGs (pipelines.bench_featurize's generator) in four labelled folders: timing only."""
    from benchmarks.bench_featurize import make_images

    folder = make_images(root, n, res) / "gen"
    files = sorted(folder.glob("*.png"))[:n]
    lines = ["path,label,split,group"] + [f"{f},class{i % 4},train,g{i}" for i, f in enumerate(files)]
    (root / "synthetic.csv").write_text("\n".join(lines) + "\n")
    return root / "synthetic.csv"


def _sd_random(root: Path) -> str:
    from diffusers import AutoencoderKL

    from benchmarks.bench_featurize import SD_VAE

    vae_dir = root / "sd-vae-random"
    if not (vae_dir / "config.json").exists():
        torch.manual_seed(0)
        AutoencoderKL(**SD_VAE).save_pretrained(vae_dir)
    return str(vae_dir)


def _warm_up(cfg, fcfg, n_classes, dev):
    """AdamW's first construction imports torch._dynamo (~2 s), and the first CUDA steps set up
    kernels: pay both before timing, so neither arm is charged for them."""
    from leakstore.features import features_for
    from leakstore.model.checkpoint import build_net

    net = build_net(cfg, fcfg, n_classes).to(dev)
    opt = torch.optim.AdamW(net.parameters())
    shapes = {f.name: f.shape(fcfg) for f in features_for(fcfg)}
    for b in (cfg.batch_size, 7):
        out = net({n: torch.randn((b,) + shapes[n], device=dev) for n in net.inputs})
        out["logits"].sum().backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
