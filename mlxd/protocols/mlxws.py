"""The wire format of the original mlx-websockets project, extended: parse, validate, serialise.

This module knows JSON and field names and nothing of sessions or models: it turns a client's message
into a neutral intent and a neutral server event into text. Its sibling modules do the same for other
protocols.

Binary messages carry one image without base64: a 4-byte big-endian header length, a UTF-8 JSON header
(the fields of an `image_input`, `video_frame` or `screen_frame` message minus the image data), then the
raw JPEG, PNG or WebP bytes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from typing import Any

from mlxd import errors
from mlxd.errors import ClientError
from mlxd.events import (
    ConfigUpdated,
    ConversationReset,
    ErrorReport,
    FrameDropped,
    ResponseCompleted,
    ResponseStarted,
    ServerEvent,
    StatusReport,
    TokenText,
)
from mlxd.generation import GenerationConfig
from mlxd.intents import (
    FRAME_TYPES,
    Cancel,
    ConfigUpdate,
    GetStatus,
    ImageInput,
    Intent,
    Reset,
    SetVoice,
    TextInput,
    VoiceSettings,
)
from mlxd.protocols.base import valid_unicode
from mlxd.protocols.mlxws_voice import (
    AUDIO_TYPES,
    INITIAL_VOICE,
    VOICE_FIELDS,
    encode_voice,
    parse_audio,
    parse_voice_field,
    voice_config,
)
from mlxd.settings import Settings

MAX_ID_CHARS = 256
MAX_BINARY_HEADER_BYTES = 64 * 1024
MAX_OUTPUT_TOKENS = 8192
DEFAULT_IMAGE_PROMPT = "What do you see in this image?"
DEFAULT_FRAME_PROMPT = "Describe what you see."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ClientError(errors.INVALID_JSON, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ClientError(errors.INVALID_JSON, f"{what} must be a JSON object, got {type(message).__name__}")
    return message


def _optional_str(message: dict[str, Any], name: str, limit: int, request_id: str | None) -> str | None:
    value = message.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ClientError(errors.INVALID_FIELD, f"{name}: must be a string", request_id)
    if not valid_unicode(value):
        raise ClientError(errors.INVALID_FIELD, f"{name}: not valid Unicode (a lone surrogate escape)", request_id)
    if len(value) > limit:
        raise ClientError(errors.TEXT_TOO_LONG, f"{name}: {len(value)} characters, the limit is {limit}",
                          request_id)
    return value


def _required_str(message: dict[str, Any], name: str, limit: int, request_id: str | None) -> str:
    value = _optional_str(message, name, limit, request_id)
    if value is None or not value.strip():
        raise ClientError(errors.INVALID_FIELD, f"{name}: required, a non-empty string", request_id)
    return value


def _request_id(message: dict[str, Any]) -> str | None:
    value = message.get("id")
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS or not valid_unicode(value):
        raise ClientError(errors.INVALID_FIELD, f"id: must be a string of 1 to {MAX_ID_CHARS} characters")
    return value


def parse_text(text: str, max_text_chars: int) -> Intent:
    """Parse one text WebSocket message; raises ClientError naming what is wrong."""
    return _parse_object(_load_object(text, "message"), max_text_chars, image_bytes=None)


def parse_binary(data: bytes, max_text_chars: int) -> Intent:
    """Parse one binary message: header length, JSON header, raw image bytes."""
    if len(data) < 4:
        raise ClientError(errors.INVALID_JSON, "binary message shorter than its 4-byte header length")
    header_length = int.from_bytes(data[:4], "big")
    if header_length > MAX_BINARY_HEADER_BYTES or 4 + header_length > len(data):
        raise ClientError(errors.INVALID_JSON,
                          f"binary header length {header_length} does not fit the message of {len(data)} bytes")
    message = _load_object(data[4:4 + header_length], "binary message header")
    image_bytes = data[4 + header_length:]
    if message.get("type") not in ("image_input", *FRAME_TYPES):
        raise ClientError(errors.UNKNOWN_TYPE, "binary messages carry image_input, video_frame or screen_frame",
                          _request_id(message))
    return _parse_object(message, max_text_chars, image_bytes=image_bytes)


def _parse_object(message: dict[str, Any], max_text_chars: int, image_bytes: bytes | None) -> Intent:
    request_id = _request_id(message)
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ClientError(errors.UNKNOWN_TYPE, "message has no 'type' string", request_id)
    if kind == "text_input":
        return TextInput(request_id, _required_str(message, "content", max_text_chars, request_id),
                         _optional_str(message, "context", max_text_chars, request_id))
    if kind == "image_input" or kind in FRAME_TYPES:
        data_field = "image" if kind == "image_input" else "frame"
        if image_bytes is None:
            data: str | bytes = _required_str(message, data_field, 2**62, request_id)
        elif data_field in message:
            raise ClientError(errors.INVALID_FIELD, f"{data_field}: binary messages carry the image after the "
                                                    "header, not in it", request_id)
        else:
            data = image_bytes
        default_prompt = DEFAULT_IMAGE_PROMPT if kind == "image_input" else DEFAULT_FRAME_PROMPT
        prompt = _optional_str(message, "prompt", max_text_chars, request_id) or default_prompt
        return ImageInput(request_id, kind, data, prompt, _optional_str(message, "source", 256, request_id))
    if kind == "config":
        return _parse_config(message, request_id)[0]
    if kind == "cancel":
        return Cancel(request_id)
    if kind == "get_status":
        return GetStatus(request_id)
    if kind == "reset":
        return Reset(request_id)
    raise ClientError(errors.UNKNOWN_TYPE, f"unknown message type {kind[:64]!r}", request_id)


def _number(name: str, value: Any, low: float, high: float, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}: must be finite")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{name}: must be an integer")
        value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name}: must be between {low} and {high}, got {value}")
    return value


WIRE_TO_CONFIG: dict[str, tuple[str, float, float, bool]] = {
    "maxOutputTokens": ("max_tokens", 1, MAX_OUTPUT_TOKENS, True),
    "max_tokens_image": ("max_tokens_image", 1, MAX_OUTPUT_TOKENS, True),
    "temperature": ("temperature", 0.0, 2.0, False),
    "topP": ("top_p", 0.0, 1.0, False),
    "topK": ("top_k", 0, 1_000_000, True),
    "presencePenalty": ("presence_penalty", -2.0, 2.0, False),
    "frequencyPenalty": ("frequency_penalty", -2.0, 2.0, False),
}
CONFIG_TO_WIRE = {name: wire for wire, (name, *_) in WIRE_TO_CONFIG.items()} | {"history": "history"}


def _parse_config(message: dict[str, Any], request_id: str | None,
                  voice: VoiceSettings = INITIAL_VOICE) -> tuple[ConfigUpdate, VoiceSettings]:
    """Validate every field before anything changes: one bad field refuses the whole update. Returns the
    generation changes and the voice settings with the update's voice fields applied."""
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for wire, value in message.items():
        if wire in ("type", "id"):
            continue
        try:
            if wire == "candidateCount":
                _number(wire, value, 1, 1, integer=True)
            elif wire in VOICE_FIELDS:
                voice = parse_voice_field(wire, value, voice)
            elif wire == "history":
                if not isinstance(value, bool):
                    raise ValueError(f"{wire}: must be true or false")
                changes["history"] = value
            elif wire in WIRE_TO_CONFIG:
                name, low, high, integer = WIRE_TO_CONFIG[wire]
                changes[name] = _number(wire, value, low, high, integer)
            else:
                raise ValueError(f"{wire[:64]}: not a configuration field")
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ClientError(errors.INVALID_FIELD, "; ".join(problems), request_id)
    return ConfigUpdate(request_id, changes), voice


