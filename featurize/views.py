"""Post-processing views: what an image goes through on its way to an analyst.

A view string is one or more steps joined by '+', applied in order before the VAE:

    jpeg:Q      JPEG re-encode at quality Q (1-100), chroma subsampled 4:2:0 (the common default)
    jpeg444:Q   JPEG re-encode at quality Q without chroma subsampling (4:4:4: editors, cameras' finest)
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

from leakstore.config import DEFAULT_VIEW_POLICY
from leakstore.errors import InputError

_PARAM = {
    "jpeg": (int, 1, 100),
    "jpeg444": (int, 1, 100),
    "webp": (int, 1, 100),
    "resize": (float, 0.05, 4.0),
    "crop": (float, 0.05, 1.0),
    "blur": (float, 0.0, 50.0),
    "noise": (float, 0.0, 1.0),
}
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
            raise InputError(
                f"bad view {raw!r}: use jpeg:Q, jpeg444:Q, webp:Q, resize:S, crop:F, blur:SIGMA, noise:STD or "
                "grayscale, joined with '+' (e.g. jpeg:75+resize:0.5)"
            )
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


def _reencode(arr: np.ndarray, fmt: str, quality: int, **opts) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, quality=quality, **opts)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def view_size(h: int, w: int, steps: tuple[ViewStep, ...]) -> tuple[int, int]:
    """(height, width) of an h x w image after `steps`, as apply_view gives it, without its pixels."""
    for s in steps:
        if s.op in ("resize", "crop"):  # both scale each side by their value
            h, w = max(1, round(h * s.value)), max(1, round(w * s.value))
    return h, w


def apply_view(arr: np.ndarray, steps: tuple[ViewStep, ...], seed: int = 0) -> np.ndarray:
    """Apply steps to (H, W, 3) uint8; returns (H', W', 3) uint8. Deterministic given seed."""
    for s in steps:
        if s.op == "jpeg":
            arr = _reencode(arr, "JPEG", s.value)
        elif s.op == "jpeg444":
            arr = _reencode(arr, "JPEG", s.value, subsampling=0)
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
            arr = arr[top : top + ch, left : left + cw]
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


# ---------------------------------------------------------------------------- training-view policies
# What real life does to an image, in order: rescale, soften, add sensor/processing noise, lose
# colour, and last of all compress (a JPEG or WebP re-encode). Compression ops are alternatives.
_CHAIN_ORDER = ("crop", "resize", "blur", "noise", "grayscale", "jpeg", "jpeg444", "webp")
_COMPRESSION = ("jpeg", "jpeg444", "webp")
DEFAULT_POLICY = DEFAULT_VIEW_POLICY


@dataclass(frozen=True)
class ViewPolicy:
    """Ranges to draw training views from: {op: (lo, hi)} ('grayscale': (0, 0)).

    A drawn view applies each non-compression op with probability `p_op`, then one compression op
    (uniformly among those listed) with probability `p_compress`; never nothing at all."""

    ranges: tuple[tuple[str, float, float], ...]
    p_op: float = 0.5
    p_compress: float = 0.85

    def __str__(self) -> str:
        return ",".join(op if op == "grayscale" else f"{op}:{lo:g}-{hi:g}" for op, lo, hi in self.ranges)


def parse_policy(text: str) -> ViewPolicy:
    """'jpeg:50-95,resize:0.5-1,blur:0-2,grayscale' -> ViewPolicy; a single value means lo = hi."""
    ranges = {}
    for raw in (p.strip().lower() for p in str(text).split(",")):
        if not raw:
            continue
        op, _, rng = raw.partition(":")
        if op in _FLAGS and not rng:
            ranges[op] = (op, 0.0, 0.0)
            continue
        if op not in _PARAM or not rng:
            raise InputError(
                f"bad view policy item {raw!r}: use OP:LO-HI with OP one of {', '.join(_PARAM)} "
                f"(or grayscale), comma-separated, e.g. {DEFAULT_POLICY}"
            )
        lo_s, _, hi_s = rng.partition("-")
        try:
            lo, hi = float(lo_s), float(hi_s or lo_s)
        except ValueError:
            raise InputError(f"bad view policy item {raw!r}: {rng!r} is not LO-HI") from None
        typ, vmin, vmax = _PARAM[op]
        if not vmin <= lo <= hi <= vmax:
            raise InputError(f"bad view policy item {raw!r}: {op} takes LO <= HI in [{vmin}, {vmax}]")
        ranges[op] = (op, lo, hi)
    if not ranges:
        raise InputError(f"empty view policy: give e.g. {DEFAULT_POLICY}")
    return ViewPolicy(tuple(ranges[op] for op in _CHAIN_ORDER if op in ranges))


def draw_view(policy: ViewPolicy, sha256_hex: str, index: int, seed: int = 0) -> tuple[ViewStep, ...]:
    """The `index`-th training view of the image with this hash: the same on every machine."""
    words = [int(sha256_hex[i : i + 8], 16) for i in range(0, 64, 8)] if sha256_hex else [0]
    rng = np.random.default_rng(np.random.SeedSequence(words + [int(index), int(seed) & 0xFFFFFFFF, 0x76696577]))
    comp = [r for r in policy.ranges if r[0] in _COMPRESSION]
    steps = []
    for op, lo, hi in policy.ranges:
        if op in _COMPRESSION or rng.random() >= policy.p_op:
            continue
        steps.append(_step(op, lo, hi, rng))
    if comp and (rng.random() < policy.p_compress or not steps):
        op, lo, hi = comp[rng.integers(len(comp))]
        steps.append(_step(op, lo, hi, rng))
    if not steps:  # a policy without compression: at least one op
        op, lo, hi = policy.ranges[rng.integers(len(policy.ranges))]
        steps.append(_step(op, lo, hi, rng))
    return tuple(steps)


def _step(op: str, lo: float, hi: float, rng) -> ViewStep:
    if op in _FLAGS:
        return ViewStep(op)
    v = lo + (hi - lo) * rng.random()
    return ViewStep(op, int(round(v)) if _PARAM[op][0] is int else round(float(v), 3))
