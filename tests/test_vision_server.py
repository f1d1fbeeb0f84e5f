"""The real server on the tiny Gemma 3 vision model: images, live frames, binary frames, image errors."""

from __future__ import annotations

import json
import struct
import time

import pytest

from tests.helpers import (
    TERMINAL_TYPES,
    encoded_image,
    image_b64,
    receive,
    receive_until,
    run_request,
    send,
    terminal_for,
    tokens_text,
)


def test_healthz_reports_vision_modalities(vision_server):
    assert vision_server.healthz()["modalities"] == ["text", "image"]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_image_input_is_answered(vision_server, fmt):
    with vision_server.connect() as ws:
        send(ws, {"type": "config", "temperature": 0})
        receive(ws)
        messages = run_request(ws, {"type": "image_input", "image": image_b64(640, 480, fmt),
                                    "prompt": "What is this?", "source": "screenshot", "id": "img"})
    start, done = messages[0], messages[-1]
    assert (start["type"], start["input_type"]) == ("response_start", "image")
    assert done["type"] == "response_complete" and done["input_type"] == "image"
    assert done["full_text"] == tokens_text(messages, "img")
    usage = done["usage"]
    assert usage["completion_tokens"] == 100 or (done["finish_reason"], usage["completion_tokens"] < 100) == (
        "stop", True), "max_tokens_image applies to images"
    assert done["usage"]["prompt_tokens"] > 4, "the prompt holds the image's soft tokens"


def test_plain_base64_without_data_uri(vision_server):
    with vision_server.connect() as ws:
        send(ws, {"type": "config", "max_tokens_image": 3, "temperature": 0})
        receive(ws)
        done = run_request(ws, {"type": "image_input", "image": image_b64(data_uri=False), "id": "raw"})[-1]
    assert done["type"] == "response_complete" and done["usage"]["completion_tokens"] == 3


def test_text_on_a_vision_model(vision_server):
    with vision_server.connect() as ws:
        done = run_request(ws, {"type": "text_input", "content": "hello", "id": "t"})[-1]
    assert done["type"] == "response_complete" and done["input_type"] == "text"


@pytest.mark.parametrize("image,code", [
    ("data:image/png;base64,not-base64!", "image_decode_failed"),
    ("aGVsbG8gd29ybGQ=", "image_decode_failed"),
])
def test_undecodable_images(vision_server, image, code):
    with vision_server.connect() as ws:
        error = run_request(ws, {"type": "image_input", "image": image, "id": "bad"})[-1]
    assert (error["type"], error["code"], error["id"]) == ("error", code, "bad")


def test_image_limits(start_server, tiny_vision_model):
    server = start_server(tiny_vision_model, "--max-image-bytes", "20000", "--max-image-pixels", "1000000")
    with server.connect() as ws:
        too_many_bytes = run_request(ws, {"type": "image_input", "image": "A" * 40000, "id": "bytes"})[-1]
        too_many_pixels = run_request(ws, {"type": "video_frame", "frame": image_b64(1200, 1000, "PNG"),
                                           "id": "pixels"})[-1]
    assert (too_many_bytes["code"], too_many_pixels["code"]) == ("image_too_large", "image_too_large")


def test_latest_frame_wins_and_every_frame_is_accounted_for(vision_server):
    frame = image_b64(320, 240)
    ids = [f"f{i}" for i in range(30)]
    with vision_server.connect() as ws:
        send(ws, {"type": "config", "max_tokens_image": 30})
        receive(ws)
        for request_id in ids:
            send(ws, {"type": "video_frame", "frame": frame, "id": request_id, "source": "webcam"})
        terminals: dict[str, dict] = {}
        deadline = time.monotonic() + 60
        while len(terminals) < len(ids) and time.monotonic() < deadline:
            message = receive(ws)
            if message["type"] in TERMINAL_TYPES:
                assert message["id"] not in terminals, "exactly one terminal message per frame"
                terminals[message["id"]] = message
    assert set(terminals) == set(ids)
    answered = [i for i in ids if terminals[i]["type"] == "response_complete"]
    dropped = [i for i in ids if terminals[i]["type"] == "frame_dropped"]
    assert answered and dropped and len(answered) + len(dropped) == len(ids)
    assert all(terminals[i]["reason"] == "superseded" for i in dropped)
    assert answered[-1] == "f29", "the newest frame is always answered"


def test_a_frame_streamer_does_not_starve_a_question(vision_server):
    frame = image_b64(320, 240)
    with vision_server.connect() as camera, vision_server.connect() as asker:
        for i in range(10):
            send(camera, {"type": "screen_frame", "frame": frame, "id": f"c{i}"})
        send(asker, {"type": "text_input", "content": "question", "id": "q"})
        for i in range(10, 20):
            send(camera, {"type": "screen_frame", "frame": frame, "id": f"c{i}"})
        done = receive_until(asker, terminal_for("q"), timeout=60)[-1]
        assert done["type"] == "response_complete"
        camera_messages = receive_until(camera, terminal_for("c19"), timeout=60)
    answered_before = [m["id"] for m in camera_messages if m["type"] == "response_complete"
                       and m["timestamp"] < done["timestamp"]]
    assert len(answered_before) <= 3, f"the question waited for frames {answered_before}"


def binary_frame(header: dict, payload: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack(">I", len(encoded)) + encoded + payload


def test_binary_frames_carry_raw_image_bytes(vision_server):
    with vision_server.connect() as ws:
        ws.send(binary_frame({"type": "video_frame", "id": "bin", "prompt": "what?"}, encoded_image(320, 240)))
        done = receive_until(ws, terminal_for("bin"))[-1]
        assert done["type"] == "response_complete"
        ws.send(binary_frame({"type": "image_input", "id": "junk"}, b"\x00not an image"))
        error = receive_until(ws, terminal_for("junk"))[-1]
        assert error["code"] == "image_decode_failed"
        ws.send(b"\x00\x00")
        assert receive(ws)["code"] == "invalid_json"
