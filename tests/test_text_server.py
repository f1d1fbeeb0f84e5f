"""The real server on the tiny text model: streaming, the terminal-message invariant, config, cancel, limits."""

from __future__ import annotations

import time

import httpx
import pytest
from mlx_lm.tokenizer_utils import load as load_tokenizer

from tests.helpers import (
    delta,
    image_b64,
    receive,
    receive_until,
    run_request,
    scrape,
    seconds_to_serve,
    send,
    start_long_answer,
    terminal_for,
    tokens_text,
)


def test_healthz_and_readyz_say_ready_and_which_model(text_server, tiny_text_model):
    health = text_server.healthz()
    assert health["state"] == "ready"
    assert health["model"] == str(tiny_text_model)
    assert health["model_reason"] == "--model"
    assert health["modalities"] == ["text"]
    assert httpx.get(f"{text_server.http}/readyz", timeout=5).status_code == 200


@pytest.mark.parametrize("path", ["/", "/ws"])
def test_text_streams_tokens_and_completes(text_server, path):
    with text_server.connect(path) as ws:
        send(ws, {"type": "config", "temperature": 0})
        receive(ws)
        messages = run_request(ws, {"type": "text_input", "content": "Hello there", "id": "q1"})
    start, *tokens, done = messages
    assert start["type"] == "response_start" and start["input_type"] == "text" and start["id"] == "q1"
    assert tokens and all(m["type"] == "token" and m["id"] == "q1" for m in tokens)
    assert done["type"] == "response_complete"
    assert done["full_text"] == tokens_text(messages, "q1")
    assert done["finish_reason"] == "length"
    assert done["usage"]["completion_tokens"] == 200
    assert 0 < done["time_to_first_token"] <= done["inference_time"]
    assert all(isinstance(m["timestamp"], float) for m in messages)


def test_messages_without_id_work_as_in_the_original_protocol(text_server):
    with text_server.connect() as ws:
        send(ws, {"type": "config", "maxOutputTokens": 3, "temperature": 0})
        assert receive(ws)["type"] == "config_updated"
        messages = run_request(ws, {"type": "text_input", "content": "Hi"})
    assert messages[0]["type"] == "response_start"
    assert all("id" not in m for m in messages)
    assert messages[-1]["usage"]["completion_tokens"] == 3


def test_the_model_sees_the_chat_template_and_the_context(text_server, tiny_text_model):
    tokenizer = load_tokenizer(tiny_text_model)
    question, context = "What is in the picture?", "You describe pictures."
    templated = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    with_context = tokenizer.apply_chat_template(
        [{"role": "system", "content": context}, {"role": "user", "content": question}], add_generation_prompt=True)
    assert len(templated) > len(tokenizer.encode(question)) + 4
    with text_server.connect() as ws:
        send(ws, {"type": "config", "maxOutputTokens": 2})
        receive(ws)
        plain = run_request(ws, {"type": "text_input", "content": question, "id": "a"})[-1]
        contextual = run_request(ws, {"type": "text_input", "content": question, "context": context, "id": "b"})[-1]
    assert plain["usage"]["prompt_tokens"] == len(templated)
    assert contextual["usage"]["prompt_tokens"] == len(with_context)


def test_greedy_output_is_deterministic(text_server):
    with text_server.connect() as ws:
        send(ws, {"type": "config", "temperature": 0, "maxOutputTokens": 20})
        receive(ws)
        first = run_request(ws, {"type": "text_input", "content": "Tell me a story", "id": "1"})[-1]
        second = run_request(ws, {"type": "text_input", "content": "Tell me a story", "id": "2"})[-1]
    assert first["full_text"] == second["full_text"] != ""


def test_config_updates_atomically_and_only_this_session(text_server):
    with text_server.connect() as ws, text_server.connect() as other:
        send(ws, {"type": "config", "temperature": 0.3, "maxOutputTokens": 5, "id": "c1"})
        updated = receive(ws)
        assert updated["type"] == "config_updated" and updated["id"] == "c1"
        assert updated["updated_fields"] == {"temperature": 0.3, "maxOutputTokens": 5}
        assert updated["current_config"]["temperature"] == 0.3
        send(ws, {"type": "config", "temperature": 1.0, "topP": 3})
        error = receive(ws)
        assert (error["type"], error["code"]) == ("error", "invalid_field")
        assert "topP" in error["error"]
        send(ws, {"type": "get_status"})
        send(ws, {"type": "config", "topK": 5})
        assert receive(ws)["type"] == "status"
        assert receive(ws)["current_config"]["temperature"] == 0.3, "the refused update changed nothing"
        assert run_request(ws, {"type": "text_input", "content": "x", "id": "mine"})[-1]["usage"][
            "completion_tokens"] == 5
        send(other, {"type": "config"})
        theirs = receive(other)["current_config"]
        assert (theirs["temperature"], theirs["maxOutputTokens"]) == (0.7, 200), "another session keeps the defaults"


def test_status_reports_model_queues_and_sessions(text_server):
    with text_server.connect() as ws:
        send(ws, {"type": "get_status", "id": "st"})
        status = receive(ws)
    assert status["type"] == "status" and status["id"] == "st"
    assert status["state"] == "ready" and status["modalities"] == ["text"]
    assert status["queue"] == {"requests": 0, "frames": 0}
    assert status["sessions"] >= 1
    assert status["session"]["pending"] == 0