def wire_config(config: GenerationConfig, voice: VoiceSettings = INITIAL_VOICE) -> dict[str, Any]:
    current = {"candidateCount": 1}
    current.update({CONFIG_TO_WIRE[name]: value for name, value in asdict(config).items()})
    current.update(voice_config(voice))
    return current


def _with_id(message: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    if request_id is not None:
        message["id"] = request_id
    return message


def encode(event: ServerEvent, voice: VoiceSettings = INITIAL_VOICE,
           voice_updates: dict[str, Any] | None = None) -> str | None:
    """Serialise a server event as one JSON text message (None: one this protocol does not send); `voice` is
    the connection's voice configuration, `voice_updates` the voice fields a config update changed."""
    now = time.time()
    if isinstance(event, TokenText):
        message = {"type": "token", "content": event.text, "timestamp": now}
    elif isinstance(event, ResponseStarted):
        message = {"type": "response_start", "input_type": event.input_type, "timestamp": now}
    elif isinstance(event, ResponseCompleted):
        message = {
            "type": "response_complete",
            "full_text": event.full_text,
            "input_type": event.input_type,
            "inference_time": round(event.inference_time, 6),
            "time_to_first_token": None if event.time_to_first_token is None
            else round(event.time_to_first_token, 6),
            "finish_reason": event.finish_reason,
            "usage": {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
                      "cached_tokens": event.cached_tokens},
            "timestamp": now,
        }
    elif isinstance(event, FrameDropped):
        message = {"type": "frame_dropped", "reason": event.reason, "timestamp": now}
    elif isinstance(event, ConfigUpdated):
        message = {"type": "config_updated",
                   "updated_fields": {**{CONFIG_TO_WIRE[name]: value for name, value in event.changes.items()},
                                      **(voice_updates or {})},
                   "current_config": wire_config(event.config, voice), "timestamp": now}
    elif isinstance(event, ConversationReset):
        message = {"type": "conversation_reset", "timestamp": now}
    elif isinstance(event, StatusReport):
        message = {"type": "status", **event.status, "timestamp": now}
    elif isinstance(event, ErrorReport):
        # The message may quote the client (a field name): never let a lone surrogate make it unsendable.
        text = event.message.encode("utf-8", "replace").decode("utf-8")
        message = {"type": "error", "error": text, "code": event.code, "timestamp": now}
    else:
        voice_message = encode_voice(event)
        if voice_message is None:
            return None
        message = {**voice_message, "timestamp": now}
    return json.dumps(_with_id(message, getattr(event, "request_id", None)), ensure_ascii=False, separators=(",", ":"))


class MlxwsWire:
    """The original protocol on one connection: text JSON messages, binary frames in, text JSON out."""

    def __init__(self, settings: Settings) -> None:
        self.max_text_chars = settings.max_text_chars
        self.voice = INITIAL_VOICE
        self._voice_sent = False
        self._voice_updates: dict[str, dict[str, Any]] = {}  # config id -> the voice fields it set
        self._voice_before: dict[str, VoiceSettings] = {}  # config id -> the voice it replaced, until answered

    def opening(self) -> list[str | bytes]:
        return []

    def parse(self, data: str | bytes) -> list[Intent]:
        if isinstance(data, bytes):
            return [parse_binary(data, self.max_text_chars)]
        message = _load_object(data, "message")
        kind = message.get("type")
        request_id = _request_id(message)
        if kind in AUDIO_TYPES:
            return [*self._voice_first(), parse_audio(message, kind, request_id, self.voice)]
        if kind != "config":
            return [_parse_object(message, self.max_text_chars, image_bytes=None)]
        update, voice = _parse_config(message, request_id, self.voice)
        if voice == self.voice:
            return [update]
        key = request_id or ""
        self._voice_updates[key] = {name: message[name] for name in VOICE_FIELDS if name in message}
        self._voice_before[key], self.voice, self._voice_sent = self.voice, voice, True
        return [SetVoice(voice, request_id), update]

    def _voice_first(self) -> list[Intent]:
        """The session learns this protocol's voice settings before its first audio."""
        if self._voice_sent:
            return []
        self._voice_sent = True
        return [SetVoice(self.voice)]

    def encode(self, event: ServerEvent) -> list[str]:
        key = getattr(event, "request_id", None) or ""
        if isinstance(event, ErrorReport) and key in self._voice_before:
            self.voice = self._voice_before.pop(key)  # the session refused the voice settings: they did not change
            self._voice_updates.pop(key, None)
            self._voice_sent = False
        elif isinstance(event, ConfigUpdated):
            self._voice_before.pop(key, None)
        message = encode(event, self.voice, self._voice_updates.pop(key, None)
                         if isinstance(event, ConfigUpdated) else None)
        return [] if message is None else [message]

    def farewell(self, code: int) -> list[str | bytes]:
        return []
