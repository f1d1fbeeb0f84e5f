"""`--engine openai` in front of a real mlx_lm.server on the tiny llama: streaming, usage, sampling, cancel,
faults. The session side is mlxd's own; only the tokens come from the upstream."""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from mlx_lm.tokenizer_utils import load as load_tokenizer
from websockets.exceptions import ConnectionClosed

from tests.helpers import (
    REPO,
    ServerProcess,
    delta,
    receive,
    receive_until,
    run_request,
    scrape,
    send,
    start_long_answer,
    terminal_for,
    tokens_text,
)
from tests.upstreams import UpstreamProcess, mlx_lm_server, serving


def openai_server(start_server, upstream: UpstreamProcess, *args: str, wait: str = "ready") -> ServerProcess:
    return start_server(None, "--engine", "openai", "--upstream", upstream.url, "--upstream-health-interval", "0.5",
                        *args, wait=wait)


@pytest.fixture(scope="module")
def upstream(tiny_text_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    yield from serving(mlx_lm_server(tiny_text_model, tmp_path_factory.mktemp("mlx_lm")))


@pytest.fixture(scope="module")
def front(upstream: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(None, "--engine", "openai", "--upstream", upstream.url,
                           log_path=tmp_path_factory.mktemp("front") / "server.log")
    try:
        server.wait_state("ready")
        yield server
    finally:
        server.stop()


def answer(ws, content: str, request_id: str, **config) -> dict:
    if config:
        send(ws, {"type": "config", **config})
        assert receive(ws)["type"] == "config_updated"
    return run_request(ws, {"type": "text_input", "content": content, "id": request_id})[-1]


def test_health_names_the_upstream_model_and_no_model_is_loaded_here(front, upstream, tiny_text_model):
    health = front.healthz()
    assert health["state"] == "ready" and health["model"] == str(tiny_text_model.resolve())
    assert health["upstream"] == upstream.url and health["modalities"] == ["text"]
    assert "model_loading" not in front.log_text()


@pytest.mark.parametrize("path", ["/", "/ws"])
def test_tokens_concatenate_to_full_text_and_usage_is_the_upstreams(front, tiny_text_model, path):
    content, context = "Hello there", "Answer briefly."
    with front.connect(path) as ws:
        send(ws, {"type": "config", "temperature": 0, "maxOutputTokens": 12})
        receive(ws)
        messages = run_request(ws, {"type": "text_input", "content": content, "context": context, "id": "q"})
    start, *tokens, done = messages
    assert start["type"] == "response_start" and tokens and all(m["type"] == "token" for m in tokens)
    assert done["type"] == "response_complete" and done["full_text"] == tokens_text(messages, "q")
    prompt = load_tokenizer(tiny_text_model).apply_chat_template(
        [{"role": "system", "content": context}, {"role": "user", "content": content}], add_generation_prompt=True)
    assert done["usage"]["prompt_tokens"] == len(prompt)
    assert done["finish_reason"] == "length" and done["usage"]["completion_tokens"] == 12
    assert 0 < done["time_to_first_token"] <= done["inference_time"]


def test_upstream_metrics_count_requests_first_bytes_and_in_flight(front):
    before = scrape(front)
    with front.connect() as ws:
        assert answer(ws, "Hi", "m", maxOutputTokens=3)["finish_reason"] == "length"
    after = scrape(front)
    assert delta(before, after, "mlxd_upstream_requests_total", outcome="length") == 1
    assert delta(before, after, "mlxd_upstream_first_byte_seconds_count") == 1
    assert value_after(front, "mlxd_upstream_in_flight") == 0


def test_upstream_concurrency_caps_the_jobs_in_flight(start_server, upstream):
    server = openai_server(start_server, upstream, "--upstream-concurrency", "1")
    with server.connect() as first, server.connect() as second:
        start_long_answer(first, "long")
        send(second, {"type": "text_input", "content": "Hi", "id": "waits"})
        with pytest.raises(TimeoutError):
            receive(second, timeout=1)  # not even response_start: the one slot is taken
        send(second, {"type": "get_status", "id": "st"})
        assert receive(second)["queue"]["requests"] == 1  # it waits in mlxd, not upstream
        send(first, {"type": "cancel", "id": "long"})
        assert receive_until(second, terminal_for("waits"))[-1]["type"] == "response_complete"


def test_with_history_the_conversation_goes_upstream_and_turn_2_is_cached(front, tiny_text_model):
    with front.connect() as ws:
        first = answer(ws, "Tell me a story about a robot.", "t1", history=True, temperature=0, maxOutputTokens=12)
        second = answer(ws, "What happened next?", "t2")
        send(ws, {"type": "reset", "id": "r"})
        assert receive(ws)["type"] == "conversation_reset"
        fresh = answer(ws, "What happened next?", "t3")
    conversation = [{"role": "user", "content": "Tell me a story about a robot."},
                    {"role": "assistant", "content": first["full_text"]},
                    {"role": "user", "content": "What happened next?"}]
    tokenizer = load_tokenizer(tiny_text_model)
    assert second["usage"]["prompt_tokens"] == len(tokenizer.apply_chat_template(conversation,
                                                                                 add_generation_prompt=True))
    assert second["usage"]["cached_tokens"] >= first["usage"]["prompt_tokens"]
    assert fresh["usage"]["prompt_tokens"] == len(tokenizer.apply_chat_template(conversation[2:],
                                                                                add_generation_prompt=True))


def test_the_sessions_sampling_reaches_the_upstream(front):
    with front.connect() as ws:
        greedy = [answer(ws, "Tell me a story", f"g{i}", temperature=0, maxOutputTokens=24)["full_text"]
                  for i in range(2)]
        hot = answer(ws, "Tell me a story", "hot", temperature=1.5, topK=0, topP=1.0)["full_text"]
    assert greedy[0] == greedy[1]
    assert hot != greedy[0]


def test_cancel_and_disconnect_end_the_upstream_stream(front, upstream):
    with front.connect() as ws:
        start_long_answer(ws, "long")
        send(ws, {"type": "cancel", "id": "long"})
        done = receive_until(ws, terminal_for("long"))[-1]
        assert done["finish_reason"] == "cancelled" and done["full_text"]
        assert upstream.wait_idle(timeout=3) < 3
        start_long_answer(ws, "abandoned")
    assert upstream.wait_idle(timeout=3) < 3
    assert value_after(front, "mlxd_upstream_in_flight") == 0


def value_after(server: ServerProcess, name: str, timeout: float = 5) -> float:
    """A gauge once it has settled at 0 (or its last value after the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        current = scrape(server).get((name, frozenset()), 0.0)
        if current == 0 or time.monotonic() > deadline:
            return current
        time.sleep(0.05)


def test_sigterm_ends_the_upstream_stream_and_exits_cleanly(start_server, upstream):
    server = openai_server(start_server, upstream)
    with server.connect() as ws:
        start_long_answer(ws, "running")
        server.process.send_signal(signal.SIGTERM)
        done = receive_until(ws, terminal_for("running"), timeout=10)[-1]
        with pytest.raises(ConnectionClosed) as closed:
            receive(ws, timeout=10)
    assert done["finish_reason"] == "cancelled" and closed.value.rcvd.code == 1001
    assert server.process.wait(timeout=10) == 0
    assert upstream.wait_idle(timeout=3) < 3


def test_openai_without_an_upstream_refuses_to_start():
    result = subprocess.run([sys.executable, "-m", "mlxd", "serve", "--engine", "openai", "--port", "0"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--engine openai needs --upstream URL" in result.stderr


def test_an_unknown_model_is_refused_with_the_upstreams_reason(start_server, upstream):
    server = openai_server(start_server, upstream, "--upstream-model", "no/such-model")
    with server.connect() as ws:
        done = run_request(ws, {"type": "text_input", "content": "Hi", "id": "q"})[-1]
    assert done["type"] == "error" and done["code"] == "model_unavailable"
    assert "HTTP 404" in done["error"] and "cached snapshot" in done["error"]  # mlx_lm.server's own words
    assert delta({}, scrape(server), "mlxd_upstream_errors_total", reason="http_404") == 1


def test_an_upstream_that_lists_no_models_says_to_name_one(start_server, tiny_text_model, tmp_path):
    bare = mlx_lm_server(tiny_text_model, tmp_path, env={"HF_HOME": str(tmp_path / "no-cache-here")})
    try:
        bare.wait_healthy()
        server = openai_server(start_server, bare, wait="unavailable")
        assert "--upstream-model" in server.healthz()["error"]
        assert httpx.get(f"{server.http}/readyz", timeout=5).status_code == 503
        named = openai_server(start_server, bare, "--upstream-model", str(tiny_text_model))
        with named.connect() as ws:
            assert answer(ws, "Hi", "q", maxOutputTokens=3)["type"] == "response_complete"
    finally:
        bare.stop()


def test_upstream_down_then_back(start_server, tiny_text_model, tmp_path):
    upstream = mlx_lm_server(tiny_text_model, tmp_path)
    try:
        upstream.wait_healthy()
        server = openai_server(start_server, upstream)
        upstream.stop()
        with server.connect() as ws:
            failed = run_request(ws, {"type": "text_input", "content": "Hi", "id": "down"})[-1]
            assert failed["type"] == "error" and failed["code"] == "model_unavailable"
            assert "cannot reach the upstream" in failed["error"] and "ConnectError" in failed["error"]
            assert server.wait_state("unavailable", timeout=5)["error"]
            assert httpx.get(f"{server.http}/readyz", timeout=5).status_code == 503
            upstream.start()
            upstream.wait_healthy()
            server.wait_state("ready", timeout=5)
            assert answer(ws, "Hi", "back", maxOutputTokens=3)["type"] == "response_complete"
    finally:
        upstream.stop()
    assert server.process.poll() is None


def test_a_stream_cut_halfway_is_internal_with_the_reason(start_server, tiny_text_model, tmp_path):
    upstream = mlx_lm_server(tiny_text_model, tmp_path)
    try:
        upstream.wait_healthy()
        server = openai_server(start_server, upstream)
        with server.connect() as ws:
            start_long_answer(ws, "cut")
            upstream.process.kill()
            done = receive_until(ws, terminal_for("cut"))[-1]
        assert done["type"] == "error" and done["code"] == "internal"
        assert "the upstream stream was cut" in done["error"]
        assert delta({}, scrape(server), "mlxd_upstream_errors_total", reason="stream_cut") == 1
    finally:
        upstream.stop()


class _Recorder(http.server.BaseHTTPRequestHandler):
    """An upstream that records what mlxd sends it and answers one short stream."""

    seen: ClassVar[list[tuple[str, dict[str, str], dict]]] = []

    def do_GET(self) -> None:
        self._reply(b'{"object": "list", "data": [{"id": "recorded-model"}]}', "application/json")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, dict(self.headers), body))
        chunks = [{"choices": [{"delta": {"content": "ok"}, "finish_reason": None}]},
                  {"choices": [{"delta": {}, "finish_reason": "stop"}]},
                  {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 1,
                                            "prompt_tokens_details": {"cached_tokens": 5}}}]
        stream = b"".join(f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks) + b"data: [DONE]\n\n"
        self._reply(stream, "text/event-stream")

    def _reply(self, payload: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


def test_the_upstream_token_goes_upstream_and_mlxds_own_never_does(start_server, tmp_path):
    recorder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    token_file = tmp_path / "upstream-token"
    token_file.write_text("upstream-secret\n")
    token_file.chmod(0o600)
    try:
        server = start_server(None, "--engine", "openai", "--upstream", f"http://127.0.0.1:{recorder.server_port}/v1",
                              "--upstream-token-file", str(token_file), "--token", "mlxd-secret")
        with server.connect(additional_headers={"Authorization": "Bearer mlxd-secret"}) as ws:
            send(ws, {"type": "config", "temperature": 0.5, "topK": 7, "presencePenalty": 0.25, "maxOutputTokens": 9})
            receive(ws)
            done = run_request(ws, {"type": "text_input", "content": "Hi", "context": "Be brief.", "id": "q"})[-1]
    finally:
        recorder.shutdown()
    assert done["full_text"] == "ok" and done["finish_reason"] == "stop"
    assert done["usage"] == {"prompt_tokens": 7, "completion_tokens": 1, "cached_tokens": 5}
    path, headers, body = _Recorder.seen[-1]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer upstream-secret"
    assert "mlxd-secret" not in json.dumps([headers, body]) and headers["X-Session-Id"]
    assert body["model"] == "recorded-model" and body["stream"] is True and body["stream_options"]["include_usage"]
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (body["temperature"], body["top_k"], body["presence_penalty"], body["max_tokens"]) == (0.5, 7, 0.25, 9)


def test_openai_realtime_in_openai_mode_answers_as_the_original_protocol_does(front):
    from tests.test_realtime_server import RESPONSE_SEQUENCE, kinds, run, text_of

    with front.connect() as ws:
        original = answer(ws, "Hello", "o", temperature=0, maxOutputTokens=8)

    async def scenario(rt) -> None:
        await rt.setup(max_output_tokens=8, temperature=0)
        await rt.say("Hello")
        events = await rt.respond()
        assert kinds(events) == RESPONSE_SEQUENCE
        assert text_of(events) == original["full_text"]
        assert events[-1].response.usage.input_tokens == original["usage"]["prompt_tokens"]

    run(scenario, front)


def test_gemini_live_in_openai_mode_answers_as_the_original_protocol_does(front):
    from tests.test_gemini_raw import open_session, until_turn_complete

    with front.connect() as ws:
        original = answer(ws, "Hello", "o", temperature=0, maxOutputTokens=4)
    with open_session(front) as ws:
        ws.send(json.dumps({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Hello"}]}],
                                              "turnComplete": True}}))
        messages = until_turn_complete(ws)
    text = "".join(part["text"] for m in messages for part in m.get("serverContent", {}).get("modelTurn", {})
                   .get("parts", []))
    assert text == original["full_text"]
    assert messages[-1]["usageMetadata"]["promptTokenCount"] == original["usage"]["prompt_tokens"]
