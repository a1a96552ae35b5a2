"""Images that no known generator made, for outlier exposure of the unknown flag (model/outliers.py).

    leakstore make-outliers TRAINING_DATA OUT [--photos DIR ...] [--vae taef2]

Each image of the training data gets one copy through a process that is not its generator's (the
choice seeded by the file's SHA-256): a JPEG re-encode (quality 65-95), or, with `--vae`, a round
trip through that autoencoder (another generator's decoder traces). Images of the real class get
the autoencoder copy only (a JPEG of a photograph is still a photograph), none without `--vae`.
Each photograph under
`--photos` gives `--per-photo` native-pixel crops at seeded positions. Chosen on RealGen-dev's
leave-one-generator-out validation rows (docs/results): blur with sensor-like noise and
down-and-up resampling were measured as well and lowered the validation AUROC.

OUT holds the images and `manifest.csv` (path, label, group): the label says where a copy came
from (the source's generator, or `photo`), the group is the source's group (or `sha:<its SHA-256>`
when it has none), so that training never fits on copies of its validation or test images and a
study fold leaves out the copies of the generator it holds out. Featurize the manifest with the
training store's options; pass the store to `train --outliers`. Rerunning skips finished images.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from leakstore.errors import ImageDecodeError, InputError
from leakstore.featurize.datasets import build_catalog, list_images
from leakstore.featurize.images import decode_image, read_bytes
from leakstore.fsio import atomic_path, write_text

JPEG_QUALITY = (65, 95)     # inclusive
VAE_MAX_SIDE = 1024         # a larger image goes through the autoencoder as its centre crop of this size
PHOTO_LABEL = "photo"


def _rng(sha: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(sha[:16], 16), seed])


def jpeg_copy(arr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def vae_copy(arr: np.ndarray, enc) -> np.ndarray:
    """The image through the autoencoder (encoder, then its decoder), cropped to a multiple of its
    downsampling factor (centre crop of at most VAE_MAX_SIDE a side)."""
    import torch
    f = enc.identity.downsample
    h, w = (min(s, VAE_MAX_SIDE) // f * f for s in arr.shape[:2])
    if h < f or w < f:
        raise ValueError(f"smaller than the autoencoder's {f}-pixel step")
    top, left = (arr.shape[0] - h) // 2, (arr.shape[1] - w) // 2
    x = torch.from_numpy(np.array(arr[top:top + h, left:left + w])).permute(2, 0, 1)[None]
    with torch.inference_mode():
        y = enc.decoder(enc(x))
    return (y[0].permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)


def photo_crops(arr: np.ndarray, n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`n` native-pixel crops of `size` (the shorter side when the photo is smaller) at seeded positions."""
    s = min(size, *arr.shape[:2])
    out = []
    for _ in range(n):
        top, left = int(rng.integers(0, arr.shape[0] - s + 1)), int(rng.integers(0, arr.shape[1] - s + 1))
        out.append(arr[top:top + s, left:left + s])
    return out


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def make_outliers(data, out, *, photos=(), vae: str | None = None, per_photo: int = 6, size: int = 256,
                  seed: int = 0, progress: bool = True) -> dict:
    """Write the outlier images and OUT/manifest.csv; returns counts and the failures (path, reason)."""
    from tqdm.auto import tqdm
    out = Path(out)
    cat = build_catalog(data)
    photo_files = [p for d in photos for p in (list_images(Path(d)) if Path(d).is_dir() else [Path(d)])]
    if photos and not photo_files:
        raise InputError(f"--photos {', '.join(map(str, photos))}: no images there (jpg, png, webp, ...)")
    enc = None
    if vae:
        from leakstore.featurize.vae import load_encoder
        enc = load_encoder(vae, decoder=True).eval()
    kinds = ("jpeg", "vae") if enc is not None else ("jpeg",)
    rows, failed, made = [], [], {k: 0 for k in kinds + (PHOTO_LABEL,)}
    todo = [(p, cat.class_names[lab] if lab >= 0 else "", g) for p, lab, g in zip(cat.paths, cat.labels, cat.groups)]
    skipped = 0
    bar = tqdm(total=len(todo) + len(photo_files), desc="make-outliers", unit="img", disable=not progress)
    for path, label, group in todo:
        bar.update()
        # a real photograph re-encoded as JPEG is still a real photograph: the real class gets autoencoder
        # copies only (none without --vae)
        own = ("vae",) if label and label == cat.real_class else kinds
        if enc is None and own == ("vae",):
            skipped += 1
            continue
        try:
            data_bytes, sha = read_bytes(path)
            rng = _rng(sha, seed)
            kind = kinds[int(rng.integers(len(kinds)))]
            kind = kind if kind in own else own[0]
            dest = out / kind / (label or "unlabelled") / f"{Path(path).stem}-{sha[:10]}.png"
            if not dest.exists():
                arr = decode_image(data_bytes, str(path))
                _save(jpeg_copy(arr, rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)) if kind == "jpeg"
                      else vae_copy(arr, enc), dest)
        except (ImageDecodeError, ValueError) as e:
            failed.append((str(path), getattr(e, "reason", str(e))))
            continue
        made[kind] += 1
        rows.append((dest.relative_to(out).as_posix(), label, group or f"sha:{sha}"))
    for path in photo_files:
        bar.update()
        try:
            data_bytes, sha = read_bytes(path)
            arr = decode_image(data_bytes, str(path))
            for k, crop in enumerate(photo_crops(arr, per_photo, size, _rng(sha, seed))):
                dest = out / PHOTO_LABEL / f"{path.stem}-{sha[:10]}-{k}.png"
                if not dest.exists():
                    _save(crop, dest)
                made[PHOTO_LABEL] += 1
                rows.append((dest.relative_to(out).as_posix(), PHOTO_LABEL, f"photo:{sha}"))
        except ImageDecodeError as e:
            failed.append((str(path), e.reason))
    bar.close()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "group"])
    w.writerows(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "manifest.csv", buf.getvalue())
    if failed:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "reason"])
        w.writerows(failed)
        write_text(out / "failed.csv", buf.getvalue())
    return {"out": str(out), "manifest": str(out / "manifest.csv"), "images": len(rows), "made": made,
            "real_class_skipped": skipped, "failed": len(failed), "first_failures": failed[:5]}
