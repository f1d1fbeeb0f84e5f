"""The prefix cache shared across sessions: a shared system prompt is prefilled once, answers stay exact."""

from __future__ import annotations

import mlx_lm
import pytest
from mlx_lm.sample_utils import make_sampler

from tests import helpers
from tests.helpers import receive, receive_until, run_concurrently, run_request, scrape, send, terminal_for, value

SYSTEM = "You are a careful assistant. Answer briefly and plainly, and never make anything up. " * 4
QUESTIONS = ["Tell me a story", "What is in the picture?", "Hello, how are you?", "Numbers 1 2 3",
             "Why is the sky blue?"]


@pytest.fixture(scope="module")
def reference(tiny_text_model):
    model, tokenizer = mlx_lm.load(str(tiny_text_model))

    def cold(question: str, tokens: int, system: str = SYSTEM) -> tuple[str, int]:
        ids = tokenizer.apply_chat_template([{"role": "system", "content": system},
                                             {"role": "user", "content": question}], add_generation_prompt=True)
        steps = mlx_lm.stream_generate(model, tokenizer, ids, max_tokens=tokens, sampler=make_sampler(0.0))
        return "".join(step.text for step in steps), len(ids)

    def system_tokens(system: str = SYSTEM) -> int:
        return len(tokenizer.apply_chat_template([{"role": "system", "content": system}]))

    cold.system_tokens = system_tokens
    return cold


def ask(server, question: str, tokens: int, system: str = SYSTEM, ready=None) -> dict:
    with server.connect() as ws:
        send(ws, {"type": "config", "temperature": 0, "maxOutputTokens": tokens})
        receive(ws)
        if ready is not None:
            ready.wait(timeout=30)
        done = run_request(ws, {"type": "text_input", "content": question, "context": system, "id": "q"})[-1]
    assert done["type"] == "response_complete", done
    return done


def test_a_second_session_with_the_same_system_prompt_prefills_only_the_rest(start_server, tiny_text_model,
                                                                              reference):
    server = start_server(tiny_text_model)
    first = ask(server, QUESTIONS[0], 16)
    second = ask(server, QUESTIONS[1], 16)
    text, prompt_tokens = reference(QUESTIONS[1], 16)
    assert first["usage"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens"] == prompt_tokens
    assert reference.system_tokens() <= second["usage"]["cached_tokens"] < prompt_tokens
    assert second["full_text"] == text, "a warm prefix answers exactly as a cold run"
    metrics = scrape(server)
    assert value(metrics, "mlxd_prefix_cache_hits_total") >= 1
    assert value(metrics, "mlxd_prefix_cache_tokens_saved_total") >= second["usage"]["cached_tokens"]
    assert value(metrics, "mlxd_prefix_cache_bytes") > 0


def test_many_concurrent_requests_sharing_entries_answer_as_cold_runs(start_server, tiny_text_model, reference):
    server = start_server(tiny_text_model)
    ask(server, "Warm the cache up", 8)
    expected = [reference(question, 40)[0] for question in QUESTIONS]
    for _ in range(2):
        answers = run_concurrently(lambda i, ready: ask(server, QUESTIONS[i], 40, ready=ready), len(QUESTIONS))
        assert [answer["full_text"] for answer in answers] == expected
        assert all(answer["usage"]["cached_tokens"] >= reference.system_tokens() for answer in answers)


def test_held_bytes_stay_under_the_bound(start_server, tiny_text_model):
    probe = start_server(tiny_text_model)
    ask(probe, QUESTIONS[0], 8)
    one_entry = value(scrape(probe), "mlxd_prefix_cache_bytes")
    bound = int(2.5 * one_entry)
    server = start_server(tiny_text_model, "--prefix-cache-bytes", str(bound))
    for i in range(6):
        ask(server, QUESTIONS[0], 8, system=f"System prompt number {i}, each one of its own. " * 8)
        metrics = scrape(server)
        assert 0 < value(metrics, "mlxd_prefix_cache_bytes") <= bound
    assert value(metrics, "mlxd_prefix_cache_entries") <= 2


def test_a_cancel_during_a_prefill_from_a_cached_prefix_leaves_the_entry_intact(start_server, tiny_text_model,
                                                                                  reference):
    server = start_server(tiny_text_model)
    ask(server, QUESTIONS[0], 8)
    held = value(scrape(server), "mlxd_prefix_cache_bytes")
    long_question = "Please read all of this carefully. " * 300
    with server.connect() as ws:
        send(ws, {"type": "config", "temperature": 0, "maxOutputTokens": 50})
        receive(ws)
        question = {"type": "text_input", "content": long_question, "context": SYSTEM, "id": "long"}
        done = helpers.cancel_once_started(ws, question)
    assert done["finish_reason"] == "cancelled" and done["usage"]["completion_tokens"] <= 1
    with server.connect() as ws:
        send(ws, {"type": "text_input", "content": long_question, "context": SYSTEM, "id": "gone"})
    after = ask(server, QUESTIONS[1], 16)
    assert after["full_text"] == reference(QUESTIONS[1], 16)[0]
    assert after["usage"]["cached_tokens"] >= reference.system_tokens()
    assert value(scrape(server), "mlxd_prefix_cache_bytes") >= held


def test_the_cache_switched_off_serves_everything_cold(start_server, tiny_text_model, reference):
    server = start_server(tiny_text_model, "--prefix-cache-bytes", "0")
    ask(server, QUESTIONS[0], 8)
    second = ask(server, QUESTIONS[1], 16)
    assert second["usage"]["cached_tokens"] == 0 and second["full_text"] == reference(QUESTIONS[1], 16)[0]
    assert value(scrape(server), "mlxd_prefix_cache_hits_total") == 0


def test_sessions_sending_a_new_system_prompt_together_have_it_prefilled_once(start_server, tiny_text_model,
                                                                              reference):
    server = start_server(tiny_text_model)
    system = "A brand new system prompt, sent to every session at the same moment. " * 4
    expected = [reference(question, 16, system)[0] for question in QUESTIONS[:4]]
    with server.connect() as busy:
        send(busy, {"type": "config", "maxOutputTokens": 1})
        receive(busy)
        send(busy, {"type": "text_input", "content": "Keep the engine busy for a moment. " * 50, "id": "busy"})
        answers = run_concurrently(lambda i, ready: ask(server, QUESTIONS[i], 16, system, ready), 4)
        receive_until(busy, terminal_for("busy"))
    assert [answer["full_text"] for answer in answers] == expected
    assert all(answer["usage"]["cached_tokens"] >= reference.system_tokens(system) for answer in answers), \
        [answer["usage"] for answer in answers]
