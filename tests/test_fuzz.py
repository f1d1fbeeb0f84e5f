"""Hostile and random messages against a live server (hypothesis).

Every message gets an answer that follows the protocol: an error with a known code, or for a valid input
the normal sequence ending in exactly one terminal message; the connection stays usable; the server never
crashes; a bystander client is answered normally throughout; and memory stays bounded.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import threading
import time
import zlib
from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from mlxd import errors
from tests.helpers import TERMINAL_TYPES, ServerProcess, image_b64, receive, run_request, send

KNOWN_CODES = {value for name, value in vars(errors).items() if name.isupper() and isinstance(value, str)}
SERVER_TYPES = {"response_start", "token", "response_complete", "frame_dropped", "error", "config_updated",
                "status"}
FINAL_TYPES = {*TERMINAL_TYPES, "config_updated", "status"}
CLIENT_TYPES = ["text_input", "image_input", "video_frame", "screen_frame", "config", "cancel", "get_status"]
CONFIG_FIELDS = ["maxOutputTokens", "max_tokens_image", "temperature", "topP", "topK", "presencePenalty",
                 "frequencyPenalty", "candidateCount", "responseModalities"]
MAX_MESSAGE_BYTES = 1_000_000
MAX_RSS_GROWTH_BYTES = 200 * 1024 * 1024


def encoded(width: int, height: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (width % 256, 90, 160)).save(buffer, fmt)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares `width` x `height` pixels: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    raw = bytearray(encoded(8, 8, "JPEG"))
    start = raw.index(b"\xff\xc0") + 5
    raw[start:start + 4] = struct.pack(">HH", height, width)
    return bytes(raw)


VALID_IMAGES = [encoded(1, 1, "PNG"), encoded(1, 1, "JPEG"), encoded(2, 2, "WEBP"), encoded(40, 30, "JPEG"),
                encoded(3, 300, "PNG")]
HOSTILE_IMAGES = [png_declaring(20000, 20000), jpeg_declaring(20000, 20000), png_declaring(1, 1),
                  png_declaring(0, 0), encoded(1, 1, "GIF"), encoded(1, 1, "BMP"), b"", b"\xff\xd8\xff"]
SURROGATE_HEADER = b'{"type": "screen_frame", "id": "\\udfff"}'
UNICODE_EDGES = ["\ud800", "\udfff", "a\udc80b", "\x00", "nul\x00inside", "\u202eright-to-left\u202c", "\u200f",
                 "\ufeff", "e\u0301", "\U0001d54f" * 20, "\uffff", "\u2028\u2029", "😀" * 10, " "]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 80), max_value=2 ** 80)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40) | st.sampled_from(UNICODE_EDGES))
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)
numbers = (st.sampled_from([0, 1, 2, 8192, 8193, -1, -(2 ** 63), 2 ** 64, 1e308, -0.0, 0.5, 2.0000001])
           | st.integers(min_value=-(2 ** 70), max_value=2 ** 70) | st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def image_bytes(draw) -> bytes:
    raw = draw(st.sampled_from(VALID_IMAGES + HOSTILE_IMAGES) | st.binary(max_size=200))
    mutation = draw(st.sampled_from(["none", "none", "truncate", "corrupt"]))
    if raw and mutation == "truncate":
        return raw[:draw(st.integers(0, len(raw) - 1))]
    if raw and mutation == "corrupt":
        corrupted = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            corrupted[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(corrupted)
    return raw


@st.composite
def image_text(draw) -> str:
    """base64 or a data URI, valid or not, of an image that may be broken itself."""
    payload = base64.b64encode(draw(image_bytes())).decode()
    style = draw(st.sampled_from(["plain", "uri", "truncated", "garbage", "wrong_uri"]))
    if style == "uri":
        return f"data:image/{draw(st.sampled_from(['png', 'jpeg', 'webp', 'gif', 'x']))};base64,{payload}"
    if style == "truncated":
        return payload[:draw(st.integers(0, max(0, len(payload) - 1)))]
    if style == "garbage":
        return draw(st.text(alphabet="ABCabc0123+/=-_!*. \n\t", max_size=60) | st.sampled_from(UNICODE_EDGES))
    if style == "wrong_uri":
        return f"data:text/plain;base64,{payload}"
    return payload


texts = st.text(max_size=60) | st.sampled_from(UNICODE_EDGES) | st.sampled_from(["", " ", "x" * 2001])
ids = st.text(min_size=1, max_size=12) | st.sampled_from(["", "x" * 257, *UNICODE_EDGES]) | json_values
field_values = {
    "id": ids,
    "content": texts | json_values, "context": texts | json_values, "prompt": texts | json_values,
    "source": texts | json_values, "image": image_text() | json_values, "frame": image_text() | json_values,
    **{name: numbers | json_values for name in CONFIG_FIELDS},
}


@st.composite
def typed_message(draw) -> dict:
    message = {"type": draw(st.sampled_from(CLIENT_TYPES) | st.sampled_from(["", "TEXT_INPUT", "x" * 300])
                            | json_values)}
    for name in draw(st.lists(st.sampled_from(sorted(field_values)), max_size=5, unique=True)):
        message[name] = draw(field_values[name])
    return message


@st.composite
def plausible_message(draw) -> dict:
    """A message of a real type with mostly sensible fields and something odd in one of them."""
    def mostly(sensible: st.SearchStrategy, odd: st.SearchStrategy):
        return draw(odd if draw(st.integers(0, 4)) == 0 else sensible)

    kind = draw(st.sampled_from(CLIENT_TYPES))
    message = {"type": kind, "id": mostly(st.text(min_size=1, max_size=12), ids)}
    if kind == "text_input":
        message["content"] = mostly(st.text(min_size=1, max_size=40), texts)
    elif kind == "config":
        for name in draw(st.lists(st.sampled_from(CONFIG_FIELDS), min_size=1, max_size=3, unique=True)):
            message[name] = draw(numbers)
    elif kind != "get_status" and kind != "cancel":
        valid = st.sampled_from(VALID_IMAGES).map(lambda raw: "data:image/x;base64," + base64.b64encode(raw).decode())
        message["image" if kind == "image_input" else "frame"] = draw(valid | image_text())
        if draw(st.booleans()):
            message["prompt"] = mostly(st.text(min_size=1, max_size=40), texts)
    return message


@st.composite
def binary_message(draw) -> bytes:
    header = json.dumps(draw(typed_message() | plausible_message())).encode()
    declared = draw(st.sampled_from([len(header)] * 4 + [0, 3, 2 ** 32 - 1, len(header) + 1]))
    return struct.pack(">I", declared) + header + draw(image_bytes())


def nested(depth: int, opener: str, closer: str) -> str:
    return opener * depth + closer * depth


SHAPES = {
    "plausible": plausible_message().map(json.dumps),
    "typed": typed_message().map(json.dumps),
    "truncated": typed_message().map(json.dumps).flatmap(lambda text: st.integers(0, len(text)).map(
        lambda n: text[:n])),
    "json": json_values.map(json.dumps),
    "text": st.text(max_size=100),
    "deep list": st.integers(1, 100_000).map(lambda depth: nested(depth, "[", "]")),
    "deep object": st.integers(1, 50_000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
    "special": st.sampled_from(['{"type": "text_input", "content": "x", "id": NaN}', '{"type": Infinity}', "1e999",
                                "9" * 5000, '{"type": "config", "topK": ' + "9" * 5000 + "}", '"\\ud800"', "null",
                                '{"type": "text_input", "content": "\\ud800\\udc00\\ud800", "id": "\\udfff"}']),
    "binary": binary_message(),
    "bytes": st.binary(max_size=300),
}
# Half the messages are plausible, so that images are decoded and answered, not only refused by the parser.
messages = st.sampled_from(["plausible"] * 8 + ["binary"] * 2 + sorted(SHAPES)).flatmap(SHAPES.__getitem__)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from `ps` (the same on Linux and macOS)."""
    return 1024 * int(subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True,
                                     timeout=10, check=True).stdout)


