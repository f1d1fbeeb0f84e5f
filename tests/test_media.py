"""Image decoding and its limits."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from mlxd import errors
from mlxd.errors import ClientError
from mlxd.media import decode_image, encoded_size
from tests.helpers import encoded_image

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 4_000_000, "max_side": 64}


def refused(data, **limits) -> ClientError:
    with pytest.raises(ClientError) as caught:
        decode_image(data, **{**LIMITS, **limits})
    return caught.value


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_accepted_formats_in_every_encoding(fmt):
    raw = encoded_image(200, 100, fmt)
    payload = base64.b64encode(raw).decode()
    for data in (raw, payload, f"data:image/{fmt.lower()};base64,{payload}"):
        image = decode_image(data, **LIMITS)
        assert image.mode == "RGB"
        assert image.size == (64, 32)


def test_small_images_are_not_enlarged():
    assert decode_image(encoded_image(1, 1, "PNG"), **LIMITS).size == (1, 1)


def test_rgba_and_palette_become_rgb():
    buffer = io.BytesIO()
    Image.new("RGBA", (10, 10), (1, 2, 3, 4)).save(buffer, "PNG")
    assert decode_image(buffer.getvalue(), **LIMITS).mode == "RGB"


@pytest.mark.parametrize("data", ["not base64!!", "data:image/png;base64,@@@", b"plain bytes", b"",
                                  encoded_image(50, 50, "PNG")[:60]])
def test_undecodable(data):
    assert refused(data).code == errors.IMAGE_DECODE_FAILED


def test_other_formats_are_refused():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "GIF")
    error = refused(buffer.getvalue())
    assert error.code == errors.IMAGE_DECODE_FAILED and "GIF" in error.message


def test_too_many_bytes():
    data = encoded_image(64, 64, "PNG")
    assert refused(data, max_bytes=len(data) - 1).code == errors.IMAGE_TOO_LARGE
    assert encoded_size(base64.b64encode(data).decode()) == len(data)


def test_decompression_bomb_is_refused_from_its_header():
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")
    error = refused(bomb.getvalue())
    assert error.code == errors.IMAGE_TOO_LARGE
    assert "pixels" in error.message


def test_pixel_limit_is_checked_before_decoding():
    error = refused(encoded_image(3000, 2000, "PNG"), max_pixels=5_000_000)
    assert (error.code, "3000x2000" in error.message) == (errors.IMAGE_TOO_LARGE, True)
