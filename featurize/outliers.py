"""Images that no known generator made, for outlier exposure of the unknown flag (model/outliers.py).

    leakstore make-outliers TRAINING_DATA OUT [--decoders 6] [--vae taef2] [--photos DIR ...]

Each image of the training data gets one copy through a process that is none of the known
generators' (the choice seeded by the file's SHA-256): one of `--decoders` simulated decoders
(featurize/decoders.py: small upsampling networks of several families, each its own outlier
class), or, with `--vae`, a round trip through that autoencoder. Each photograph under `--photos`
gives `--per-photo` native-pixel crops at seeded positions; each `--photos` source is its own outlier
class (`photo`, `photo-2`, ...): photographs of one camera pipeline (a camera's own JPEGs) and of
another (wallpapers, downscaled and re-encoded) are two clusters, and one Gaussian class of the
`lda` scorer fits two clusters badly (docs/results: a second source as its own class flags
re-saved known images less than the same photographs merged into one).

No copy is a compression or a resize: known images reach users JPEG-compressed and resized, and
training sees them so (featurize --train-views), so such a copy would teach the flag that a
re-saved known image is unknown (it did, when JPEG copies were outliers: docs/results).

OUT holds the images, `manifest.csv` (path, label, group) and the decoders' weights (OUT/decoders,
safetensors, reused on a rerun). The label is `KIND/SOURCE` (the copy's kind, the source's class),
or `photo`, `photo-2`, ... (one per `--photos` source); the group is the source's group (or
`sha:<its SHA-256>` when it has none), so that training never fits on copies of its validation or
test images and a study fold leaves out the copies of the generator it holds out. Featurize the
manifest with the training store's options (training views are optional there: they changed
nothing measurable, docs/results); pass the store to `train --outliers`. Rerunning skips finished
images.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from leakstore.config import (
    DEFAULT_DECODER_STEPS,
    DEFAULT_OUTLIER_DECODERS,
    DEFAULT_OUTLIER_PER_PHOTO,
    DEFAULT_OUTLIER_SEED,
    DEFAULT_OUTLIER_SIZE,
)
from leakstore.errors import ImageDecodeError, InputError
from leakstore.featurize.datasets import build_catalog, list_images
from leakstore.featurize.decoders import decode_copy
from leakstore.featurize.images import decode_image, read_bytes
from leakstore.fsio import atomic_path, write_text

PATCHES, PATCH_SIZE, PATCH_SOURCES = 512, 64, 200  # their training patches, from this many training images
VAE_MAX_SIDE = 1024  # a larger image goes through the autoencoder as its centre crop of this size
PHOTO_LABEL = "photo"


def photo_label(source_index: int) -> str:
    """The outlier kind of the photographs of the `source_index`-th `--photos` source (0-based):
    `photo`, then `photo-2`, `photo-3`, ..."""
    return PHOTO_LABEL if source_index == 0 else f"{PHOTO_LABEL}-{source_index + 1}"


def _rng(sha: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(sha[:16], 16), seed])


def vae_copy(arr: np.ndarray, enc) -> np.ndarray:
    """The image through the autoencoder (encoder, then its decoder), cropped to a multiple of its
    downsampling factor (centre crop of at most VAE_MAX_SIDE a side)."""
    import torch

    f = enc.identity.downsample
    h, w = (min(s, VAE_MAX_SIDE) // f * f for s in arr.shape[:2])
    if h < f or w < f:
        raise ValueError(f"smaller than the autoencoder's {f}-pixel step")
    top, left = (arr.shape[0] - h) // 2, (arr.shape[1] - w) // 2
    x = torch.from_numpy(np.array(arr[top : top + h, left : left + w])).permute(2, 0, 1)[None]
    with torch.inference_mode():
        y = enc.decoder(enc(x))
    return (y[0].permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)


def photo_crops(arr: np.ndarray, n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`n` native-pixel crops of `size` (the shorter side when the photo is smaller) at seeded positions."""
    s = min(size, *arr.shape[:2])
    out = []
    for _ in range(n):
        top, left = int(rng.integers(0, arr.shape[0] - s + 1)), int(rng.integers(0, arr.shape[1] - s + 1))
        out.append(arr[top : top + s, left : left + s])
    return out


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _decoders(cat, out: Path, n: int, steps: int, seed: int, progress: bool) -> list:
    """`n` simulated decoders (featurize/decoders.py) trained on patches of the training images;
    their weights are kept in OUT/decoders/ (safetensors), so a rerun reuses them."""
    from safetensors.torch import load_file, save_file

    from leakstore.featurize.decoders import build_decoder, decoder_specs, sample_patches, train_decoder

    specs = decoder_specs(n, seed)
    train = [p for p, s in zip(cat.paths, cat.splits) if s in (0, -1)] or list(cat.paths)
    pick = np.random.default_rng([seed, 0x6F7574]).permutation(len(train))[:PATCH_SOURCES]
    patches = None
    nets = []
    for k, spec in enumerate(specs):
        wfile = out / "decoders" / f"{k}-{spec.name}-{steps}.safetensors"
        if wfile.exists():
            net = build_decoder(spec)
            net.load_state_dict(load_file(str(wfile)))
            nets.append((spec, net.eval()))
            continue
        if patches is None:
            imgs = []
            for i in pick:
                try:
                    b, _ = read_bytes(train[i])
                    imgs.append(decode_image(b, str(train[i])))
                except ImageDecodeError:
                    continue
            try:
                patches = sample_patches(imgs, PATCHES, PATCH_SIZE, seed)
            except ValueError as e:
                raise InputError(
                    f"make-outliers {cat.source}: {e}; give readable training images of at least "
                    "8 pixels a side, or --decoders 0"
                ) from None
        if progress:
            print(f"make-outliers: training simulated decoder {k + 1}/{len(specs)} ({spec.name})", flush=True)
        net = train_decoder(spec, patches, seed=seed * 1000 + k, steps=steps)
        wfile.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(wfile) as tmp:
            save_file({name: t.contiguous() for name, t in net.state_dict().items()}, str(tmp))
        nets.append((spec, net))
    return nets


