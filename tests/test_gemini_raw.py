"""Gemini Live over a bare WebSocket: what no SDK sends (malformed JSON, unknown keys, wrong order), the wire's
exact shape (binary frames, only Google's top-level keys), every path, access rules and goAway."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from mlxd.protocols.gemini_live import PATHS
from tests.helpers import ServerProcess

TOKEN = "gemini-Token_0123456789"
PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
SERVER_KEYS = {"setupComplete", "serverContent", "usageMetadata", "goAway"}
SETUP = {"setup": {"model": "models/anything", "generationConfig": {"temperature": 0, "maxOutputTokens": 4}}}


@contextlib.contextmanager
def open_session(server: ServerProcess, path: str = PATH, setup: dict | None = None, **options) -> Iterator:
    with server.connect(path, **options) as ws:
        ws.send(json.dumps(setup or SETUP))
        assert received(ws) == {"setupComplete": {}}
        yield ws


def received(ws, timeout: float = 30) -> dict:
    frame = ws.recv(timeout=timeout)
    assert isinstance(frame, bytes), "JSON in binary frames, as Google's server sends"
    message = json.loads(frame)
    assert set(message) <= SERVER_KEYS, f"the python SDK raises on any other top-level key: {message}"
    return message


def until_turn_complete(ws) -> list[dict]:
    messages = []
    while not messages or not messages[-1].get("serverContent", {}).get("turnComplete"):
        messages.append(received(ws))
    return messages


def closed_with(ws, message: str | dict | None = None) -> tuple[int, str]:
    if message is not None:
        ws.send(message if isinstance(message, str) else json.dumps(message))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            received(ws, timeout=30)
    assert closed.value.rcvd is not None, "a close frame, not a dropped socket"
    return closed.value.rcvd.code, closed.value.rcvd.reason


@pytest.mark.parametrize("path", PATHS)
def test_every_path_answers_a_turn(text_server, path):
    with open_session(text_server, path) as ws:
        ws.send(json.dumps({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Hi"}]}],
                                              "turnComplete": True}}))
        messages = until_turn_complete(ws)
    assert messages[0]["serverContent"]["modelTurn"]["role"] == "model"
    assert messages[-2] == {"serverContent": {"generationComplete": True}}
    usage = messages[-1]["usageMetadata"]
    assert usage["responseTokenCount"] == 4 and usage["totalTokenCount"] == usage["promptTokenCount"] + 4
    assert "".join(part["text"] for m in messages[:-2] for part in m["serverContent"]["modelTurn"]["parts"])


@pytest.mark.parametrize("first,code,named", [
    ("not json", 1007, "not valid JSON"),
    ('"a string"', 1007, "JSON object"),
    ({"clientContent": {"turnComplete": True}}, 1007, "first message must be a setup"),
    ({"setup": {}, "realtimeInput": {}}, 1007, "exactly one of"),
    ({"unknownThing": {}}, 1007, "exactly one of"),
    ({"setup": {"generationConfig": {"temperature": 5}}}, 1007, "temperature"),
    ({"setup": {"generationConfig": {"responseModalities": ["TEXT", "AUDIO"]}}}, 1007, "responseModalities"),
])
def test_a_bad_first_message_closes_with_a_reason_naming_it(text_server, first, code, named):
    with text_server.connect(PATH) as ws:
        found_code, reason = closed_with(ws, first)
    assert found_code == code and named in reason and len(reason.encode()) <= 123


@pytest.mark.parametrize("message,code,named", [
    (SETUP, 1007, "setup was already sent"),
    ({"realtimeInput": {"activityStart": {}}}, 1007, "automatic activity detection is on"),
    ({"toolResponse": {"functionResponses": []}}, 1008, "toolResponse"),
    ({"realtimeInput": {"text": "x" * 40_000}}, 1007, "limit is 32000"),
    ({"clientContent": {"turns": [{"parts": [{"inlineData": {"data": "AAAA", "mimeType": "image/png"}}]}],
                        "turnComplete": True}}, 1008, "text-only"),
])
def test_a_bad_later_message_closes_that_session_only(text_server, message, code, named):
    with open_session(text_server) as bystander, open_session(text_server) as ws:
        assert closed_with(ws, message)[0] == code
        bystander.send(json.dumps({"realtimeInput": {"text": "still here?"}}))
        assert until_turn_complete(bystander)[-1]["usageMetadata"]["responseTokenCount"] == 4


def test_snake_case_everywhere_and_audio_stream_end_is_harmless(text_server):
    setup = {"setup": {"model": "x", "generation_config": {"temperature": 0, "max_output_tokens": 2, "top_k": 5.0,
                                                           "presence_penalty": 0.5, "frequency_penalty": -0.5},
                       "system_instruction": {"parts": [{"text": "Be brief."}]}}}
    with open_session(text_server, setup=setup) as ws:
        ws.send(json.dumps({"realtime_input": {"audio_stream_end": True}}))
        ws.send(json.dumps({"client_content": {"turns": [{"role": "user", "parts": [{"text": "Hi"}]}],
                                               "turn_complete": True}}))
        assert until_turn_complete(ws)[-1]["usageMetadata"]["responseTokenCount"] == 2


def test_the_token_is_the_api_key_in_every_form_and_required_on_gemini_paths(tiny_text_model, start_server):
    server = start_server(tiny_text_model, env={"MLXD_TOKEN": TOKEN})
    for options in ({}, {"additional_headers": {"x-goog-api-key": "wrong"}}):
        with pytest.raises(InvalidStatus) as refused:
            server.connect(PATH, **options).close()
        assert refused.value.response.status_code == (401 if not options else 403)
    for path, headers in ((PATH, {"x-goog-api-key": TOKEN}), (f"/{PATH}?access_token={TOKEN}", {}),
                          (f"{PATH}?key={TOKEN}", {}), (PATH, {"Authorization": f"Token {TOKEN}"})):
        with server.connect(path, additional_headers=headers) as ws:
            ws.send(json.dumps(SETUP))
            assert received(ws) == {"setupComplete": {}}


def test_origin_and_host_rules_hold_on_gemini_paths(text_server):
    with pytest.raises(InvalidStatus) as refused:
        text_server.connect(PATH, origin="https://evil.example").close()
    assert refused.value.response.status_code == 403
    with open_session(text_server, origin="http://localhost:5173"):
        pass
    handshake = (f"GET {PATH} HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    with socket.create_connection(("127.0.0.1", text_server.port), timeout=5) as raw:
        raw.sendall(handshake.encode())
        assert raw.recv(100).startswith(b"HTTP/1.1 403")


def test_idle_and_shutdown_say_go_away_before_closing(tiny_text_model, start_server):
    server = start_server(tiny_text_model, "--idle-timeout", "1")
    with server.connect(PATH) as ws:
        ws.send(json.dumps(SETUP))
        assert received(ws) == {"setupComplete": {}}
        assert received(ws, timeout=10) == {"goAway": {"timeLeft": "0s"}}
        assert closed_with(ws) == (1000, "idle")
    with server.connect(PATH) as ws:
        ws.send(json.dumps(SETUP))
        received(ws)
        server.process.terminate()
        assert received(ws, timeout=10) == {"goAway": {"timeLeft": "0s"}}
        assert closed_with(ws)[0] == 1001
