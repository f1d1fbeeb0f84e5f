"""Faults: clients that vanish without a close frame (TCP reset) at any moment, and a model that raises.

The server goes on, frees the engine at once, and serves everyone else. (SIGTERM during generation is
covered by test_shutdown.py.)
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from tests.helpers import (
    RawClient,
    receive,
    receive_until,
    reset,
    run_request,
    seconds_to_serve,
    send,
    terminal_for,
)
from tests.test_limits import metric, wait_for_metric
from tests.tiny_models import CHATML_TEMPLATE, build_text_model

RAISE = "please raise"
RAISING_TEMPLATE = ("{% for message in messages %}{% if message['content'] == '" + RAISE + "' %}"
                    "{{ raise_exception('the template refuses this prompt') }}{% endif %}{% endfor %}"
                    + CHATML_TEMPLATE)


def long_request(client: RawClient) -> None:
    client.send({"type": "config", "maxOutputTokens": 8000, "temperature": 0})
    client.receive()
    client.send({"type": "text_input", "content": "a very long answer", "id": "abandoned"})


def vanish_during_handshake(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/"))
    protocol.send_request(protocol.connect())
    sock.sendall(b"".join(protocol.data_to_send()))
    reset(sock)


def vanish_mid_message(port: int) -> None:
    client = RawClient(port)
    long_request(client)
    client.protocol.send_text(json.dumps({"type": "text_input", "content": "x" * 50_000}).encode())
    client.sock.sendall(b"".join(client.protocol.data_to_send())[:1000])
    client.reset()


def vanish_mid_stream(port: int) -> None:
    client = RawClient(port)
    long_request(client)
    while client.receive()["type"] != "token":
        pass
    client.reset()


@pytest.mark.parametrize("vanish", [vanish_during_handshake, vanish_mid_message, vanish_mid_stream])
def test_a_client_that_vanishes_frees_the_engine(text_server, vanish):
    vanish(text_server.port)
    waited = seconds_to_serve(text_server)
    assert waited < 4, f"the next client waited {waited:.1f} s: the abandoned answer kept the engine"
    wait_for_metric(text_server, "mlxd_active_sessions", 0)
    assert metric(text_server, "mlxd_queue_depth{kind=\"request\"}") == 0
    assert text_server.unhandled_errors() == []


@pytest.fixture(scope="module")
def raising_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_text_model(tmp_path_factory.mktemp("models") / "raising-llama", chat_template=RAISING_TEMPLATE)


def test_a_request_the_model_fails_on_gets_internal_and_the_engine_goes_on(start_server, raising_model):
    server = start_server(raising_model, "--max-tokens", "3")
    with server.connect() as ws, server.connect() as other:
        send(ws, {"type": "text_input", "content": RAISE, "id": "bad"})
        send(other, {"type": "text_input", "content": "hello", "id": "waiting"})
        send(ws, {"type": "text_input", "content": "hello", "id": "after"})
        failed = receive_until(ws, terminal_for("bad"))[-1]
        assert (failed["type"], failed["code"]) == ("error", "internal")
        assert "generation failed" in failed["error"]
        assert receive_until(ws, terminal_for("after"))[-1]["type"] == "response_complete"
        assert receive_until(other, terminal_for("waiting"))[-1]["type"] == "response_complete"
        assert run_request(other, {"type": "text_input", "content": RAISE, "id": "again"})[-1]["code"] == "internal"
        send(ws, {"type": "get_status"})
        assert receive(ws)["state"] == "ready"
    assert metric(server, 'mlxd_errors_total{code="internal"}') == 2
    assert metric(server, 'mlxd_requests_total{input_type="text",outcome="error"}') == 2
    assert [line["event"] for line in server.log_lines()].count("generation_failed") == 2
