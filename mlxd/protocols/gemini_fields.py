"""Reading Gemini Live's JSON as Google's clients write it: every field in camelCase or snake_case, bytes in
standard or URL-safe base64, padded or not, unknown nested fields ignored.

Everything wrong is a `ClientError` whose message names the field by its path (`setup.generationConfig.
temperature`), short enough for a close frame's reason; the wire turns it into the close code.
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import cache
from typing import Any

from mlxd import errors
from mlxd.dialogue import Message, Part
from mlxd.errors import ClientError
from mlxd.protocols.mlxws import WIRE_TO_CONFIG, _number

UNSUPPORTED = "unsupported"
ROLES = {"user": "user", "model": "assistant"}
# mlxd's own protocol already names its sampling fields as Gemini's generationConfig does, with the same ranges.
GENERATION_FIELDS = {wire: spec for wire, spec in WIRE_TO_CONFIG.items() if wire != "max_tokens_image"}
AUDIO_IN_TURNS = "audio in clientContent turns is not supported: stream it as realtimeInput.audio"


def invalid(message: str) -> ClientError:
    return ClientError(errors.INVALID_FIELD, message)


def unsupported(message: str) -> ClientError:
    return ClientError(UNSUPPORTED, message)


@cache
def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@cache
def camel(name: str) -> str:
    return re.sub(r"_([a-z0-9])", lambda match: match.group(1).upper(), name)


def field(obj: dict[str, Any], name: str) -> Any:
    """The value of camelCase `name`, or of its snake_case spelling; None when absent."""
    value = obj.get(name)
    return obj.get(snake(name)) if value is None else value


def as_object(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{path}: must be an object")
    return value


def as_list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f"{path}: must be a list")
    return value


def as_bool(value: Any, path: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"{path}: must be true or false")
    return value


def as_text(value: Any, path: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise invalid(f"{path}: must be a string")
    if len(value) > max_chars:
        raise ClientError(errors.TEXT_TOO_LONG, f"{path}: {len(value)} characters, the limit is {max_chars}")
    return value


def decode_base64(value: Any, path: str) -> bytes:
    """Standard or URL-safe alphabet (python's SDK sends URL-safe), padding optional."""
    if not isinstance(value, str):
        raise invalid(f"{path}: must be a base64 string")
    text = value.strip().translate(str.maketrans("-_", "+/")).rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{path}: not valid base64") from None


def image_blob(blob: Any, path: str) -> bytes:
    """A `Blob` {mimeType, data} that must be an image: its bytes. Audio is refused as unsupported (the
    realtime input takes it apart, with gemini_audio)."""
    blob = as_object(blob, path)
    mime_type = field(blob, "mimeType")
    if not isinstance(mime_type, str):
        raise invalid(f"{path}.mimeType: must be a string")
    if mime_type.startswith("audio/"):
        raise unsupported(f"{path}: {AUDIO_IN_TURNS}")
    if not mime_type.startswith("image/"):
        raise invalid(f"{path}.mimeType: {mime_type[:40]!r} is not an image type")
    return decode_base64(field(blob, "data"), f"{path}.data")


def instruction_text(value: Any, path: str, max_chars: int) -> str | None:
    """A systemInstruction: a Content whose text parts are joined (its role is ignored), or a plain string."""
    if value is None or isinstance(value, str):
        return None if value is None else as_text(value, path, max_chars)
    content = as_object(value, path)
    texts = [as_text(field(part, "text"), f"{path}.parts[{i}].text", max_chars)
             for i, part in enumerate(as_list(field(content, "parts"), f"{path}.parts"))
             if field(as_object(part, f"{path}.parts[{i}]"), "text") is not None]
    return as_text("\n".join(texts), path, max_chars) if texts else None


def content_message(content: Any, path: str, max_chars: int) -> Message:
    """A `Content` turn {role, parts: [{text} | {inlineData}]}; other kinds of part are ignored."""
    content = as_object(content, path)
    role = field(content, "role") or "user"
    if not isinstance(role, str) or role not in ROLES:
        raise invalid(f"{path}.role: must be 'user' or 'model'")
    parts = []
    for i, part in enumerate(as_list(field(content, "parts"), f"{path}.parts")):
        part = as_object(part, f"{path}.parts[{i}]")
        if field(part, "text") is not None:
            parts.append(Part(text=as_text(field(part, "text"), f"{path}.parts[{i}].text", max_chars)))
        elif field(part, "inlineData") is not None:
            parts.append(Part(image=image_blob(field(part, "inlineData"), f"{path}.parts[{i}].inlineData")))
    if ROLES[role] == "assistant" and any(part.image is not None for part in parts):
        raise invalid(f"{path}: a model turn carries text only")
    return Message(ROLES[role], tuple(parts))


def generation_changes(config: Any) -> dict[str, Any]:
    """setup.generationConfig as session configuration changes; what mlxd cannot honour is refused, what
    does not change an answer (seed, media resolution, thinking) is accepted and ignored. Modalities and
    speech are the voice's (gemini_audio)."""
    path = "setup.generationConfig"
    config = as_object(config, path)
    changes: dict[str, Any] = {}
    try:
        for wire, (name, low, high, integer) in GENERATION_FIELDS.items():
            if field(config, wire) is not None:
                changes[name] = _number(wire, field(config, wire), low, high, integer)
        if field(config, "candidateCount") is not None:
            _number("candidateCount", field(config, "candidateCount"), 1, 1, integer=True)
    except ValueError as exc:
        raise invalid(f"{path}.{exc}") from None
    return changes
