import numpy as np
import pytest

from leakstore.errors import InputError
from leakstore.featurize.views import apply_view, parse_view, view_name

IMG = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)


def test_parse_and_canonical_name():
    steps = parse_view(["JPEG:75", "resize:0.50+blur:1.5"])
    assert view_name(steps) == "jpeg:75+resize:0.5+blur:1.5"
    assert view_name(parse_view(None)) == view_name(parse_view("none")) == "none"


@pytest.mark.parametrize("bad", ["jpeg", "jpeg:abc", "jpeg:101", "jpeg444:0", "sharpen:2", "resize:0"])
def test_bad_views_explain_the_grammar(bad):
    with pytest.raises(InputError, match="bad view"):
        parse_view(bad)


@pytest.mark.parametrize(
    "spec,shape",
    [
        ("jpeg:50", (64, 48, 3)),
        ("jpeg444:50", (64, 48, 3)),
        ("webp:60", (64, 48, 3)),
        ("resize:0.5", (32, 24, 3)),
        ("crop:0.5", (32, 24, 3)),
        ("blur:2", (64, 48, 3)),
        ("noise:0.05", (64, 48, 3)),
        ("grayscale", (64, 48, 3)),
    ],
)
def test_each_view_changes_the_pixels(spec, shape):
    out = apply_view(IMG, parse_view(spec), seed=1)
    assert out.shape == shape and out.dtype == np.uint8
    if out.shape == IMG.shape:
        assert not np.array_equal(out, IMG)


def test_views_are_deterministic():
    steps = parse_view("noise:0.05+jpeg:80")
    assert np.array_equal(apply_view(IMG, steps, seed=3), apply_view(IMG, steps, seed=3))
    assert not np.array_equal(apply_view(IMG, steps, seed=3), apply_view(IMG, steps, seed=4))


def test_grayscale_channels_equal():
    out = apply_view(IMG, parse_view("grayscale"))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_jpeg444_keeps_the_colour_detail_that_subsampled_jpeg_averages_away():
    """Fine colour stripes on flat luminance: 4:2:0 (jpeg) averages chroma over 2 x 2 pixels, 4:4:4
    (jpeg444, as editors and cameras at their finest save) keeps it; both re-encode at quality Q."""
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    img[:, 0::2] = (200, 60, 60)
    img[:, 1::2] = (60, 120, 200)
    err = {v: np.abs(apply_view(img, parse_view(v)).astype(int) - img).mean() for v in ("jpeg:95", "jpeg444:95")}
    assert err["jpeg444:95"] < err["jpeg:95"] / 3
    assert view_name(parse_view("JPEG444:90+resize:0.5")) == "jpeg444:90+resize:0.5"
