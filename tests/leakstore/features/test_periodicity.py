"""The pixel periodicity profile: a photograph has none, an upscale shows its factor, JPEG keeps it."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from leakstore.features.periodicity import (
    MAX_SIDE,
    grid_phases,
    periodicity_features,
    periodicity_of_image,
    without_grid,
)


def _photo_like(n=4, size=64, seed=0):
    """Smooth random fields plus fine noise: gradients everywhere, no preferred phase."""
    g = torch.Generator().manual_seed(seed)
    low = torch.nn.functional.interpolate(
        torch.rand(n, 3, size // 8, size // 8, generator=g), size=(size, size), mode="bicubic", align_corners=False
    )
    return (0.7 * low + 0.3 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def _upscale_nearest(x):
    small = torch.nn.functional.avg_pool2d(x, 2)
    return torch.nn.functional.interpolate(small, scale_factor=2, mode="nearest")


def test_a_photograph_has_a_flat_profile_and_a_nearest_upscale_a_period_of_two():
    x = _photo_like()
    f = periodicity_features(x, 8)
    assert f.shape == (4, 16) and f.dtype == torch.float32
    assert f.abs().max() < 0.15  # no phase stands out
    u = periodicity_features(_upscale_nearest(x), 8)
    # inside a repeated pair (the step from column 2i to 2i+1: phases 0, 2, ... mod 8) the gradient vanishes
    assert (u[:, 0::2] < -5).all() and (u[:, 1::2] > 0.5).all()
    # a shape, not a level: scaling the contrast changes nothing
    torch.testing.assert_close(periodicity_features(0.5 * x, 8), f, atol=1e-4, rtol=1e-4)


def test_uint8_input_and_width_not_a_multiple_of_the_period():
    x = (_photo_like(2, 60) * 255).round().to(torch.uint8)
    f = periodicity_features(x, 8)
    torch.testing.assert_close(f, periodicity_features(x.float() / 255, 8))
    assert torch.isfinite(f).all()
    with pytest.raises(ValueError, match="at least 16"):
        periodicity_features(torch.zeros(1, 3, 12, 12), 8)


def test_a_flat_image_gives_zeros_not_nan():
    f = periodicity_features(torch.full((1, 3, 32, 32), 0.5), 8)
    assert torch.equal(f, torch.zeros(1, 16))


def test_the_upscale_trace_survives_jpeg_75():
    x = _upscale_nearest(_photo_like(2, 128, seed=3))
    arr = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()
    out = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=75)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    j = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    f = periodicity_features(j, 8)
    assert (f[:, 1::2].mean(1) - f[:, 0::2].mean(1) > 0.3).all()  # odd phases still carry the gradients


def test_a_large_image_is_measured_on_a_period_aligned_central_crop():
    x = _upscale_nearest(_photo_like(1, MAX_SIDE + 200, seed=5))
    arr = (x[0] * 255).round().byte().permute(1, 2, 0).numpy()
    f = periodicity_of_image(arr, 8)
    assert f.shape == (16,) and f.dtype == np.float32
    assert (f[0::2] < -5).all()  # the crop kept the phases: the pairs still start at even columns
    with pytest.raises(ValueError, match="--period"):
        periodicity_of_image(arr[:10, :10], 8)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    out = []
    for a in (x * 255).round().byte().permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def test_without_grid_leaves_out_the_jpeg_block_phases_and_centres_the_rest():
    assert grid_phases(8) == [7] and grid_phases(16) == [7, 15] and grid_phases(6) == []
    f = periodicity_features(_photo_like(), 8)
    g = without_grid(f, 8)
    assert g.shape == (4, 14)
    for half, kept in ((g[:, :7], f[:, :7]), (g[:, 7:], f[:, 8:15])):
        torch.testing.assert_close(torch.exp(half).mean(1), torch.ones(4))  # centred again
        torch.testing.assert_close(half - half[:, :1], kept - kept[:, :1])  # same shape
    np.testing.assert_allclose(without_grid(f.numpy(), 8), g.numpy(), rtol=1e-6)  # numpy in, numpy out
    p6 = f[:, :12]
    assert without_grid(p6, 6) is p6  # no fixed grid phase at period 6


def test_jpeg_prints_its_grid_on_the_left_out_phase_and_barely_moves_the_rest():
    x = _photo_like(4, 128, seed=5)
    clean, j = periodicity_features(x, 8), periodicity_features(_jpeg(x, 50), 8)
    assert (j[:, 7] - clean[:, 7] > 0.1).all() and (j[:, 15] - clean[:, 15] > 0.1).all()  # the block boundary
    moved_all = (j - clean).abs().max(1).values
    moved_kept = (without_grid(j, 8) - without_grid(clean, 8)).abs().max(1).values
    assert (moved_kept < 0.5 * moved_all).all()
    # a nearest upscale's period 2 is still there without the grid phases, after JPEG too
    u = without_grid(periodicity_features(_jpeg(_upscale_nearest(x), 75), 8), 8)
    assert (u[:, [1, 3, 5]].mean(1) - u[:, [0, 2, 4, 6]].mean(1) > 0.3).all()
