import numpy as np
import pytest

from leakstore.errors import InputError
from leakstore.featurize.views import apply_view, parse_view, view_name

IMG = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)


def test_parse_and_canonical_name():
    steps = parse_view(["JPEG:75", "resize:0.50+blur:1.5"])
    assert view_name(steps) == "jpeg:75+resize:0.5+blur:1.5"
    assert view_name(parse_view(None)) == view_name(parse_view("none")) == "none"


@pytest.mark.parametrize("bad", ["jpeg", "jpeg:abc", "jpeg:101", "sharpen:2", "resize:0"])
def test_bad_views_explain_the_grammar(bad):
    with pytest.raises(InputError, match="bad view"):
        parse_view(bad)


@pytest.mark.parametrize(
    "spec,shape",
    [
        ("jpeg:50", (64, 48, 3)),
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
