"""Images from a generator of another family, made offline: a small autoencoder with
transposed-convolution upsampling (the decoder family of GANs and early VAEs), trained here on
the images you give it, then run over crops of them.

    python -m benchmarks.make_other_family OUT --images DIR_OR_FILE [...] [--size 128 --per-image 4]

The bench's generators are one pretrained latent autoencoder (TAEF2, with and without latent
leaks) and interpolating resamplers; nothing in it upsamples with learned transposed
convolutions. This makes such a generator, so that the open-set flag can be measured against
"a generator of another family on other content" without a download:

    OUT/tconv-ae/<image>_<r>_<c>.png      the autoencoder's rendering of each crop
    OUT/<real-label>/<image>_<r>_<c>.png  the crop itself (content control; --real-label '' drops it)
    OUT/manifest.csv                      path,label,split,group (split 'test' for every row)

Crops follow LeakBench: downscale by at least 2x with Lanczos (no upscaling traces), then a grid
of size x size tiles. The autoencoder is trained on random tiles of the same downscaled images
(--steps Adam steps, L1 loss, seeded), so it is a generator fitted to this content, as a real one
would be. Feed OUT/manifest.csv to `leakstore featurize` with the model's featurize settings and
score it with `leakstore evaluate RUN STORE --unseen OUT.zarr --split all`.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

SUFFIXES = {".jpg", ".jpeg", ".png"}


def image_files(items: list[str]) -> list[Path]:
    out: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise SystemExit(f"--images {it}: no such file or folder")
    return out


def downscaled(path: Path, size: int, per_image: int) -> np.ndarray:
    """The image at the scale its crops are cut from (at least 2x down, never up), RGB uint8."""
    img = Image.open(path).convert("RGB")
    side = max(1, int(np.sqrt(per_image)))
    scale = min(0.5, side * size / min(img.size))
    return np.asarray(
        img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    )


def tiles(a: np.ndarray, size: int, per_image: int) -> list[tuple[str, np.ndarray]]:
    return [
        (f"{r}_{c}", a[r * size : (r + 1) * size, c * size : (c + 1) * size])
        for r in range(a.shape[0] // size)
        for c in range(a.shape[1] // size)
    ][:per_image]


class TConvAE(nn.Module):
    """4x down with strided convolutions, 4x up with transposed convolutions (kernel 4, stride 2)."""

    def __init__(self, width: int = 48, latent: int = 8):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, latent, 3, 1, 1),
        )
        self.dec = nn.Sequential(
            nn.Conv2d(latent, 2 * width, 3, 1, 1),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(width, 3, 4, 2, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return self.dec(self.enc(x))


def train(images: list[np.ndarray], size: int, steps: int, batch: int, seed: int) -> TConvAE:
    g = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = TConvAE()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    usable = [a for a in images if min(a.shape[:2]) >= size]
    t0 = time.perf_counter()
    for step in range(steps):
        xs = []
        for _ in range(batch):
            a = usable[g.integers(len(usable))]
            y, x = g.integers(a.shape[0] - size + 1), g.integers(a.shape[1] - size + 1)
            xs.append(a[y : y + size, x : x + size])
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div(255)
        loss = (net(x) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // 10) == 0:
            print(
                f"step {step + 1}/{steps}: L1 {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return net.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--images", nargs="+", required=True, help="image files or folders (content to render)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--per-image", type=int, default=4, help="at most this many crops per image")
    ap.add_argument("--steps", type=int, default=1500, help="autoencoder training steps")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="tconv-ae")
    ap.add_argument(
        "--real-label", default="real-other-content", help="label of the unprocessed crops ('' leaves them out)"
    )
    a = ap.parse_args(argv)
    files = image_files(a.images)
    if not files:
        raise SystemExit("no images found under --images")
    scaled = {}
    for f in files:
        try:
            scaled[f] = downscaled(f, a.size, a.per_image)
        except (OSError, ValueError) as e:  # corrupt or unreadable: say so, go on with the rest
            print(f"{f}: cannot read ({e}); skipped", file=sys.stderr)
    if not any(min(v.shape[:2]) >= a.size for v in scaled.values()):
        raise SystemExit(f"no readable image is at least {a.size} px a side after downscaling")
    net = train(list(scaled.values()), a.size, a.steps, a.batch, a.seed)
    labels = [a.label] + ([a.real_label] if a.real_label else [])
    for lab in labels:
        (a.out / lab).mkdir(parents=True, exist_ok=True)
    rows, seen = [], set()
    for f, arr in scaled.items():
        # KDE wallpaper packages name their files by resolution (NAME/contents/images/2560x1600.jpg)
        group = f.parent.parent.parent.name if "/wallpapers/" in str(f) else f.stem
        while group in seen:  # two files of one name: keep them apart
            group += "_"
        seen.add(group)
        crops = tiles(arr, a.size, a.per_image)
        if not crops:
            print(f"{f}: smaller than {a.size} px after downscaling; skipped", file=sys.stderr)
            continue
        x = torch.from_numpy(np.stack([t for _, t in crops])).permute(0, 3, 1, 2).float().div(255)
        with torch.inference_mode():
            y = net(x).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
        for (name, tile), rendered in zip(crops, y):
            for lab, img in ((a.label, rendered), (a.real_label, tile)):
                if lab:
                    rel = f"{lab}/{group}_{name}.png"
                    Image.fromarray(np.ascontiguousarray(img)).save(a.out / rel)
                    rows.append((rel, lab, "test", group))
    with open(a.out / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split", "group"])
        w.writerows(rows)
    print(f"{len(rows)} images ({', '.join(labels)}) from {len(seen)} source images -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
