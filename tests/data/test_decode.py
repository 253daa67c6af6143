import io

import numpy as np
import pytest
from PIL import Image

from usam_ray.data.decode import ImageDecodeError, decode_image


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


rng = np.random.default_rng(0)
RGB = rng.integers(0, 255, (12, 9, 3), dtype=np.uint8)


@pytest.mark.parametrize("name, img, fmt", [
    ("rgb", Image.fromarray(RGB), "PNG"),
    ("gray", Image.fromarray(RGB[..., 0], "L"), "PNG"),
    ("rgba", Image.fromarray(np.dstack([RGB, np.full((12, 9), 255, np.uint8)]), "RGBA"), "PNG"),
    ("la", Image.fromarray(RGB[..., :1].repeat(2, 2), "LA"), "PNG"),
    ("palette", Image.fromarray(RGB).convert("P"), "PNG"),
    ("cmyk", Image.fromarray(RGB).convert("CMYK"), "JPEG"),
    ("16bit", Image.fromarray((RGB[..., 0].astype(np.uint16) * 257)), "PNG"),
    ("float", Image.fromarray(RGB[..., 0].astype(np.float32) / 7.0, "F"), "TIFF"),
    ("1bit", Image.fromarray(RGB[..., 0] > 128), "PNG"),
])
def test_every_mode_becomes_rgb_uint8(name, img, fmt):
    out = decode_image(_encode(img, fmt), name, 10_000)
    assert out.shape == (12, 9, 3) and out.dtype == np.uint8


def test_16bit_is_scaled_not_clipped():
    deep = (np.arange(12 * 9, dtype=np.uint16).reshape(12, 9) * 600)
    out = decode_image(_encode(Image.fromarray(deep)), "deep", 10_000)
    expected = np.clip(deep / 65535.0 * 255 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert out.max() > 200  # a naive 8-bit clip would saturate or a cast would wrap


def test_rgba_alpha_is_composited_over_black():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 0
    out = decode_image(_encode(Image.fromarray(rgba, "RGBA")), "a", 100)
    assert out.max() == 0


def test_exif_orientation_applied():
    img = Image.fromarray(RGB)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert decode_image(buf.getvalue(), "rot", 1000).shape == (9, 12, 3)


@pytest.mark.parametrize("data, kind", [
    (b"", "empty"),
    (b"hello, I am text", "not_an_image"),
    (_encode(Image.fromarray(RGB))[:60], "corrupt"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 50, "corrupt"),
])
def test_bad_bytes_give_kind_and_path(data, kind):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, "/data/x.png", 10_000)
    assert info.value.kind == kind
    assert "/data/x.png" in str(info.value)


def test_too_large_refused_before_decoding():
    with pytest.raises(ImageDecodeError, match="over data.max_pixels") as info:
        decode_image(_encode(Image.fromarray(RGB)), "big.png", max_pixels=100)
    assert info.value.kind == "too_large"
