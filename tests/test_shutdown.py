"""SIGTERM (how launchd and systemd stop an agent) during generation: answers end, sockets close with 1001."""

from __future__ import annotations

import signal
import time

from websockets.exceptions import ConnectionClosed

from tests.helpers import receive, receive_until, send, start_long_answer, terminal_for


def test_sigterm_cancels_in_flight_work_closes_with_1001_and_exits_cleanly(start_server, tiny_text_model):
    server = start_server(tiny_text_model)
    with server.connect() as ws:
        start_long_answer(ws, "running")
        send(ws, {"type": "text_input", "content": "next", "id": "waiting"})
        stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        messages = receive_until(ws, terminal_for("running"), timeout=10)
        messages += receive_until(ws, terminal_for("waiting"), timeout=10) if not any(
            m.get("id") == "waiting" and m["type"] == "response_complete" for m in messages) else []
        try:
            extra = receive(ws, timeout=10)
            raise AssertionError(f"expected the server to close, got {extra}")
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1001
    finishes = {m["id"]: m["finish_reason"] for m in messages if m["type"] == "response_complete"}
    assert finishes == {"running": "cancelled", "waiting": "cancelled"}
    assert server.process.wait(timeout=10) == 0
    assert time.monotonic() - stopped_at < 8
    events = [line.get("event") for line in server.log_lines()]
    assert "stopped" in events