@pytest.mark.parametrize("message,code", [
    ("{oops", "invalid_json"),
    ('{"type": "text_input", "content": "x", "temperature": NaN}', "invalid_json"),
    ('{"content": "no type"}', "unknown_type"),
    ('{"type": "audio_input"}', "unknown_type"),
    ('{"type": "text_input", "content": 42, "id": "bad"}', "invalid_field"),
])
def test_bad_messages_get_errors_and_the_connection_stays_open(text_server, message, code):
    with text_server.connect() as ws:
        ws.send(message)
        error = receive(ws)
        assert error["type"] == "error" and error["code"] == code and error["error"]
        send(ws, {"type": "config", "maxOutputTokens": 2})
        receive(ws)
        assert run_request(ws, {"type": "text_input", "content": "still here?", "id": "ok"})[-1][
            "type"] == "response_complete"


def test_too_long_text_is_refused(start_server, tiny_text_model):
    server = start_server(tiny_text_model, "--max-text-chars", "10")
    with server.connect() as ws:
        error = run_request(ws, {"type": "text_input", "content": "x" * 11, "id": "long"})[-1]
    assert (error["type"], error["code"], error["id"]) == ("error", "text_too_long", "long")


@pytest.mark.parametrize("kind,field", [("image_input", "image"), ("video_frame", "frame"),
                                        ("screen_frame", "frame")])
def test_a_text_only_model_refuses_images_and_frames(text_server, kind, field):
    with text_server.connect() as ws:
        error = run_request(ws, {"type": kind, field: image_b64(), "id": "img"})[-1]
    assert (error["type"], error["code"], error["id"]) == ("error", "model_text_only", "img")


def test_cancel_a_running_request_returns_the_text_so_far(text_server):
    with text_server.connect() as ws:
        start_long_answer(ws, "long")
        send(ws, {"type": "cancel", "id": "long"})
        messages = receive_until(ws, terminal_for("long"))
    done = messages[-1]
    assert done["type"] == "response_complete" and done["finish_reason"] == "cancelled"
    assert done["usage"]["completion_tokens"] < 8000
    assert done["full_text"].endswith(tokens_text(messages, "long"))


def test_cancel_without_id_cancels_the_running_request_and_waiting_ones_by_id(text_server):
    with text_server.connect() as ws:
        send(ws, {"type": "config", "maxOutputTokens": 8000, "temperature": 0})
        receive(ws)
        send(ws, {"type": "text_input", "content": "first", "id": "run"})
        send(ws, {"type": "text_input", "content": "second", "id": "wait"})
        receive_until(ws, lambda m: m["type"] == "token")
        send(ws, {"type": "cancel", "id": "wait"})
        send(ws, {"type": "cancel"})
        messages = receive_until(ws, terminal_for("run"))
        terminals = [m for m in messages if m["type"] == "response_complete"]
        assert {m["id"]: m["finish_reason"] for m in terminals} == {"wait": "cancelled", "run": "cancelled"}
        assert not any(m["type"] == "response_start" and m.get("id") == "wait" for m in messages)
        send(ws, {"type": "cancel", "id": "gone"})
        error = receive(ws)
    assert (error["type"], error["code"], error["id"]) == ("error", "not_found", "gone")


def test_the_backlog_is_bounded_with_queue_full(start_server, tiny_text_model):
    server = start_server(tiny_text_model, "--max-pending", "2")
    with server.connect() as ws:
        send(ws, {"type": "config", "maxOutputTokens": 300, "temperature": 0})
        receive(ws)
        for i in range(6):
            send(ws, {"type": "text_input", "content": "hi", "id": f"q{i}"})
        terminals = {}
        deadline = time.monotonic() + 60
        while len(terminals) < 6 and time.monotonic() < deadline:
            message = receive(ws)
            if message["type"] in ("response_complete", "error"):
                terminals[message["id"]] = message.get("code") or message["finish_reason"]
    assert len(terminals) == 6, "every input gets exactly one terminal message"
    assert list(terminals.values()).count("queue_full") >= 1
    assert terminals["q0"] == "length" and terminals["q1"] == "length"


def test_a_disconnect_mid_generation_frees_the_engine(text_server):
    before = scrape(text_server)
    with text_server.connect() as ws:
        start_long_answer(ws, "abandoned")
        send(ws, {"type": "text_input", "content": "and this", "id": "waiting"})
    waited = seconds_to_serve(text_server)
    assert delta(before, scrape(text_server), "mlxd_requests_total", input_type="text", outcome="cancelled") == 2
    assert waited < 4, f"the next client waited {waited:.1f} s: the abandoned 8000-token answer kept running"


def test_two_clients_are_served_fairly(text_server):
    with text_server.connect() as busy, text_server.connect() as newcomer:
        send(busy, {"type": "config", "maxOutputTokens": 400})
        receive(busy)
        for i in range(4):
            send(busy, {"type": "text_input", "content": "hi", "id": f"busy{i}"})
        receive_until(busy, lambda m: m["type"] == "response_start")
        send(newcomer, {"type": "text_input", "content": "quick question", "id": "q"})
        receive_until(newcomer, terminal_for("q"), timeout=60)
        finished_meanwhile = []
        send(busy, {"type": "get_status"})
        for message in receive_until(busy, lambda m: m["type"] == "status", timeout=60):
            if message["type"] == "response_complete":
                finished_meanwhile.append(message["id"])
        receive_until(busy, terminal_for("busy3"), timeout=60)
    assert len(finished_meanwhile) <= 2, (
        f"the newcomer waited for {finished_meanwhile}: it should go right after the running request")
