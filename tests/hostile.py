"""Hostile messages and the protocol's promises about their answers: shared by tests/test_fuzz.py (through
hypothesis, which shrinks a failure to a small example) and scripts/fuzz.py (at scale, fast).

`random_message(rnd)` draws one message (a str for a text frame, bytes for a binary one) from every shape
the fuzzers cover; `answer_violations(sent, replies)` lists how the replies to one message break the
protocol, empty when they keep it.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import random
import struct
import zlib
from collections.abc import Callable

from PIL import Image

from mlxd import errors

KNOWN_CODES = {value for name, value in vars(errors).items() if name.isupper() and isinstance(value, str)}
TERMINAL_TYPES = {"response_complete", "error", "frame_dropped"}
FINAL_TYPES = {*TERMINAL_TYPES, "config_updated", "status", "conversation_reset"}
SERVER_TYPES = {"response_start", "token", *FINAL_TYPES}
CLIENT_TYPES = ["text_input", "image_input", "video_frame", "screen_frame", "config", "cancel", "get_status",
                "reset"]
IMAGE_FIELD = {"image_input": "image", "video_frame": "frame", "screen_frame": "frame"}
CONFIG_FIELDS = ["maxOutputTokens", "max_tokens_image", "temperature", "topP", "topK", "presencePenalty",
                 "frequencyPenalty", "candidateCount", "responseModalities", "history"]
UNICODE_EDGES = ["\ud800", "\udfff", "a\udc80b", "\x00", "nul\x00inside", "\u202eright-to-left\u202c", "\u200f",
                 "\ufeff", "e\u0301", "\U0001d54f" * 20, "\uffff", "\u2028\u2029", "😀" * 10, " "]
SPECIAL_TEXTS = ['{"type": "text_input", "content": "x", "id": NaN}', '{"type": Infinity}', "1e999", "9" * 5000,
                 '{"type": "config", "topK": ' + "9" * 5000 + "}", '"\\ud800"', "null", "[]", "{}", "",
                 '{"type": "text_input", "content": "\\ud800\\udc00\\ud800", "id": "\\udfff"}',
                 '{"type": "text_input", "type": "cancel", "content": "duplicate keys"}']
NUMBERS = [0, 1, 2, 8192, 8193, -1, -(2 ** 63), 2 ** 64, 2 ** 1000, 1e308, -0.0, 0.5, 2.0000001, math.inf,
           -math.inf, math.nan]


def encoded(width: int, height: int, fmt: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 0 if mode == "L" else (width % 256, 90, 160)).save(buffer, fmt)
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


@functools.cache
def png_bomb() -> bytes:
    """A real decompression bomb: 49 million black pixels (over the default --max-image-pixels) in ~50 kB."""
    return encoded(7000, 7000, "PNG", mode="L")


VALID_IMAGES = [encoded(1, 1, "PNG"), encoded(1, 1, "JPEG"), encoded(2, 2, "WEBP"), encoded(40, 30, "JPEG"),
                encoded(3, 300, "PNG")]
LYING_IMAGES = [png_declaring(20000, 20000), jpeg_declaring(20000, 20000), png_declaring(1, 1),
                png_declaring(0, 0), jpeg_declaring(1, 65535)]
HOSTILE_IMAGES = [*LYING_IMAGES, encoded(1, 1, "GIF"), encoded(1, 1, "BMP"), b"", b"\xff\xd8\xff"]


def pick(rnd: random.Random, weighted: dict[Callable, int]):
    return rnd.choices(list(weighted), weights=list(weighted.values()))[0](rnd)


def text(rnd: random.Random, size: int = 40) -> str:
    """Any code points, surrogates and control characters included."""
    if rnd.random() < 0.3:
        return rnd.choice([*UNICODE_EDGES, "", " ", "x" * 2001])
    alphabet = rnd.choice([(32, 127), (0, 0x2FF), (0xD700, 0xE000), (0, 0x10FFFF)])
    return "".join(chr(rnd.randint(*alphabet)) for _ in range(rnd.randint(0, size)))


def json_value(rnd: random.Random, depth: int = 0):
    kind = rnd.randint(0, 9 if depth < 3 else 6)
    if kind <= 1:
        return rnd.choice([None, True, False])
    if kind <= 3:
        return rnd.choice([*NUMBERS, rnd.randint(-(2 ** 80), 2 ** 80), rnd.uniform(-1e9, 1e9)])
    if kind <= 6:
        return text(rnd, 12)
    if kind <= 8:
        return [json_value(rnd, depth + 1) for _ in range(rnd.randint(0, 4))]
    return {text(rnd, 8): json_value(rnd, depth + 1) for _ in range(rnd.randint(0, 4))}


def image_bytes(rnd: random.Random) -> bytes:
    raw = rnd.choice(VALID_IMAGES + HOSTILE_IMAGES) if rnd.random() < 0.9 else rnd.randbytes(rnd.randint(0, 200))
    mutation = rnd.choice(["none", "none", "truncate", "corrupt"])
    if raw and mutation == "truncate":
        return raw[:rnd.randrange(len(raw))]
    if raw and mutation == "corrupt":
        corrupted = bytearray(raw)
        for _ in range(rnd.randint(1, 8)):
            corrupted[rnd.randrange(len(raw))] = rnd.randrange(256)
        return bytes(corrupted)
    return raw


def image_text(rnd: random.Random) -> str:
    """base64 or a data URI, valid or not, of an image that may be broken itself."""
    payload = base64.b64encode(image_bytes(rnd)).decode()
    style = rnd.choice(["plain", "uri", "truncated", "garbage", "wrong_uri"])
    if style == "uri":
        return f"data:image/{rnd.choice(['png', 'jpeg', 'webp', 'gif', 'x'])};base64,{payload}"
    if style == "truncated":
        return payload[:rnd.randint(0, max(0, len(payload) - 1))]
    if style == "garbage":
        return text(rnd, 60)
    return f"data:text/plain;base64,{payload}" if style == "wrong_uri" else payload


def an_id(rnd: random.Random):
    return pick(rnd, {lambda r: f"m{r.getrandbits(40):x}": 6, lambda r: text(r, 12) or "e": 2,
                      lambda r: r.choice(["", "x" * 257]): 1, json_value: 1})


def field_value(rnd: random.Random, name: str):
    if rnd.random() < 0.2:
        return json_value(rnd)
    if name in ("image", "frame"):
        return image_text(rnd)
    if name in CONFIG_FIELDS:
        return rnd.choice(NUMBERS) if rnd.random() < 0.7 else rnd.randint(-(2 ** 70), 2 ** 70)
    return an_id(rnd) if name == "id" else text(rnd, 60)


def typed(rnd: random.Random) -> dict:
    """A message of any type, real or not, with any of the fields, each with a hostile value."""
    kind = rnd.choice(CLIENT_TYPES) if rnd.random() < 0.8 else json_value(rnd)
    names = ["id", "content", "context", "prompt", "source", "image", "frame", *CONFIG_FIELDS]
    return {"type": kind, **{name: field_value(rnd, name) for name in rnd.sample(names, rnd.randint(0, 5))}}


def plausible(rnd: random.Random) -> dict:
    """A message of a real type with mostly sensible fields and something odd in one of them."""
    def mostly(sensible, odd):
        return odd if rnd.randint(0, 4) == 0 else sensible

    kind = rnd.choice(CLIENT_TYPES)
    message = {"type": kind, "id": mostly(f"p{rnd.getrandbits(40):x}", an_id(rnd))}
    if kind == "text_input":
        message["content"] = mostly("still there?", text(rnd))
    elif kind == "config":
        for name in rnd.sample(CONFIG_FIELDS, rnd.randint(1, 3)):
            message[name] = field_value(rnd, name)
    elif kind in IMAGE_FIELD:
        valid = "data:image/x;base64," + base64.b64encode(rnd.choice(VALID_IMAGES)).decode()
        message[IMAGE_FIELD[kind]] = mostly(valid, image_text(rnd))
        if rnd.random() < 0.5:
            message["prompt"] = mostly("what is it?", text(rnd))
    return message


def binary(rnd: random.Random) -> bytes:
    """A binary image message: a 4-byte header length (often a lie), a JSON header, then image bytes."""
    header = json.dumps(pick(rnd, {typed: 1, plausible: 2})).encode()
    declared = rnd.choice([len(header)] * 4 + [0, 3, 2 ** 32 - 1, len(header) + 1, len(header) - 1])
    return struct.pack(">I", max(declared, 0)) + header + image_bytes(rnd)


def bomb(rnd: random.Random) -> str | bytes:
    """Images that lie about their size, and a real decompression bomb, as base64 and as binary."""
    raw = rnd.choice([*LYING_IMAGES, png_bomb()])
    kind = rnd.choice(list(IMAGE_FIELD))
    if rnd.random() < 0.5:
        header = json.dumps({"type": kind, "id": f"bomb{rnd.getrandbits(32):x}"}).encode()
        return struct.pack(">I", len(header)) + header + raw
    return json.dumps({"type": kind, "id": f"bomb{rnd.getrandbits(32):x}",
                       IMAGE_FIELD[kind]: base64.b64encode(raw).decode()})


def nested(rnd: random.Random) -> str:
    depth = rnd.choice([10, 100, 1000, 10_000, 100_000])
    if rnd.random() < 0.5:
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def truncated(rnd: random.Random) -> str:
    whole = json.dumps(typed(rnd))
    return whole[:rnd.randint(0, len(whole))]


SHAPES: dict[Callable, int] = {
    # Plausible messages are a good share, so that images are decoded and answered, not only refused.
    lambda r: json.dumps(plausible(r)): 30,
    lambda r: json.dumps(typed(r)): 15,
    truncated: 8,
    lambda r: json.dumps(json_value(r)): 6,
    text: 5,
    lambda r: r.choice(SPECIAL_TEXTS): 4,
    nested: 3,
    binary: 15,
    lambda r: r.randbytes(r.randint(0, 300)): 4,
    bomb: 3,
    lambda r: json.dumps({"type": "cancel", "id": an_id(r)}): 4,
    lambda r: json.dumps({"type": "config", **{n: field_value(r, n) for n in r.sample(CONFIG_FIELDS, 2)}}): 3,
}


def random_message(rnd: random.Random) -> str | bytes:
    """One hostile message: str for a text frame (it may hold lone surrogates: encode with surrogatepass)."""
    return pick(rnd, SHAPES)


def wire(message: str | bytes) -> bytes:
    """A text message as the bytes on the wire: lone surrogates become invalid UTF-8, on purpose."""
    return message if isinstance(message, bytes) else message.encode("utf-8", "surrogatepass")


def websocket_close_for(message: str | bytes, max_message_bytes: int) -> int | None:
    """The close code the WebSocket layer answers a message with, before mlxd sees it; None if it passes."""
    data = wire(message)
    if len(data) > max_message_bytes:
        return 1009
    if isinstance(message, str):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return 1007
    return None


def sent_id(message: str | bytes) -> object:
    """The id a message carries as the server would read it, or None."""
    if isinstance(message, bytes):
        return None
    try:
        parsed = json.loads(message)
    except ValueError:
        return None
    return parsed.get("id") if isinstance(parsed, dict) else None


def answer_violations(message: str | bytes, replies: list[str]) -> list[str]:
    """How the replies to one message (up to its final one) break the protocol; [] when they keep it."""
    problems: list[str] = []
    parsed = []
    for raw in replies:
        try:
            reply = json.loads(raw)
        except ValueError:
            return [f"a reply that is not JSON: {raw[:200]!r}"]
        if not isinstance(reply, dict) or reply.get("type") not in SERVER_TYPES:
            return [f"an unknown message type: {str(reply)[:200]}"]
        if not isinstance(reply.get("timestamp"), float):
            problems.append(f"no float timestamp: {str(reply)[:200]}")
        parsed.append(reply)
    if not parsed or parsed[-1]["type"] not in FINAL_TYPES:
        return [*problems, "no final message"]
    final = parsed[-1]
    if any(reply["type"] in FINAL_TYPES for reply in parsed[:-1]):
        problems.append(f"two terminal messages for one input: {[r['type'] for r in parsed]}")
    if final["type"] == "error" and (final.get("code") not in KNOWN_CODES or not final.get("error")):
        problems.append(f"an error without a known code and a message: {final}")
    if final["type"] == "response_complete":
        start, *tokens = parsed[:-1] or [{}]
        if start.get("type") != "response_start" or any(t["type"] != "token" for t in tokens):
            problems.append(f"a response not shaped start, tokens, complete: {[r['type'] for r in parsed]}")
        elif final.get("full_text") != "".join(t.get("content", "") for t in tokens):
            problems.append("full_text is not the tokens joined")
    ids = {json.dumps(reply.get("id")) for reply in parsed}
    if len(ids) != 1:
        problems.append(f"one input, several ids: {sorted(ids)}")
    elif final["type"] != "error" and isinstance(sent_id(message), str) and ids != {json.dumps(sent_id(message))}:
        problems.append(f"the answer does not echo the id {sent_id(message)!r}: {ids}")
    return problems
