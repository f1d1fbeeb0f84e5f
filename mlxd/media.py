"""Decoding images and frames: base64 or data URI or raw bytes in, a bounded RGB PIL image out.

Limits are checked as early as each is knowable: the encoded size before any decoding, the declared
pixel count from the header before the pixels are decoded (a decompression bomb costs nothing), and the
size after decoding. Pillow's own decompression-bomb guard stays on as a second line.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import re
from collections.abc import Iterator

from PIL import Image, UnidentifiedImageError

from mlxd import errors
from mlxd.errors import ClientError

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
_DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


def encoded_size(data: str | bytes) -> int:
    """Bytes the image will take once base64 is decoded, without decoding it."""
    if isinstance(data, bytes):
        return len(data)
    match = _DATA_URI.match(data)
    payload_chars = len(data.rstrip("=")) - (match.end() if match else 0)
    return payload_chars * 3 // 4


def check_encoded_size(data: str | bytes, max_bytes: int, request_id: str | None = None) -> None:
    size = encoded_size(data)
    if size > max_bytes:
        raise ClientError(errors.IMAGE_TOO_LARGE, f"image is {size} bytes encoded, the limit is {max_bytes}",
                          request_id)


def _image_bytes(data: str | bytes) -> bytes:
    if isinstance(data, bytes):
        return data
    match = _DATA_URI.match(data)
    payload = data[match.end():] if match else data
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ClientError(errors.IMAGE_DECODE_FAILED, f"image is not valid base64: {exc}") from None


def inspect_image(data: str | bytes, *, max_bytes: int, max_pixels: int) -> None:
    """Refuse an image that is not a JPEG, PNG or WebP, or is too large, from its header: no pixels are
    decoded, so a protocol may check an image when it arrives without stalling the event loop."""
    with _refusals():
        _open(data, max_bytes, max_pixels)


def decode_image(data: str | bytes, *, max_bytes: int, max_pixels: int, max_side: int) -> Image.Image:
    """Decode a JPEG, PNG or WebP image, refuse what is too large, and resize so its longest side fits."""
    with _refusals():
        image = _open(data, max_bytes, max_pixels)
        if image.format == "JPEG":
            image.draft("RGB", (max_side, max_side))
        image = image.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return image


def _open(data: str | bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    check_encoded_size(data, max_bytes)
    image = Image.open(io.BytesIO(_image_bytes(data)))
    if image.format not in ACCEPTED_FORMATS:
        raise ClientError(errors.IMAGE_DECODE_FAILED,
                          f"image format {image.format} is not accepted (JPEG, PNG or WebP)")
    width, height = image.size
    if width * height > max_pixels:
        raise ClientError(errors.IMAGE_TOO_LARGE,
                          f"image is {width}x{height} pixels, the limit is {max_pixels} pixels")
    return image


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """Pillow's failures, as the refusals a client is told about."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise ClientError(errors.IMAGE_TOO_LARGE, f"image declares too many pixels: {exc}") from None
    except ClientError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ClientError(errors.IMAGE_DECODE_FAILED, f"image could not be decoded: {exc}") from None
