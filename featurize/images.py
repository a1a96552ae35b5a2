"""Exact image decoding and geometric preparation, with PIL only (no torchvision).

`decode_image` turns a file into an (H, W, 3) uint8 RGB array or raises ImageDecodeError
with a one-line reason. It never uses lossy shortcuts (JPEG draft mode, reduced decoding):
the generator's fingerprint lives in exactly the pixels such shortcuts change.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from leakstore.config import CROP_GRIDS, DEFAULT_MAX_PIXELS
from leakstore.errors import ImageDecodeError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# --max-pixels is the one limit: PIL's own (which raises above 2 x 89.5 Mpx, whatever --max-pixels says)
# is switched off, and decode_image checks the header's size before any pixel is decoded.
Image.MAX_IMAGE_PIXELS = None
_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def read_bytes(path: str | Path) -> tuple[bytes, str]:
    """The file's bytes and their SHA-256 hex digest."""
    try:
        data = Path(path).read_bytes()
    except PermissionError:
        raise ImageDecodeError(str(path), "permission denied: make the file readable (chmod +r)") from None
    except IsADirectoryError:
        raise ImageDecodeError(str(path), "is a directory, not an image file") from None
    except FileNotFoundError:
        raise ImageDecodeError(
            str(path), "file not found: it was moved or deleted after the input was listed"
        ) from None
    except OSError as e:
        raise ImageDecodeError(str(path), f"cannot read the file ({e.strerror or e})") from None
    return data, hashlib.sha256(data).hexdigest()


_MAGIC = {
    b"\x89PNG": "PNG",
    b"\xff\xd8": "JPEG",
    b"RIFF": "WebP",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"GIF8": "GIF",
}


def _sniff(data: bytes) -> str | None:
    return next((fmt for magic, fmt in _MAGIC.items() if data.startswith(magic)), None)


def _to_rgb8(img: Image.Image, path: str) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8. 16-bit and float images are rescaled, not clipped;
    alpha is dropped (the colour channels are what the generator wrote); CMYK, palette and
    grayscale go through PIL's conversions."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        top = 1.0 if a.max() <= 1.0 else 255.0
        a = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def decode_image(data: bytes, path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1) -> np.ndarray:
    """Decode file bytes to (H, W, 3) uint8 RGB, EXIF orientation applied.

    Raises ImageDecodeError for unreadable, truncated, oversized or too-small images.
    """
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageDecodeError(
                    path,
                    f"{w}x{h} px exceeds the {max_pixels:,} px limit (decompression-bomb "
                    f"guard; decoding it would peak near {12 * w * h / 1e9:.1f} GB): downscale "
                    "it first, or raise --max-pixels if this machine has the memory",
                )
            img.load()
            img = ImageOps.exif_transpose(img)
            arr = _to_rgb8(img, path)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        fmt = _sniff(data)
        if fmt:
            raise ImageDecodeError(
                path, f"corrupt or truncated {fmt} file (its header is damaged): re-download or re-export it"
            ) from None
        raise ImageDecodeError(path, "not a recognised image format (PNG, JPEG, WebP, BMP, TIFF)") from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(path, f"decompression bomb ({e}): raise --max-pixels if it is genuine") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            raise ImageDecodeError(path, f"truncated file ({msg}): re-download or re-export it") from None
        raise ImageDecodeError(path, f"corrupt image data ({msg})") from None
    if min(arr.shape[:2]) < min_side:
        raise ImageDecodeError(
            path,
            f"too small: {arr.shape[1]}x{arr.shape[0]} px, the shorter side must be at "
            f"least {min_side} px (set by --min-side)",
        )
    return arr


CROP_ALIGN = 8  # crop origins on the 8-pixel grid: JPEG blocks, VAE cells and the periodicity's phases stay put


def crop_window(arr: np.ndarray, resolution: int, k: int, crops: int) -> np.ndarray:
    """Crop k of `crops` (= g * g, row-major on a g x g grid) at native pixels: a window of side
    `resolution`, the windows evenly spaced from one edge of the image to the other (overlapping
    on an image smaller than g * resolution, apart on a larger one), their origins on the 8-pixel
    grid. An image whose shorter side is below `resolution` is returned whole, for the resize
    policy to bring to size (its crops are then one and the same)."""
    if crops == 1:
        return arr
    h, w = arr.shape[:2]
    if min(h, w) < resolution:
        return arr
    g = CROP_GRIDS[crops]
    i, j = divmod(k, g)
    y = int(i * (h - resolution) / (g - 1)) // CROP_ALIGN * CROP_ALIGN
    x = int(j * (w - resolution) / (g - 1)) // CROP_ALIGN * CROP_ALIGN
    return arr[y : y + resolution, x : x + resolution]


def crops_coincide(h: int, w: int, resolution: int) -> bool:
    """Whether every crop window (crop_window) of an h x w image is one and the same: the image is
    below `resolution` on a side (it is taken whole), or less than one 8-pixel step larger on both."""
    return min(h, w) < resolution or (h - resolution < CROP_ALIGN and w - resolution < CROP_ALIGN)


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(height, width) from the file's header, its pixels left undecoded (before EXIF rotation,
    which only swaps them); None when the header cannot be read (decoding will say why)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
        return h, w
    except Exception:
        return None


def prepare(arr: np.ndarray, resolution: int, policy: str, resample: str = "bilinear", path: str = "") -> np.ndarray:
    """Bring (H, W, 3) uint8 to (resolution, resolution, 3) uint8.

    shorter-crop: resize the shorter side to `resolution` (antialiased), then centre crop.
    center-crop:  centre crop without resizing; the image must be at least `resolution` a side.
    exact:        the image must already be resolution x resolution.
    """
    h, w = arr.shape[:2]
    if (h, w) == (resolution, resolution):
        return arr
    if policy == "exact":
        raise ImageDecodeError(
            path,
            f"is {w}x{h}, not {resolution}x{resolution} (resize policy 'exact'): "
            "use --resize-policy shorter-crop or center-crop",
        )
    if policy == "shorter-crop":
        s = resolution / min(h, w)
        nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
        arr = np.asarray(Image.fromarray(arr).resize((nw, nh), _RESAMPLE[resample]))
        h, w = nh, nw
    elif min(h, w) < resolution:
        raise ImageDecodeError(  # said where featurizing and where scoring by a model of this policy fail
            path,
            f"is {w}x{h}, smaller than the {resolution} px native-pixel crop (--resize-policy center-crop): "
            "a store or model featurized with --resize-policy shorter-crop resamples such images",
        )
    top, left = (h - resolution) // 2, (w - resolution) // 2
    return np.ascontiguousarray(arr[top : top + resolution, left : left + resolution])
