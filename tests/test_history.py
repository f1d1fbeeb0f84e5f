"""Conversations: with history on, turns see earlier turns and prefill only what is new."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import mlx_lm
import pytest
from mlx_lm.sample_utils import make_sampler

from tests.helpers import REPO, ServerProcess, image_b64, receive, run_request, send


def ask(ws, content: str, request_id: str) -> dict:
    done = run_request(ws, {"type": "text_input", "content": content, "id": request_id})[-1]
    assert done["type"] == "response_complete", done
    return done


def cold_greedy(model_path, messages: list[dict], max_tokens: int) -> tuple[str, int]:
    model, tokenizer = mlx_lm.load(str(model_path))
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    text = "".join(r.text for r in mlx_lm.stream_generate(model, tokenizer, ids, max_tokens=max_tokens,
                                                          sampler=make_sampler(0.0)))
    return text, len(ids)


def test_a_follow_up_sees_the_conversation_and_reuses_its_cache(text_server, tiny_text_model):
    with text_server.connect() as ws:
        send(ws, {"type": "config", "history": True, "temperature": 0, "maxOutputTokens": 12})
        assert receive(ws)["current_config"]["history"] is True
        first = ask(ws, "Tell me a story about a robot.", "t1")
        second = ask(ws, "What happened next?", "t2")
    assert first["usage"]["cached_tokens"] == 0
    conversation = [{"role": "user", "content": "Tell me a story about a robot."},
                    {"role": "assistant", "content": first["full_text"]},
                    {"role": "user", "content": "What happened next?"}]
    expected_text, expected_prompt = cold_greedy(tiny_text_model, conversation, 12)
    assert second["usage"]["prompt_tokens"] == expected_prompt
    assert second["usage"]["cached_tokens"] >= first["usage"]["prompt_tokens"]
    assert second["full_text"] == expected_text, "a warm turn answers exactly as a cold run of the conversation"


def test_history_is_off_by_default_and_reset_clears_it(text_server):
    with text_server.connect() as ws:
        send(ws, {"type": "config", "temperature": 0, "maxOutputTokens": 5})
        receive(ws)
        one_shot = ask(ws, "Hello", "a")
        assert ask(ws, "Hello", "b")["usage"]["prompt_tokens"] == one_shot["usage"]["prompt_tokens"]
        send(ws, {"type": "config", "history": True})
        receive(ws)
        ask(ws, "Hello", "c")
        assert ask(ws, "Hello", "d")["usage"]["prompt_tokens"] > one_shot["usage"]["prompt_tokens"]
        send(ws, {"type": "reset", "id": "r"})
        reset = receive(ws)
        assert (reset["type"], reset["id"]) == ("conversation_reset", "r")
        fresh = ask(ws, "Hello", "e")
    assert fresh["usage"]["prompt_tokens"] == one_shot["usage"]["prompt_tokens"]
    assert fresh["full_text"] == one_shot["full_text"], "the shared prefix cache may serve it, exactly"


def test_the_conversation_stays_within_its_token_budget(start_server, tiny_text_model):
    server = start_server(tiny_text_model, "--context-tokens", "120")
    with server.connect() as ws:
        send(ws, {"type": "config", "history": True, "temperature": 0, "maxOutputTokens": 10})
        receive(ws)
        prompts = [ask(ws, f"Question number {i}, tell me more.", f"q{i}")["usage"]["prompt_tokens"]
                   for i in range(8)]
    assert prompts[1] > prompts[0]
    assert max(prompts) <= 120


# OpenBLAS picks its kernels by matrix shape, so a prefill of the new turn alone rounds differently from a
# prefill of the whole conversation, and a random-weight model's greedy near-ties can flip. The vision
# comparisons therefore run both sides on the reference BLAS, the reference in a process of its own.
COLD_VISION_RUN = """
import json, sys
import mlx_vlm
from mlx_lm.sample_utils import make_sampler
from mlxd.media import decode_image
model_path, messages, images, max_tokens = json.loads(sys.stdin.read())
model, processor = mlx_vlm.load(model_path)
prompt = mlx_vlm.apply_chat_template(processor, model.config, messages, num_images=len(images))
pictures = [decode_image(image, max_bytes=10**7, max_pixels=10**8, max_side=768) for image in images]
results = list(mlx_vlm.stream_generate(model, processor, prompt, image=pictures, max_tokens=max_tokens,
                                       sampler=make_sampler(0.0)))
print(json.dumps(["".join(r.text for r in results), results[-1].prompt_tokens]))
"""


def cold_vision_greedy(model_path, messages: list[dict], images: list[str], max_tokens: int) -> tuple[str, int]:
    """The answer and prompt length of a cold run of the whole conversation, on the reference BLAS."""
    done = subprocess.run([sys.executable, "-c", COLD_VISION_RUN], input=json.dumps(
        [str(model_path), messages, images, max_tokens]), capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "MLXD_BLAS": "reference"}, check=True)
    text, prompt_tokens = json.loads(done.stdout.strip().splitlines()[-1])
    return text, prompt_tokens


@pytest.fixture(scope="module")
def exact_vision_server(tiny_vision_model, tmp_path_factory) -> Iterator[ServerProcess]:
    server = ServerProcess(tiny_vision_model, log_path=tmp_path_factory.mktemp("server") / "server.log",
                           env={"MLXD_BLAS": "reference"})
    try:
        server.wait_state("ready")
        yield server
    finally:
        server.stop()


def test_a_vision_conversation_keeps_its_image_and_reuses_the_cache_for_text_follow_ups(exact_vision_server,
                                                                                     tiny_vision_model):
    image = image_b64(96, 64, "PNG")
    with exact_vision_server.connect() as ws:
        send(ws, {"type": "config", "history": True, "temperature": 0, "maxOutputTokens": 8, "max_tokens_image": 8})
        receive(ws)
        first = run_request(ws, {"type": "image_input", "image": image, "prompt": "What is this?", "id": "i"})[-1]
        second = ask(ws, "And its colour?", "f")
    assert second["usage"]["cached_tokens"] > 0
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
                {"role": "assistant", "content": first["full_text"]},
                {"role": "user", "content": "And its colour?"}]
    cold, _ = cold_vision_greedy(tiny_vision_model, messages, [image], 8)
    assert second["full_text"] == cold


def test_a_new_image_in_a_conversation_prefills_only_the_new_turn(exact_vision_server, tiny_vision_model):
    first_image, second_image = image_b64(96, 64, "PNG"), image_b64(40, 80, "JPEG")
    with exact_vision_server.connect() as ws:
        send(ws, {"type": "config", "history": True, "temperature": 0, "max_tokens_image": 8})
        receive(ws)
        first = run_request(ws, {"type": "image_input", "image": first_image, "prompt": "What is this?",
                                 "id": "a"})[-1]
        second = run_request(ws, {"type": "video_frame", "frame": second_image, "prompt": "And now?", "id": "b"})[-1]
    assert second["type"] == "response_complete", second
    assert second["usage"]["cached_tokens"] >= first["usage"]["prompt_tokens"]

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
                {"role": "assistant", "content": first["full_text"]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And now?"}]}]
    cold, prompt_tokens = cold_vision_greedy(tiny_vision_model, messages, [first_image, second_image], 8)
    assert second["usage"]["prompt_tokens"] == prompt_tokens
    assert second["full_text"] == cold, "as a cold prefill of the whole conversation"
