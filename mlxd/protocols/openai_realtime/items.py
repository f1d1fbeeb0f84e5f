"""Conversation items: OpenAI `message` items to neutral Messages and back.

Images stay as the client sent them (a `data:image/...;base64,` URL), checked from their header when they
arrive; mlxd fetches nothing, so http(s) URLs are refused. A live frame sent as a binary message is echoed
back as a data URL of its bytes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from mlxd.dialogue import Message, Part
from mlxd.errors import ClientError
from mlxd.media import inspect_image
from mlxd.protocols.openai_realtime.fields import (
    INVALID_VALUE,
    UNSUPPORTED_FEATURE,
    Fields,
)

DATA_URL_PREFIX = "data:image/"
CONTENT_TYPES = {"user": ("input_text", "input_image"), "system": ("input_text",), "assistant": ("output_text",)}
AUDIO_CONTENT = ("input_audio", "output_audio", "audio")
TOOL_ITEMS = ("function_call", "function_call_output")
MIME_BY_MAGIC = ((b"\xff\xd8", "jpeg"), (b"\x89PNG", "png"), (b"RIFF", "webp"))


@dataclass(frozen=True)
class Limits:
    """What one text or image may weigh: the server's limits, applied as each item arrives."""

    max_text_chars: int
    max_image_bytes: int
    max_image_pixels: int


def parse_item(value: Any, where: str, event_id: str | None, limits: Limits, new_id: str) -> Message:
    """A client's `message` item as a Message; its `id` is kept, or `new_id` is given."""
    item = Fields(value, where, event_id, ("type", "id", "role", "content", "object", "status"),
                  ignored=("name", "call_id", "arguments", "output"))
    kind = item.required("type")
    if kind in TOOL_ITEMS:
        raise item.error(UNSUPPORTED_FEATURE, "type", f"{kind} items: function calling is not supported")
    if kind != "message":
        raise item.error(INVALID_VALUE, "type", "only message items are supported")
    item_id = item.identifier("id") or new_id
    role = item.required("role")
    if role not in CONTENT_TYPES:
        raise item.error(INVALID_VALUE, "role", "must be user, system or assistant")
    content = item.listed("content")
    if not content:
        raise item.error(INVALID_VALUE, "content", "must be a non-empty array")
    parts = tuple(_parse_part(part, f"{item.path('content')}[{index}]", event_id, role, limits)
                  for index, part in enumerate(content))
    return Message(role, parts, item_id)


def _parse_part(value: Any, where: str, event_id: str | None, role: str, limits: Limits) -> Part:
    part = Fields(value, where, event_id, ("type", "text", "image_url", "detail"),
                  ignored=("audio", "transcript"))
    kind = part.required("type")
    if kind in AUDIO_CONTENT:
        raise part.error(UNSUPPORTED_FEATURE, "type", f"{kind}: audio in conversation items is not served; stream "
                         "it with input_audio_buffer.append")
    if kind not in CONTENT_TYPES[role]:
        raise part.error(INVALID_VALUE, "type", f"{role} content must be {' or '.join(CONTENT_TYPES[role])}")
    if kind == "input_image":
        part.choice("detail", ("auto", "low", "high"))
        return Part(image=parse_image_url(part, "image_url", limits))
    return Part(text=part.text("text", limits.max_text_chars, required=True))


def parse_image_url(fields: Fields, name: str, limits: Limits, inspect: bool = True) -> str:
    """A `data:image/...;base64,` URL, checked from the image's header (a live frame is not: the next
    may replace it); anything else is refused."""
    url = fields.text(name, 2**62, required=True)
    assert url is not None
    if url.lower().startswith(("http://", "https://")):
        raise fields.error(INVALID_VALUE, name, "mlxd fetches nothing: send the image as a data:image/...;base64, URL")
    if not url.startswith(DATA_URL_PREFIX) or ";base64," not in url[:64]:
        raise fields.error(INVALID_VALUE, name, "must be a data:image/...;base64, URL")
    if inspect:
        check_image(url, limits, fields.event_id, fields.path(name))
    return url


def check_image(data: str | bytes, limits: Limits, event_id: str | None, param: str | None) -> None:
    try:
        inspect_image(data, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels)
    except ClientError as exc:
        raise ClientError(exc.code, exc.message, event_id, field=param) from None


def image_url(image: str | bytes) -> str:
    """An image as the client sent it: its data URL, or a data URL of raw bytes from a binary message."""
    if isinstance(image, str):
        return image
    mime = next((name for magic, name in MIME_BY_MAGIC if image.startswith(magic)), "jpeg")
    return f"data:image/{mime};base64,{base64.b64encode(image).decode()}"


def item_json(message: Message, status: str = "completed") -> dict[str, Any]:
    """A Message as an OpenAI conversation item."""
    if message.role == "assistant":
        content = [{"type": "output_text", "text": part.text or ""} for part in message.parts]
    else:
        content = [{"type": "input_image", "image_url": image_url(part.image)} if part.image is not None
                   else {"type": "input_text", "text": part.text or ""} for part in message.parts]
    return {"id": message.id, "type": "message", "object": "realtime.item", "status": status,
            "role": message.role, "content": content}
