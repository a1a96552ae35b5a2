"""Pixel periodicity: where in a P-pixel period an image's pixel gradients are strong.

Upsampling leaves a period in the pixel grid: a 2x nearest-neighbour upscale repeats each
column and row once (no gradient inside a repeated pair: phases 0, 2, 4, 6 below), a bilinear
one smooths them alternately, a decoder with stride P and an 8 x 8 block codec modulate gradients with period P.
A photograph's gradients do not care about position modulo P. The profile survives JPEG better
than the residual's high rings: at JPEG 75 a nearest-upscaled image still shows its period 2.

One vector per image, 2 P values (`leakstore.features.periodicity_dim`):
    [0, P)      log mean |x[:, j+1] - x[:, j]| over columns j = k (mod P), k = 0..P-1,
                minus the log of their mean (a shape, not a level: content contrast cancels)
    [P, 2 P)    the same for rows
with x the image in [0, 1], averaged over colour channels. A pure function of pixels.

The store measures it on each image at its own size (`periodicity_of_image`), after any view and
before the resize to the VAE's resolution: resizing would erase an upscale's period or, for a
small image brought up to the resolution, print one of its own.
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-6
BLOCK = 8  # JPEG's block side: its grid lands on the gradient between pixels 8k+7 and 8k+8
MAX_SIDE = 512  # larger images are measured on a central crop this big, aligned to the period
# (5 ms per image on one CPU thread; 1024 would cost 27 ms, a loader bottleneck on a GPU node)


def phase_profile(diff: torch.Tensor, period: int) -> torch.Tensor:
    """diff (B, L) mean |gradient| per position -> (B, period): log mean per phase, centred."""
    b, n = diff.shape
    pad = (-n) % period
    d = torch.cat([diff, diff.new_full((b, pad), float("nan"))], 1).view(b, -1, period)
    prof = torch.log(torch.nanmean(d, 1) + EPS)
    return prof - torch.log(torch.exp(prof).mean(1, keepdim=True))


def periodicity_features(x: torch.Tensor, period: int) -> torch.Tensor:
    """x (B, 3, H, W) float in [0, 1] (or uint8) -> (B, 2 period) float32 (see module doc)."""
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if min(x.shape[-2:]) < 2 * period:
        raise ValueError(f"periodicity needs images of at least {2 * period} pixels a side, got {tuple(x.shape[-2:])}")
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean((1, 2))  # (B, W-1), column j: between j and j+1
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 3))  # (B, H-1)
    return torch.cat([phase_profile(dx, period), phase_profile(dy, period)], 1)


def central_crop(arr: np.ndarray, align: int = 1, side: int = MAX_SIDE) -> np.ndarray:
    """The central `side` x `side` part of an (H, W, ...) image (all of a smaller side; MAX_SIDE unless
    given), its corner on a multiple of `align` (a period's phases, JPEG's blocks stay where they were)."""
    h, w = arr.shape[:2]
    top = (max(0, h - side) // 2) // align * align
    left = (max(0, w - side) // 2) // align * align
    return arr[top : top + side, left : left + side]


def periodicity_of_image(arr: np.ndarray, period: int) -> np.ndarray:
    """(H, W, 3) uint8 at its own size -> (2 period,) float32. Images over MAX_SIDE a side are
    measured on a central MAX_SIDE crop whose corner is a multiple of the period (same phases)."""
    h, w = arr.shape[:2]
    if min(h, w) < 2 * period:
        raise ValueError(
            f"periodicity needs images of at least {2 * period} pixels a side, got {h}x{w}: "
            f"featurize with a smaller --period or --period 0"
        )
    crop = np.array(central_crop(arr, period), dtype=np.uint8)  # a writable copy
    return periodicity_features(torch.from_numpy(crop).permute(2, 0, 1)[None], period)[0].numpy()


def grid_phases(period: int) -> list[int]:
    """The phases of one direction's profile that cross JPEG's 8 x 8 block boundaries (column or row
    j = 7 mod 8), when the period is a multiple of 8; none otherwise (the grid then wanders over
    the phases instead of printing on one)."""
    return [k for k in range(period) if k % BLOCK == BLOCK - 1] if period % BLOCK == 0 else []


def without_grid(profile, period: int):
    """(N, 2 period) profile -> (N, 2 (period - len(grid_phases))): the JPEG block-boundary phases
    left out of each direction and the rest centred again (the same shape-not-level reading).

    A JPEG re-encode prints its block grid on those phases, so a profile read with them calls every
    re-saved known image unusual (the measurement: docs/results/leakbench-4crop.md).
    The stored feature keeps every phase; this is how a model reads it (ModelConfig.drop_jpeg_grid).
    Works on numpy arrays and torch tensors alike."""
    drop = grid_phases(period)
    if not drop:
        return profile
    keep = [k for k in range(period) if k not in drop]
    is_torch = isinstance(profile, torch.Tensor)
    x = profile if is_torch else torch.as_tensor(np.asarray(profile))
    parts = []
    for half in (x[:, :period], x[:, period:]):
        kept = half[:, keep]
        parts.append(kept - torch.log(torch.exp(kept).mean(1, keepdim=True)))
    out = torch.cat(parts, 1)
    return out if is_torch else out.numpy()
