"""The wire format alone: parsing, validation and serialisation, with no server."""

from __future__ import annotations

import json
import struct

import pytest

from mlxd import errors
from mlxd.errors import ClientError
from mlxd.events import (
    ConfigUpdated,
    ConversationReset,
    ErrorReport,
    FrameDropped,
    ResponseCompleted,
    ResponseStarted,
    StatusReport,
    TokenText,
)
from mlxd.generation import GenerationConfig
from mlxd.protocols import mlxws as protocol

LIMIT = 1000


def parse(message) -> protocol.Intent:
    return protocol.parse_text(message if isinstance(message, str) else json.dumps(message), LIMIT)


def refused(message) -> ClientError:
    with pytest.raises(ClientError) as caught:
        parse(message)
    return caught.value


def test_text_input_with_context_and_id():
    parsed = parse({"type": "text_input", "content": "hi", "context": "be brief", "id": "q1"})
    assert parsed == protocol.TextInput("q1", "hi", "be brief")


@pytest.mark.parametrize("kind,field", [("image_input", "image"), ("video_frame", "frame"),
                                        ("screen_frame", "frame")])
def test_image_and_frames(kind, field):
    parsed = parse({"type": kind, field: "AAAA", "prompt": "what?", "source": "cam", "id": "f"})
    assert isinstance(parsed, protocol.ImageInput)
    assert (parsed.data, parsed.prompt, parsed.source, parsed.is_frame) == ("AAAA", "what?", "cam",
                                                                            kind != "image_input")


def test_image_prompt_defaults():
    assert parse({"type": "image_input", "image": "AAAA"}).prompt == protocol.DEFAULT_IMAGE_PROMPT
    assert parse({"type": "video_frame", "frame": "AAAA"}).prompt == protocol.DEFAULT_FRAME_PROMPT


@pytest.mark.parametrize("raw", ["not json", "{", "[1, 2]", '"text"', "NaN", '{"type": "config", "topP": NaN}',
                                 "[" * 100_000])
def test_invalid_json(raw):
    assert refused(raw).code == errors.INVALID_JSON


@pytest.mark.parametrize("message", [{}, {"type": 3}, {"type": "bogus"}, {"content": "x"}])
def test_unknown_type(message):
    assert refused(message).code == errors.UNKNOWN_TYPE


@pytest.mark.parametrize("message,field", [
    ({"type": "text_input"}, "content"),
    ({"type": "text_input", "content": 5}, "content"),
    ({"type": "text_input", "content": "   "}, "content"),
    ({"type": "text_input", "content": "x", "context": ["a"]}, "context"),
    ({"type": "image_input"}, "image"),
    ({"type": "video_frame", "frame": None}, "frame"),
    ({"type": "text_input", "content": "x", "id": 7}, "id"),
    ({"type": "text_input", "content": "x", "id": "x" * 300}, "id"),
])
def test_invalid_fields_are_named(message, field):
    error = refused(message)
    assert error.code == errors.INVALID_FIELD
    assert field in error.message


def test_text_too_long():
    error = refused({"type": "text_input", "content": "x" * (LIMIT + 1), "id": "long"})
    assert (error.code, error.request_id) == (errors.TEXT_TOO_LONG, "long")


def test_config_maps_wire_names_to_generation_settings():
    parsed = parse({"type": "config", "maxOutputTokens": 300, "temperature": 0.9, "topP": 0.5, "topK": 0,
                    "presencePenalty": 0.5, "frequencyPenalty": -0.5, "max_tokens_image": 50,
                    "candidateCount": 1, "responseModalities": ["TEXT"]})
    assert parsed.changes == {"max_tokens": 300, "temperature": 0.9, "top_p": 0.5, "top_k": 0,
                              "presence_penalty": 0.5, "frequency_penalty": -0.5, "max_tokens_image": 50}


@pytest.mark.parametrize("field,value", [
    ("candidateCount", 2), ("maxOutputTokens", 0), ("maxOutputTokens", 1.5), ("maxOutputTokens", "10"),
    ("maxOutputTokens", 10**30), ("temperature", 2.5), ("temperature", -1), ("temperature", True),
    ("topP", 1.1), ("topK", -1), ("presencePenalty", 1e308), ("responseModalities", ["AUDIO"]),
    ("max_tokens_image", None), ("unknownField", 1),
])
def test_config_rejects_bad_fields_by_name(field, value):
    error = refused({"type": "config", field: value})
    assert error.code == errors.INVALID_FIELD
    assert field in error.message