def check_answer(server: ServerProcess, message: str | bytes) -> str:
    """Send one message on a fresh connection; its answer must follow the protocol and leave the session usable."""
    with server.connect() as ws:
        ws.send(message)
        answer = []
        while not answer or answer[-1]["type"] not in FINAL_TYPES:
            answer.append(receive(ws, timeout=30))
        for reply in answer:
            assert reply["type"] in SERVER_TYPES and isinstance(reply["timestamp"], float), reply
        final = answer[-1]
        if final["type"] == "error":
            assert final["code"] in KNOWN_CODES and final["error"], final
        if final["type"] == "response_complete":
            start, *tokens, _ = answer
            assert start["type"] == "response_start" and all(t["type"] == "token" for t in tokens)
            assert final["full_text"] == "".join(t["content"] for t in tokens)
        ids = {reply.get("id") for reply in answer}
        assert len(ids) == 1, f"one input, one id: {answer}"
        sent = json.loads(message) if isinstance(message, str) and final["type"] != "error" else None
        if isinstance(sent, dict):
            assert ids == {sent.get("id")}
        send(ws, {"type": "get_status", "id": "probe"})
        probe = receive(ws)
        assert (probe["type"], probe["id"]) == ("status", "probe"), f"a stray message after the answer: {probe}"
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
        yield server
    finally:
        server.stop()


def test_hostile_messages_get_protocol_answers_and_harm_no_one(fuzz_server):
    for warm_up in (image_b64(64, 48), image_b64(3, 300, "PNG"), image_b64(2, 2, "WEBP")):
        check_answer(fuzz_server, json.dumps({"type": "image_input", "image": warm_up, "id": "warm"}))
    rss_before = rss_bytes(fuzz_server.process.pid)
    bystander = Bystander(fuzz_server)
    bystander.start()
    outcomes: Counter[str] = Counter()

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(message=messages)
    @example(message=json.dumps({"type": "image_input", "id": "png-bomb",
                                 "image": base64.b64encode(png_declaring(20000, 20000)).decode()}))
    @example(message=json.dumps({"type": "video_frame", "id": "jpeg-bomb",
                                 "frame": base64.b64encode(jpeg_declaring(20000, 20000)).decode()}))
    @example(message=nested(100_000, "[", "]"))
    @example(message='{"type": "text_input", "content": "\\ud800", "id": "lone-surrogate"}')
    @example(message=struct.pack(">I", len(SURROGATE_HEADER)) + SURROGATE_HEADER + VALID_IMAGES[0])
    def answered_by_the_protocol(message: str | bytes) -> None:
        assert len(message if isinstance(message, bytes) else message.encode()) < MAX_MESSAGE_BYTES
        outcomes[check_answer(fuzz_server, message)] += 1

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
