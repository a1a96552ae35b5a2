"""The pixel periodicity profile: a photograph has none, an upscale shows its factor, JPEG keeps it."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from leakstore.features.periodicity import MAX_SIDE, periodicity_features, periodicity_of_image


def _photo_like(n=4, size=64, seed=0):
    """Smooth random fields plus fine noise: gradients everywhere, no preferred phase."""
    g = torch.Generator().manual_seed(seed)
    low = torch.nn.functional.interpolate(torch.rand(n, 3, size // 8, size // 8, generator=g), size=(size, size),
                                          mode="bicubic", align_corners=False)
    return (0.7 * low + 0.3 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def _upscale_nearest(x):
    small = torch.nn.functional.avg_pool2d(x, 2)
    return torch.nn.functional.interpolate(small, scale_factor=2, mode="nearest")


def test_a_photograph_has_a_flat_profile_and_a_nearest_upscale_a_period_of_two():
    x = _photo_like()
    f = periodicity_features(x, 8)
    assert f.shape == (4, 16) and f.dtype == torch.float32
    assert f.abs().max() < 0.15                                   # no phase stands out
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
    assert (f[:, 1::2].mean(1) - f[:, 0::2].mean(1) > 0.3).all()   # odd phases still carry the gradients


def test_a_large_image_is_measured_on_a_period_aligned_central_crop():
    x = _upscale_nearest(_photo_like(1, MAX_SIDE + 200, seed=5))
    arr = (x[0] * 255).round().byte().permute(1, 2, 0).numpy()
    f = periodicity_of_image(arr, 8)
    assert f.shape == (16,) and f.dtype == np.float32
    assert (f[0::2] < -5).all()                  # the crop kept the phases: the pairs still start at even columns
    with pytest.raises(ValueError, match="--period"):
        periodicity_of_image(arr[:10, :10], 8)
