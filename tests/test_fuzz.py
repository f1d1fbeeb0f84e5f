"""Hostile and random messages against a live server: through hypothesis (tests/hostile.py's generator,
driven by a random it shrinks), a short run of scripts/fuzz.py (several connections, socket chaos, a
bystander), and regression tests for what the fuzzer found.

Every message gets an answer that follows the protocol: an error with a known code, or for a valid input
the normal sequence ending in exactly one terminal message; the connection stays usable; the server never
crashes; a bystander client is answered normally throughout; and memory stays bounded.
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from tests.helpers import REPO, ServerProcess, image_b64, receive, rss_bytes, run_request, send
from tests.hostile import FINAL_TYPES as FINAL
from tests.hostile import (
    VALID_IMAGES,
    answer_violations,
    jpeg_declaring,
    png_bomb,
    png_declaring,
    random_message,
    websocket_close_for,
    wire,
)

MAX_MESSAGE_BYTES = 1_000_000
MAX_RSS_GROWTH_BYTES = 200 * 1024 * 1024
SURROGATE_HEADER = b'{"type": "screen_frame", "id": "\\udfff"}'


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


REGRESSIONS = [
    json.dumps({"type": "image_input", "id": "png-bomb", "image": b64(png_declaring(20000, 20000))}),
    json.dumps({"type": "video_frame", "id": "jpeg-bomb", "frame": b64(jpeg_declaring(20000, 20000))}),
    json.dumps({"type": "image_input", "id": "real-bomb", "image": b64(png_bomb())}),
    "[" * 100_000 + "]" * 100_000,
    '{"type": "text_input", "content": "\\ud800", "id": "lone-surrogate"}',
    struct.pack(">I", len(SURROGATE_HEADER)) + SURROGATE_HEADER + VALID_IMAGES[0],
    '{"type": "text_input", "content": "\ud800 raw, not escaped: invalid UTF-8 on the wire"}',
]


def check_answer(server: ServerProcess, message: str | bytes) -> str:
    """Send one message on a fresh connection; its answer must follow the protocol and leave the session usable."""
    with server.connect() as ws:
        ws.send(wire(message), text=isinstance(message, str))
        expected_close = websocket_close_for(message, MAX_MESSAGE_BYTES)
        if expected_close is not None:
            with pytest.raises(ConnectionClosed) as closed:
                receive(ws, timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == expected_close
            return f"closed {expected_close}"
        replies = []
        while not replies or json.loads(replies[-1]).get("type") not in FINAL:
            replies.append(ws.recv(timeout=30))
        assert answer_violations(message, replies) == [], replies
        send(ws, {"type": "get_status", "id": "probe"})
        probe = receive(ws)
        assert (probe["type"], probe["id"]) == ("status", "probe"), f"a stray message after the answer: {probe}"
    final = json.loads(replies[-1])
    return final.get("code") or final["type"]


class Bystander(threading.Thread):
    """Another client asking short questions the whole time: it must always be answered normally."""

    def __init__(self, server: ServerProcess) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.stop = threading.Event()
        self.answered = 0
        self.failures: list[str] = []

    def run(self) -> None:
        try:
            with self.server.connect() as ws:
                while not self.stop.is_set():
                    request_id = f"b{self.answered}"
                    done = run_request(ws, {"type": "text_input", "content": "still fine?", "id": request_id})[-1]
                    if done["type"] != "response_complete":
                        self.failures.append(str(done))
                    self.answered += 1
                    time.sleep(0.05)
        except Exception as exc:  # the assertion happens in the test thread
            self.failures.append(repr(exc))


@pytest.fixture(scope="module")
def fuzz_server(tiny_vision_model, tmp_path_factory) -> ServerProcess:
    server = ServerProcess(tiny_vision_model, "--max-tokens", "3", "--image-max-tokens", "2", "--max-text-chars",
                           "2000", "--max-message-bytes", str(MAX_MESSAGE_BYTES),
                           log_path=tmp_path_factory.mktemp("fuzz") / "server.log")
    try:
        server.wait_state("ready")
        server.wait_audio()  # loaded after the chat model: not growth the fuzzing causes
        yield server
    finally:
        server.stop()


def test_hostile_messages_get_protocol_answers_and_harm_no_one(fuzz_server):
    for warm_up in (image_b64(64, 48), image_b64(3, 300, "PNG"), image_b64(2, 2, "WEBP")):
        check_answer(fuzz_server, json.dumps({"type": "image_input", "image": warm_up, "id": "warm"}))
    rss_before = rss_bytes(fuzz_server.process.pid)
    bystander = Bystander(fuzz_server)
    bystander.start()
    outcomes: Counter[str] = Counter(check_answer(fuzz_server, message) for message in REGRESSIONS)

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(rnd=st.randoms(use_true_random=False))
    def answered_by_the_protocol(rnd) -> None:
        outcomes[check_answer(fuzz_server, random_message(rnd))] += 1

    try:
        answered_by_the_protocol()
    finally:
        bystander.stop.set()
        bystander.join(timeout=30)
    rss_after = rss_bytes(fuzz_server.process.pid)
    assert fuzz_server.process.poll() is None, "the server is still running"
    assert bystander.failures == [] and bystander.answered > 0
    assert fuzz_server.unhandled_errors() == []
    assert rss_after - rss_before < MAX_RSS_GROWTH_BYTES, f"RSS grew {rss_before} -> {rss_after}"
    print(f"\nfuzzed {outcomes.total()} messages {dict(outcomes.most_common())}; "
          f"bystander answered {bystander.answered}; RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB")
    with fuzz_server.connect() as ws:
        assert run_request(ws, {"type": "image_input", "image": image_b64(), "id": "after"})[-1]["type"] == \
            "response_complete"


def test_a_short_run_of_the_fuzzer(tiny_vision_model):
    """scripts/fuzz.py as the long runs use it: several connections, chaos, bystander, RSS, 0 violations."""
    result = subprocess.run([sys.executable, "scripts/fuzz.py", "--model", str(tiny_vision_model), "--messages",
                             "500", "--connections", "4", "--seed", "3", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    summary = json.loads(result.stdout.splitlines()[-1])
    assert result.returncode == 0 and summary["problems"] == [], result.stdout + result.stderr[-3000:]
    assert summary["messages"] >= 500 and summary["crashes"] == 0 and summary["violations"] == 0
    assert summary["bystander_answers"] > 0 and summary["sessions_left"] == 0
    assert summary["rss_peak"] >= summary["rss_start"] > 0


@pytest.mark.parametrize("server", ["fuzz_server", "text_server"])
def test_a_top_k_beyond_the_vocabulary_breaks_no_later_answer(server, request):
    """Found by the fuzzer: topK 100000 made mlx-lm raise inside mx.compile, and every later generation of
    every client then failed with 'generation failed: RuntimeError'."""
    server = request.getfixturevalue(server)
    with server.connect() as ws:
        send(ws, {"type": "config", "topK": 100_000, "temperature": 1.0, "maxOutputTokens": 3})
        assert receive(ws)["type"] == "config_updated"
        assert run_request(ws, {"type": "text_input", "content": "hi", "id": "k"})[-1]["type"] == "response_complete"
    with server.connect() as other:
        send(other, {"type": "config", "maxOutputTokens": 3})
        receive(other)
        assert run_request(other, {"type": "text_input", "content": "hi", "id": "after"})[-1]["type"] == \
            "response_complete"


def test_invalid_utf8_closes_with_1007_and_logs_no_error(fuzz_server):
    """Found by the fuzzer: uvicorn logged each such frame as an error with a traceback."""
    with fuzz_server.connect() as ws:
        ws.send(b'{"type": "text_input", "content": "\xed\xa0\x80"}', text=True)
        with pytest.raises(ConnectionClosed) as closed:
            receive(ws, timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    deadline = time.monotonic() + 5
    while "Invalid UTF-8" not in fuzz_server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in fuzz_server.log_lines() if "Invalid UTF-8" in line.get("event", "")]
    assert lines and all(line["level"] == "warning" and "exception" not in line for line in lines)
    assert fuzz_server.unhandled_errors() == []
