"""Continuous batching: sessions decode together, and leave the batch without disturbing each other."""

from __future__ import annotations

import threading

from tests.helpers import receive, receive_until, run_request, send, terminal_for


def greedy_answer(server, prompt: str, tokens: int) -> str:
    with server.connect() as ws:
        send(ws, {"type": "config", "temperature": 0, "maxOutputTokens": tokens})
        receive(ws)
        return run_request(ws, {"type": "text_input", "content": prompt, "id": "solo"})[-1]["full_text"]


def test_concurrent_sessions_get_the_answers_they_would_get_alone(text_server):
    prompts = ["Tell me a story", "What is in the picture?", "Hello, how are you?", "Numbers 1 2 3"]
    alone = [greedy_answer(text_server, prompt, 40) for prompt in prompts]
    together: list[str | None] = [None] * len(prompts)

    def client(index: int) -> None:
        together[index] = greedy_answer(text_server, prompts[index], 40)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert together == alone


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
        send(quitter, {"type": "config", "temperature": 0, "maxOutputTokens": 8000})
        receive(quitter)
        send(quitter, {"type": "text_input", "content": "Tell me a story", "id": "long"})
        receive_until(quitter, lambda m: m["type"] == "token")
        send(stayer, {"type": "config", "temperature": 0, "maxOutputTokens": 200})
        receive(stayer)
        send(stayer, {"type": "text_input", "content": "Hello, how are you?", "id": "stay"})
        receive_until(stayer, lambda m: m["type"] == "token")
        send(quitter, {"type": "cancel", "id": "long"})
        cancelled = receive_until(quitter, terminal_for("long"))[-1]
        done = receive_until(stayer, terminal_for("stay"))[-1]
    assert cancelled["finish_reason"] == "cancelled"
    assert done["finish_reason"] == "length" and done["full_text"] == expected
