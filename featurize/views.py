"""Post-processing views: what an image goes through on its way to an analyst.

A view string is one or more steps joined by '+', applied in order before the VAE:

    jpeg:Q      JPEG re-encode at quality Q (1-100)
    webp:Q      WebP re-encode at quality Q
    resize:S    rescale by factor S (antialiased bicubic)
    crop:F      centre crop keeping fraction F of each side
    blur:SIGMA  Gaussian blur, sigma in pixels
    noise:STD   additive Gaussian noise, std in [0, 1] units (seeded per image)
    grayscale   luminance only, replicated to 3 channels

A robustness sweep is one store per view. The canonical string is recorded in the store.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from leakstore.errors import InputError

_PARAM = {"jpeg": (int, 1, 100), "webp": (int, 1, 100), "resize": (float, 0.05, 4.0),
          "crop": (float, 0.05, 1.0), "blur": (float, 0.0, 50.0), "noise": (float, 0.0, 1.0)}
_FLAGS = ("grayscale",)


@dataclass(frozen=True)
class ViewStep:
    op: str
    value: float | int | None = None

    def __str__(self) -> str:
        return self.op if self.value is None else f"{self.op}:{self.value:g}"


def parse_view(spec: str | list[str] | tuple[str, ...] | None) -> tuple[ViewStep, ...]:
    """'jpeg:75+resize:0.5' (or a list of such strings) -> steps. Raises InputError with the grammar."""
    if spec is None:
        return ()
    parts = [p for s in ([spec] if isinstance(spec, str) else spec) for p in s.split("+")]
    steps = []
    for raw in (p.strip().lower() for p in parts):
        if raw in ("", "none"):
            continue
        op, _, val = raw.partition(":")
        if op in _FLAGS and not val:
            steps.append(ViewStep(op))
            continue
        if op not in _PARAM or not val:
            raise InputError(f"bad view {raw!r}: use jpeg:Q, webp:Q, resize:S, crop:F, blur:SIGMA, noise:STD or "
                             "grayscale, joined with '+' (e.g. jpeg:75+resize:0.5)")
        typ, lo, hi = _PARAM[op]
        try:
            v = typ(float(val)) if typ is int else typ(val)
        except ValueError:
            raise InputError(f"bad view {raw!r}: {val!r} is not a number") from None
        if not lo <= v <= hi:
            raise InputError(f"bad view {raw!r}: {op} takes a value in [{lo}, {hi}]")
        steps.append(ViewStep(op, v))
    return tuple(steps)


def view_name(steps: tuple[ViewStep, ...]) -> str:
    return "+".join(str(s) for s in steps) or "none"


def _reencode(arr: np.ndarray, fmt: str, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def apply_view(arr: np.ndarray, steps: tuple[ViewStep, ...], seed: int = 0) -> np.ndarray:
    """Apply steps to (H, W, 3) uint8; returns (H', W', 3) uint8. Deterministic given seed."""
    for s in steps:
        if s.op == "jpeg":
            arr = _reencode(arr, "JPEG", s.value)
        elif s.op == "webp":
            arr = _reencode(arr, "WEBP", s.value)
        elif s.op == "resize":
            h, w = arr.shape[:2]
            size = (max(1, round(w * s.value)), max(1, round(h * s.value)))
            arr = np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BICUBIC))
        elif s.op == "crop":
            h, w = arr.shape[:2]
            ch, cw = max(1, round(h * s.value)), max(1, round(w * s.value))
            top, left = (h - ch) // 2, (w - cw) // 2
            arr = arr[top:top + ch, left:left + cw]
        elif s.op == "blur":
            if s.value > 0:
                arr = np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(radius=s.value)))
        elif s.op == "noise":
            rng = np.random.default_rng(seed)
            noisy = arr.astype(np.float32) + rng.normal(0.0, s.value * 255.0, arr.shape).astype(np.float32)
            arr = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
        elif s.op == "grayscale":
            arr = np.asarray(Image.fromarray(arr).convert("L").convert("RGB"))
    return np.ascontiguousarray(arr)