def make_outliers(
    data,
    out,
    *,
    photos=(),
    vae: str | None = None,
    decoders: int = DEFAULT_OUTLIER_DECODERS,
    decoder_steps: int = DEFAULT_DECODER_STEPS,
    per_photo: int = DEFAULT_OUTLIER_PER_PHOTO,
    size: int = DEFAULT_OUTLIER_SIZE,
    seed: int = DEFAULT_OUTLIER_SEED,
    progress: bool = True,
) -> dict:
    """Write the outlier images and OUT/manifest.csv; returns counts and the failures (path, reason).

    Each training image gets one copy through a process seeded by its SHA-256: one of `decoders`
    simulated decoders, or the autoencoder `vae`. Its label is `KIND/SOURCE` (the kind of copy, the
    source's class): every kind is one outlier class, and a fold that holds a generator out leaves
    out the copies of its images. Photograph crops are label `photo` (`photo-2`, ... for the second
    and later sources of `photos`)."""
    from tqdm.auto import tqdm

    out = Path(out)
    cat = build_catalog(data)
    photo_files = [
        (p, photo_label(i))
        for i, d in enumerate(photos)
        for p in (list_images(Path(d)) if Path(d).is_dir() else [Path(d)])
    ]
    if photos and not photo_files:
        raise InputError(f"--photos {', '.join(map(str, photos))}: no images there (jpg, png, webp, ...)")
    if decoders < 0 or decoder_steps < 1:
        raise InputError(f"decoders must be >= 0 and decoder_steps >= 1 (got {decoders}, {decoder_steps})")
    if not decoders and not vae and not photo_files:
        raise InputError("no kind of outlier asked for: give decoders > 0, a vae or photos")
    enc = None
    if vae:
        from leakstore.featurize.vae import load_encoder

        enc = load_encoder(vae, decoder=True).eval()
    nets = _decoders(cat, out, decoders, decoder_steps, seed, progress) if decoders else []
    kinds = tuple(spec.name for spec, _ in nets) + (("vae",) if enc is not None else ())
    photo_kinds = tuple(dict.fromkeys(k for _, k in photo_files)) or (PHOTO_LABEL,)
    rows, failed, made = [], [], {k: 0 for k in kinds + photo_kinds}
    todo = [(p, cat.class_names[lab] if lab >= 0 else "", g) for p, lab, g in zip(cat.paths, cat.labels, cat.groups)]
    bar = tqdm(
        total=(len(todo) if kinds else 0) + len(photo_files), desc="make-outliers", unit="img", disable=not progress
    )
    for path, label, group in todo if kinds else ():
        bar.update()
        try:
            data_bytes, sha = read_bytes(path)
            k = int(_rng(sha, seed).integers(len(kinds)))
            kind = kinds[k]
            dest = out / kind / (label or "unlabelled") / f"{Path(path).stem}-{sha[:10]}.png"
            if not dest.exists():
                arr = decode_image(data_bytes, str(path))
                _save(vae_copy(arr, enc) if kind == "vae" else decode_copy(arr, nets[k][1], nets[k][0].factor), dest)
        except (ImageDecodeError, ValueError) as e:
            failed.append((str(path), getattr(e, "reason", str(e))))
            continue
        made[kind] += 1
        rows.append((dest.relative_to(out).as_posix(), f"{kind}/{label or 'unlabelled'}", group or f"sha:{sha}"))
    for path, kind in photo_files:
        bar.update()
        try:
            data_bytes, sha = read_bytes(path)
            arr = decode_image(data_bytes, str(path))
            for k, crop in enumerate(photo_crops(arr, per_photo, size, _rng(sha, seed))):
                dest = out / kind / f"{path.stem}-{sha[:10]}-{k}.png"
                if not dest.exists():
                    _save(crop, dest)
                made[kind] += 1
                rows.append((dest.relative_to(out).as_posix(), kind, f"photo:{sha}"))
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
    return {
        "out": str(out),
        "manifest": str(out / "manifest.csv"),
        "images": len(rows),
        "made": made,
        "photos": sum(made[k] for k in photo_kinds),
        "decoders": [spec.name for spec, _ in nets],
        "failed": len(failed),
        "first_failures": failed[:5],
        "real_class": cat.real_class,
    }
