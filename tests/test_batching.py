"""Continuous batching: sessions decode together, and leave the batch without disturbing each other."""

from __future__ import annotations

import threading

from tests.helpers import (
    delta,
    image_b64,
    receive,
    receive_until,
    run_concurrently,
    run_request,
    scrape,
    send,
    start_long_answer,
    terminal_for,
)


def batched_steps(before, after) -> float:
    """Engine steps in which more than one request was decoded."""
    return (delta(before, after, "mlxd_batch_size_count")
            - delta(before, after, "mlxd_batch_size_bucket", le="1.0"))


def greedy_answer(server, prompt: str, tokens: int, ready: threading.Barrier | None = None) -> str:
    with server.connect() as ws:
        send(ws, {"type": "config", "temperature": 0, "maxOutputTokens": tokens})
        receive(ws)
        if ready is not None:
            ready.wait(timeout=30)
        return run_request(ws, {"type": "text_input", "content": prompt, "id": "solo"})[-1]["full_text"]


def test_concurrent_sessions_get_the_answers_they_would_get_alone(text_server):
    prompts = ["Tell me a story", "What is in the picture?", "Hello, how are you?", "Numbers 1 2 3"]
    alone = [greedy_answer(text_server, prompt, 40) for prompt in prompts]
    before = scrape(text_server)
    together = run_concurrently(lambda i, ready: greedy_answer(text_server, prompts[i], 40, ready), len(prompts))
    assert together == alone
    assert batched_steps(before, scrape(text_server)) > 0


def test_sampling_settings_are_per_request_inside_one_batch(text_server):
    expected = greedy_answer(text_server, "Tell me a story", 60)
    with text_server.connect() as greedy, text_server.connect() as hot:
        send(hot, {"type": "config", "temperature": 2.0, "topK": 0, "presencePenalty": 2.0, "maxOutputTokens": 300})
        receive(hot)
        send(hot, {"type": "text_input", "content": "Tell me a story", "id": "hot"})
        receive_until(hot, lambda m: m["type"] == "token")
        send(greedy, {"type": "config", "temperature": 0, "maxOutputTokens": 60})
        receive(greedy)
        mine = run_request(greedy, {"type": "text_input", "content": "Tell me a story", "id": "cold"})[-1]
        receive_until(hot, terminal_for("hot"))
    assert mine["full_text"] == expected


def test_cancelling_one_request_leaves_the_others_undisturbed(text_server):
    expected = greedy_answer(text_server, "Hello, how are you?", 200)
    with text_server.connect() as quitter, text_server.connect() as stayer:
        start_long_answer(quitter, "long")
        send(stayer, {"type": "config", "temperature": 0, "maxOutputTokens": 200})
        receive(stayer)
        send(stayer, {"type": "text_input", "content": "Hello, how are you?", "id": "stay"})
        receive_until(stayer, lambda m: m["type"] == "token")
        send(quitter, {"type": "cancel", "id": "long"})
        cancelled = receive_until(quitter, terminal_for("long"))[-1]
        done = receive_until(stayer, terminal_for("stay"))[-1]
    assert cancelled["finish_reason"] == "cancelled"
    assert done["finish_reason"] == "length" and done["full_text"] == expected


def test_vision_requests_batch_together_and_answer_as_alone(vision_server):
    images = [image_b64(64, 48, "PNG"), image_b64(120, 90, "JPEG"), image_b64(30, 30, "WEBP")]

    def answer(index: int, temperature: float = 0, ready: threading.Barrier | None = None) -> str:
        with vision_server.connect() as ws:
            send(ws, {"type": "config", "temperature": temperature, "max_tokens_image": 30})
            receive(ws)
            if ready is not None:
                ready.wait(timeout=30)
            done = run_request(ws, {"type": "image_input", "image": images[index], "id": f"i{index}"})[-1]
            assert done["type"] == "response_complete", done
            return done["full_text"]

    alone = [answer(i) for i in range(len(images))]
    before = scrape(vision_server)
    together = run_concurrently(lambda i, ready: answer(i, 0, ready), len(images))
    assert together == alone
    assert batched_steps(before, scrape(vision_server)) > 0


def test_a_vision_request_with_other_sampling_is_served_alone_beside_the_batch(vision_server):
    image = image_b64(64, 48, "PNG")
    with vision_server.connect() as batched, vision_server.connect() as other:
        send(batched, {"type": "config", "temperature": 0, "max_tokens_image": 40})
        receive(batched)
        expected = run_request(batched, {"type": "image_input", "image": image, "id": "alone"})[-1]["full_text"]
        send(other, {"type": "config", "temperature": 1.5, "max_tokens_image": 40})
        receive(other)
        send(batched, {"type": "image_input", "image": image, "id": "b"})
        receive_until(batched, lambda m: m["type"] == "token")
        hot = run_request(other, {"type": "image_input", "image": image, "id": "hot"})[-1]
        done = receive_until(batched, terminal_for("b"))[-1]
    assert hot["type"] == "response_complete" and hot["finish_reason"] in ("stop", "length")
    assert done["full_text"] == expected


def test_requests_that_sample_alike_share_one_sampler():
    """mlx-lm samples a batch in one call only when every row's sampler is the same object."""
    from mlxd.engine.models import sampling
    from mlxd.generation import GenerationConfig

    greedy = [sampling(GenerationConfig(temperature=0, presence_penalty=p))["sampler"] for p in (0.0, 1.5)]
    assert greedy[0] is greedy[1]
    assert sampling(GenerationConfig(temperature=0.7, top_k=5))["sampler"] is not greedy[0]
