"""Decode product photos safely: every catalogue image and user query image goes through here.

Catalogues in the wild hold greyscale, transparent, CMYK, truncated and outright broken files. This module turns
any of them into an RGB ``PIL.Image`` or an ``ImageDecodeError`` whose ``reason`` names what was wrong, so the
catalogue loader can count bad rows by reason instead of crashing on the first one.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from enclip.errors import EnclipError

logger = logging.getLogger(__name__)

MAX_PIXELS: int = 40_000_000
"""Largest image (width x height) we decode; product photos are far smaller, bigger ones are treated as bombs."""

DECODE_REASONS: tuple[str, ...] = ("undecodable_image", "truncated_image", "decompression_bomb", "not_an_image")

PHOTO_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO")
"""PIL formats a product photo is decoded from; the others (EPS via ghostscript, PSD, ...) never see our bytes."""

# Leading bytes of the formats PIL reads that product photos come in: data that starts like an image but
# cannot be decoded is "undecodable"; data that starts like nothing we know is "not an image" (a text file...).
_MAGIC_PREFIXES: tuple[bytes, ...] = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little endian
    b"MM\x00*",  # TIFF, big endian
    b"\x00\x00\x01\x00",  # ICO
)

# warnings.catch_warnings swaps process-wide state; the lock keeps our decoder threads from interleaving it.
_OPEN_LOCK = threading.Lock()


class ImageDecodeError(EnclipError):
    """An image that cannot be used; ``reason`` is one of ``DECODE_REASONS`` (used as a skip-report key)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _looks_like_image(data: bytes) -> bool:
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(prefix) for prefix in _MAGIC_PREFIXES)


def _open_checked(data: bytes, max_pixels: int, formats: tuple[str, ...]) -> Image.Image:
    """Parse the header only and refuse oversized images before any pixel is decoded."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings(record=True):
            # PIL warns above its own global limit; ours (max_pixels) decides, so the warning is just recorded.
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as err:
        raise ImageDecodeError("decompression_bomb", f"image refused as a decompression bomb: {err}") from err
    except Exception as err:  # untrusted bytes: a plugin may raise anything (struct.error, ...); all mean unusable
        if _looks_like_image(data):
            raise ImageDecodeError("undecodable_image", f"image header is corrupt ({err})") from err
        head = bytes(data[:12])
        raise ImageDecodeError(
            "not_an_image", f"data is not a recognised image format (first bytes {head!r}, {len(data)} bytes)"
        ) from err
    width, height = img.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            "decompression_bomb",
            f"image declares {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
        )
    return img


def _load_pixels(img: Image.Image) -> None:
    """Decode every pixel now, so truncation shows up here and not later inside a training batch."""
    try:
        img.load()
    except Image.DecompressionBombError as err:
        raise ImageDecodeError("decompression_bomb", f"image refused as a decompression bomb: {err}") from err
    except Exception as err:  # untrusted bytes: a decoder may raise anything; all mean the pixels are unusable
        reason = "truncated_image" if "truncated" in str(err).lower() else "undecodable_image"
        raise ImageDecodeError(reason, f"image data cannot be decoded ({err})") from err


def _has_transparency(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit and float greyscale would clip to white with a plain convert; rescale to 0..255 instead."""
    pixels = np.asarray(img, dtype=np.float64)
    peak = float(pixels.max()) if pixels.size else 0.0
    scale = 255.0 / peak if peak > 255.0 else 1.0
    return Image.fromarray(np.clip(pixels * scale, 0, 255).astype(np.uint8), mode="L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels become white, as on a product photo's background."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _high_bit_depth_to_l(img).convert("RGB")
    try:
        if _has_transparency(img):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageDecodeError("undecodable_image", f"cannot convert image mode {img.mode} to RGB ({err})") from err


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS,
                 formats: tuple[str, ...] = PHOTO_FORMATS) -> tuple[Image.Image, str | None]:
    """Fully decode encoded image bytes to RGB; return ``(rgb_image, converted_from)``.

    ``converted_from`` is the original mode ("L", "RGBA", "CMYK", "P", ...) when it was not RGB, else None, so the
    loader can report how many photos were converted. Pixels are decoded eagerly so a truncated file fails here.
    This is the one decoder of enclip: catalogue rows, command-line queries and HTTP uploads (which narrow
    ``formats``) all come through it, so a photo looks the same to the model whichever way it arrives.
    Raises ``ImageDecodeError`` whose ``reason`` is one of ``DECODE_REASONS``.
    """
    if not data:
        raise ImageDecodeError("not_an_image", "image data is empty (0 bytes)")
    img = _open_checked(data, max_pixels, formats)
    _load_pixels(img)
    original_mode = img.mode
    rgb = _to_rgb(img)
    if rgb is img:
        rgb = img.copy()  # a plain image, detached from the file object and its encoded bytes
    return rgb, (None if original_mode == "RGB" else original_mode)


def _read_image_file(path: Path) -> bytes:
    if not path.exists():
        raise EnclipError(f"image file not found: {path}; check the path (relative paths are from {Path.cwd()})")
    if path.is_dir():
        raise EnclipError(f"{path} is a folder, not an image file; pass the path of one image (JPEG, PNG, ...)")
    try:
        return path.read_bytes()
    except OSError as err:
        raise EnclipError(f"cannot read image file {path}: {err.strerror or err}; check its permissions") from err


def load_image(path_or_bytes: str | Path | bytes | bytearray | memoryview | Image.Image) -> Image.Image:
    """Load a user's query image (a path, encoded bytes, or a PIL image) as RGB.

    Failures raise ``EnclipError`` (``ImageDecodeError`` for undecodable data) whose message names the file.
    """
    if isinstance(path_or_bytes, Image.Image):
        return _to_rgb(path_or_bytes)
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return decode_image(bytes(path_or_bytes))[0]
    if not isinstance(path_or_bytes, (str, Path)):
        raise EnclipError(f"cannot load an image from a {type(path_or_bytes).__name__}; pass a file path or bytes")
    path = Path(path_or_bytes).expanduser()
    data = _read_image_file(path)
    try:
        return decode_image(data)[0]
    except ImageDecodeError as err:
        raise ImageDecodeError(err.reason, f"cannot use {path} as an image: {err}") from err