def test_config_is_atomic_and_reports_every_bad_field():
    error = refused({"type": "config", "temperature": 0.5, "topP": 7, "topK": "x"})
    assert "topP" in error.message and "topK" in error.message


def test_history_and_reset():
    assert parse({"type": "config", "history": True}).changes == {"history": True}
    assert refused({"type": "config", "history": 1}).code == errors.INVALID_FIELD
    assert parse({"type": "reset", "id": "r"}) == protocol.Reset("r")


def test_cancel_and_status():
    assert parse({"type": "cancel", "id": "q1"}) == protocol.Cancel("q1")
    assert parse({"type": "cancel"}) == protocol.Cancel(None)
    assert parse({"type": "get_status", "id": "s"}) == protocol.GetStatus("s")


def binary(header: dict, payload: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack(">I", len(encoded)) + encoded + payload


def test_binary_frame_carries_raw_bytes():
    parsed = protocol.parse_binary(binary({"type": "video_frame", "id": "b1", "source": "cam"}, b"\xff\xd8raw"),
                                   LIMIT)
    assert isinstance(parsed, protocol.ImageInput)
    assert (parsed.request_id, parsed.data, parsed.is_frame) == ("b1", b"\xff\xd8raw", True)


@pytest.mark.parametrize("data,code", [
    (b"\x00\x00", errors.INVALID_JSON),
    (b"\x00\x00\x10\x00{}", errors.INVALID_JSON),
    (binary({"type": "text_input", "content": "x"}, b""), errors.UNKNOWN_TYPE),
    (binary({"type": "video_frame", "frame": "AAAA"}, b"raw"), errors.INVALID_FIELD),
    (struct.pack(">I", 3) + b"abc", errors.INVALID_JSON),
])
def test_binary_refusals(data, code):
    with pytest.raises(ClientError) as caught:
        protocol.parse_binary(data, LIMIT)
    assert caught.value.code == code


def encoded(event) -> dict:
    message = json.loads(protocol.encode(event))
    assert isinstance(message.pop("timestamp"), float)
    return message


def test_encode_every_server_event():
    assert encoded(ResponseStarted("q", "text")) == {"type": "response_start", "input_type": "text", "id": "q"}
    assert encoded(TokenText(None, "hé")) == {"type": "token", "content": "hé"}
    assert encoded(ResponseCompleted("q", "image", "ab", "stop", 10, 2, 0.5, 0.1, cached_tokens=6)) == {
        "type": "response_complete", "full_text": "ab", "input_type": "image", "inference_time": 0.5,
        "time_to_first_token": 0.1, "finish_reason": "stop",
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "cached_tokens": 6}, "id": "q"}
    assert encoded(ConversationReset("r")) == {"type": "conversation_reset", "id": "r"}
    assert encoded(FrameDropped("f", "superseded")) == {"type": "frame_dropped", "reason": "superseded", "id": "f"}
    assert encoded(ErrorReport("queue_full", "full", "q")) == {"type": "error", "error": "full",
                                                               "code": "queue_full", "id": "q"}
    assert encoded(StatusReport({"state": "ready"}, "s")) == {"type": "status", "state": "ready", "id": "s"}
    config = GenerationConfig(temperature=0.2)
    message = encoded(ConfigUpdated({"temperature": 0.2}, config))
    assert message["updated_fields"] == {"temperature": 0.2}
    assert message["current_config"] == {
        "candidateCount": 1, "maxOutputTokens": 200, "max_tokens_image": 100, "temperature": 0.2, "topP": 1.0,
        "topK": 50, "presencePenalty": 0.0, "frequencyPenalty": 0.0, "history": False,
        "responseModalities": ["TEXT"], "voice": None,
        "turnDetection": {"threshold": 0.5, "prefixPaddingMs": 300, "silenceDurationMs": 500,
                          "interruptResponse": True}}


@pytest.mark.parametrize("raw", [
    '{"type": "text_input", "content": "a\\ud800b", "id": "s"}',
    '{"type": "text_input", "content": "ok", "id": "\\udfff"}',
    '{"type": "image_input", "image": "aGk=", "prompt": "\\udc80"}',
])
def test_lone_surrogates_are_refused(raw):
    """JSON escapes can smuggle lone surrogates in: they can be neither tokenized nor echoed back as UTF-8."""
    assert refused(raw).code == errors.INVALID_FIELD


def test_an_error_quoting_the_client_is_always_sendable():
    text = protocol.encode(ErrorReport(errors.INVALID_FIELD, "\ud800: not a configuration field"))
    assert json.loads(text.encode("utf-8"))["error"] == "?: not a configuration field"
