"""decode_image and load_image: every mode ends as RGB, every defect gets its reason."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from enclip.data.images import MAX_PIXELS, ImageDecodeError, decode_image, load_image
from enclip.errors import EnclipError

from .conftest import draw_photo, encode, png_declaring


@pytest.fixture
def photo() -> Image.Image:
    return draw_photo(np.random.default_rng(1), (20, 30, 90))


def test_rgb_jpeg_decodes_unchanged(photo):
    data = encode(photo, "PNG")
    img, converted_from = decode_image(data)
    assert converted_from is None and img.mode == "RGB" and img.size == (60, 80)
    assert np.array_equal(np.asarray(img), np.asarray(photo))


def test_greyscale_is_replicated_to_three_channels(photo):
    grey = photo.convert("L")
    img, converted_from = decode_image(encode(grey, "PNG"))
    assert converted_from == "L"
    pixels = np.asarray(img)
    assert pixels.shape == (80, 60, 3)
    for channel in range(3):
        assert np.array_equal(pixels[..., channel], np.asarray(grey))


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent blue -> white
    rgba.putpixel((2, 0), (255, 0, 0, 128))  # half transparent red over white
    img, converted_from = decode_image(encode(rgba, "PNG"))
    assert converted_from == "RGBA"
    assert img.getpixel((0, 0)) == (255, 0, 0)
    assert img.getpixel((1, 0)) == (255, 255, 255)
    r, g, b = img.getpixel((2, 0))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1


def test_palette_with_transparency_and_la_are_composited_on_white():
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    palette.putpixel((1, 0), 1)
    img, converted_from = decode_image(encode(palette, "PNG", transparency=0))
    assert converted_from == "P"
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 0)) == (10, 200, 10)
    la = Image.new("LA", (1, 1), (0, 0))
    assert decode_image(encode(la, "PNG")) [0].getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_and_16_bit_greyscale_are_converted(photo):
    img, converted_from = decode_image(encode(photo.convert("CMYK"), "JPEG", quality=95))
    assert converted_from == "CMYK" and img.mode == "RGB"
    assert np.abs(np.asarray(img, dtype=int) - np.asarray(photo, dtype=int)).mean() < 12
    deep = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    img, converted_from = decode_image(encode(deep, "PNG"))
    assert converted_from in ("I", "I;16") and img.mode == "RGB"
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [0, 127, 255]


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda jpeg: jpeg[: len(jpeg) // 2], "truncated_image"),
        (lambda jpeg: jpeg[:4] + bytes(range(256)) * 2, "undecodable_image"),
        (lambda jpeg: b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "undecodable_image"),
        (lambda jpeg: b"id,title\n1,shirt\n", "not_an_image"),
        (lambda jpeg: b"", "not_an_image"),
        (lambda jpeg: png_declaring(7000, 7000), "decompression_bomb"),
        (lambda jpeg: png_declaring(30000, 30000), "decompression_bomb"),
    ],
)
def test_defects_get_their_reason(photo, make, reason):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(make(encode(photo)))
    assert info.value.reason == reason
    assert isinstance(info.value, EnclipError)


def test_bomb_between_pil_warning_and_error_limits_is_refused_without_a_warning():
    pixels = Image.MAX_IMAGE_PIXELS
    side = int((1.5 * pixels) ** 0.5)  # PIL warns above MAX_IMAGE_PIXELS and raises only above twice that
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError) as info:
            decode_image(png_declaring(side, side))
    assert info.value.reason == "decompression_bomb"
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == pixels


def test_max_pixels_is_a_parameter(photo):
    data = encode(photo)
    with pytest.raises(ImageDecodeError, match="over the limit of 4000") as info:
        decode_image(data, max_pixels=4000)
    assert info.value.reason == "decompression_bomb"
    assert decode_image(data, max_pixels=4800)[0].size == (60, 80)
    assert MAX_PIXELS == 40_000_000


def test_load_image_from_path_bytes_and_pil(tmp_path, photo):
    path = tmp_path / "query.png"
    path.write_bytes(encode(photo.convert("RGBA"), "PNG"))
    expected = np.asarray(photo)
    assert np.array_equal(np.asarray(load_image(path)), expected)
    assert np.array_equal(np.asarray(load_image(str(path))), expected)
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), expected)
    assert load_image(photo.convert("L")).mode == "RGB"


def test_load_image_errors_name_the_problem(tmp_path):
    with pytest.raises(EnclipError, match="image file not found: .*missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(EnclipError, match="is a folder"):
        load_image(tmp_path)
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(ImageDecodeError, match="notes.jpg") as info:
        load_image(text)
    assert info.value.reason == "not_an_image"
    with pytest.raises(EnclipError, match="pass a file path or bytes"):
        load_image(42)
