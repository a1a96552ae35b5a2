"""Every kind of bad input gets a clear one-line reason, or is converted correctly."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leakstore.errors import ImageDecodeError
from leakstore.featurize.images import decode_image, prepare, read_bytes


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def decode(data: bytes, **kw):
    return decode_image(data, "x.png", **kw)


def test_rgb_roundtrip_is_exact():
    a = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(decode(_png(Image.fromarray(a))), a)


def test_jpeg_is_decoded_at_full_resolution():
    a = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    out = decode(_png(Image.fromarray(a), format="JPEG", quality=90))
    assert out.shape == (64, 96, 3)


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not a recognised image format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt|truncated|not a recognised"),
    ],
)
def test_garbage(data, match):
    with pytest.raises(ImageDecodeError, match=match):
        decode(data)


def test_truncated_png():
    data = _png(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
        decode(data[: len(data) // 2])


def test_truncated_jpeg():
    data = _png(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)), format="JPEG")
    with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
        decode(data[: len(data) // 2])


def test_sixteen_bit_is_rescaled_not_clipped():
    a = np.array([[0, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(a)
    assert img.mode.startswith("I;16")
    out = decode(_png(img))
    assert out.shape == (1, 3, 3) and out.dtype == np.uint8
    assert list(out[0, :, 0]) == [0, 128, 255]


def test_cmyk_jpeg_converts_to_rgb():
    out = decode(_png(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), format="JPEG", quality=100))
    assert out.shape == (8, 8, 3)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60  # red


def test_palette_with_alpha_keeps_colours():
    p = Image.new("P", (4, 4))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.info["transparency"] = 1
    out = decode(_png(p, transparency=1))
    assert out.shape == (4, 4, 3) and tuple(out[0, 0]) == (255, 0, 0)


def test_rgba_drops_alpha():
    out = decode(_png(Image.new("RGBA", (4, 4), (10, 20, 30, 0))))
    assert tuple(out[0, 0]) == (10, 20, 30)


def test_exif_rotation_is_applied():
    img = Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode(_png(img, format="JPEG", exif=exif.tobytes()))
    assert out.shape[:2] == (20, 10)


def test_one_pixel_is_too_small():
    with pytest.raises(ImageDecodeError, match="too small.*1x1"):
        decode(_png(Image.new("RGB", (1, 1))), min_side=32)


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageDecodeError, match="decompression-bomb"):
        decode(_png(Image.new("RGB", (300, 300))), max_pixels=10_000)


def test_unreadable_file(tmp_path, monkeypatch):
    p = tmp_path / "locked.png"
    p.write_bytes(b"x")

    def deny(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", deny)  # root ignores chmod 000, so simulate it
    with pytest.raises(ImageDecodeError, match="permission denied"):
        read_bytes(p)


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        read_bytes(tmp_path / "gone.png")


@pytest.mark.parametrize("shape", [(40, 60), (60, 40), (32, 32)])
def test_shorter_crop(shape):
    a = np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8)
    assert prepare(a, 32, "shorter-crop").shape == (32, 32, 3)


def test_center_crop_and_exact():
    a = np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3)
    assert np.array_equal(prepare(a, 32, "center-crop"), a[4:36, 4:36])
    with pytest.raises(ImageDecodeError, match="exact"):
        prepare(a, 32, "exact")
    with pytest.raises(ImageDecodeError, match="is 40x20, smaller than the 32 px native-pixel crop"):
        prepare(a[:20], 32, "center-crop")
