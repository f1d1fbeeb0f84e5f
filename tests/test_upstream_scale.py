"""`--engine openai` past one process: mlx_vlm.server for images and frames, two ranks of one mlx_lm.server
model (ring backend on loopback, the launcher-less form), and vllm-router spreading sessions over replicas."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from mlxd.dialogue import Message, Part, user_message
from mlxd.engine.chat_request import image_url, request_messages
from mlxd.engine.prompts import images_of
from mlxd.settings import Settings
from tests.helpers import (
    ServerProcess,
    encoded_image,
    image_b64,
    receive,
    receive_until,
    run_request,
    send,
    start_long_answer,
    terminal_for,
    tokens_text,
)
from tests.upstreams import UpstreamProcess, mlx_lm_server, mlx_vlm_server, serving, two_ranks, vllm_router


def front_of(start_server, upstream: UpstreamProcess, *args: str) -> ServerProcess:
    return start_server(None, "--engine", "openai", "--upstream", upstream.url, *args)


@pytest.fixture(scope="module")
def vision_upstream(tiny_vision_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    yield from serving(mlx_vlm_server(tiny_vision_model, tmp_path_factory.mktemp("mlx_vlm")))


def test_an_image_reaches_mlx_vlm_server(start_server, vision_upstream):
    server = front_of(start_server, vision_upstream, "--upstream-modalities", "text,image")
    assert server.healthz()["modalities"] == ["text", "image"]
    with server.connect() as ws:
        send(ws, {"type": "config", "temperature": 0, "max_tokens_image": 6, "maxOutputTokens": 6})
        receive(ws)
        text = run_request(ws, {"type": "text_input", "content": "What is this?", "id": "t"})[-1]
        messages = run_request(ws, {"type": "image_input", "image": image_b64(640, 480), "prompt": "What is this?",
                                    "id": "i"})
    done = messages[-1]
    assert done["type"] == "response_complete" and done["input_type"] == "image"
    assert done["full_text"] == tokens_text(messages, "i") and done["usage"]["completion_tokens"] == 6
    assert done["usage"]["prompt_tokens"] > text["usage"]["prompt_tokens"]  # the image's tokens were prefilled


def test_images_are_sent_at_the_size_mlxd_enforces():
    url = image_url(encoded_image(1600, 1200, "PNG"), Settings(image_max_side=64))
    assert url.startswith("data:image/jpeg;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert (sent.format, sent.size) == ("JPEG", (64, 48))


def test_frames_that_wait_are_superseded_and_never_sent_upstream(start_server, vision_upstream):
    server = front_of(start_server, vision_upstream, "--upstream-modalities", "text,image")
    with server.connect() as ws:
        start_long_answer(ws, "busy")
        sent_before = vision_upstream.chat_requests()
        for index in range(5):
            send(ws, {"type": "video_frame", "frame": image_b64(), "id": f"f{index}"})
        dropped = receive_until(ws, lambda m: m.get("id") == "f3" and m["type"] == "frame_dropped")
        send(ws, {"type": "cancel", "id": "busy"})
        answered = receive_until(ws, terminal_for("f4"))
    assert [m["id"] for m in dropped if m["type"] == "frame_dropped"] == ["f0", "f1", "f2", "f3"]
    assert answered[-1]["type"] == "response_complete" and answered[-1]["input_type"] == "image"
    deadline = time.monotonic() + 5
    while vision_upstream.chat_requests() - sent_before < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert vision_upstream.chat_requests() - sent_before == 1  # f4 alone


def test_images_go_only_to_an_upstream_said_to_take_them(start_server, vision_upstream):
    server = front_of(start_server, vision_upstream)
    with server.connect() as ws:
        refused = run_request(ws, {"type": "video_frame", "frame": image_b64(), "id": "f"})[-1]
    assert refused["type"] == "error" and refused["code"] == "model_text_only"


def requests_shared(rank: UpstreamProcess) -> int:
    """Requests a rank has begun: mlx_lm.server logs its prompt cache on every rank as each one starts (the
    ranks spin while idle, so their CPU time tells nothing)."""
    return rank.log_text().count("Prompt Cache:")


def test_two_ranks_of_one_model_serve_through_rank_0(start_server, tiny_text_model, tmp_path):
    ranks = two_ranks(tiny_text_model, tmp_path)
    try:
        ranks[0].wait_healthy()
        server = front_of(start_server, ranks[0])
        shared_before = requests_shared(ranks[1])
        with server.connect() as ws:
            send(ws, {"type": "config", "temperature": 0, "maxOutputTokens": 64})
            receive(ws)
            done = run_request(ws, {"type": "text_input", "content": "Hello there", "id": "q"})[-1]
        assert done["type"] == "response_complete" and done["usage"]["completion_tokens"] == 64
        assert requests_shared(ranks[1]) == shared_before + 1  # rank 1 took part in that request
        assert ranks[0].chat_requests() == 1 and ranks[1].chat_requests() == 0
    finally:
        for rank in ranks:
            rank.stop()


def test_vllm_router_keeps_a_session_on_one_replica_and_spreads_sessions(start_server, tiny_text_model, tmp_path):
    pytest.importorskip("vllm_router")
    replicas = [mlx_lm_server(tiny_text_model, tmp_path / f"replica{i}") for i in range(2)]
    router = None
    try:
        for replica in replicas:
            replica.wait_healthy()
        router = vllm_router(replicas, tmp_path)
        router.wait_healthy()
        server = front_of(start_server, router)
        homes = []
        for session in range(16):
            before = [replica.chat_requests() for replica in replicas]
            with server.connect() as ws:
                send(ws, {"type": "config", "maxOutputTokens": 2, "history": True})
                receive(ws)
                for turn in range(2):
                    done = run_request(ws, {"type": "text_input", "content": "Hi", "id": f"{session}.{turn}"})
                    assert done[-1]["type"] == "response_complete"
            added = [replica.chat_requests() - count for replica, count in zip(replicas, before, strict=True)]
            assert sorted(added) == [0, 2], added  # both turns on one replica
            homes.append(added.index(2))
        assert set(homes) == {0, 1}  # 16 sessions on one replica by chance: 1 in 32,768
    finally:
        for process in [*replicas, *([router] if router else [])]:
            process.stop()


def test_a_conversation_becomes_chat_messages_with_its_images_in_place():
    messages = [Message("system", (Part(text="Look closely."),)), user_message("What is this?", ["IMG1"]),
                Message("assistant", (Part(text="A cat."),)), user_message("And now?", ["IMG2"])]
    assert images_of(messages) == ["IMG1", "IMG2"]
    sent = request_messages(messages, "Be brief.", ["data:1", "data:2"])
    assert sent == [
        {"role": "system", "content": "Be brief.\n\nLook closely."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:1"}},
                                     {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:2"}},
                                     {"type": "text", "text": "And now?"}]},
    ]
