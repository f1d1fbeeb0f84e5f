"""Limits that keep one client from hurting the others: message size, connections, message rate, idle
connections, keepalive, and clients that stop reading. Each is hit for real; the server stays up."""

from __future__ import annotations

import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.helpers import RawClient, image_b64, receive, run_request, send


def metric(server, line_start: str) -> float:
    for line in httpx.get(f"{server.http}/metrics", timeout=5).text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


def wait_for_metric(server, line_start: str, value: float, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while metric(server, line_start) != value:
        assert time.monotonic() < deadline, f"{line_start} never reached {value}:\n{server.log_text()[-3000:]}"
        time.sleep(0.1)


def still_serves(server) -> None:
    with server.connect() as ws:
        send(ws, {"type": "config", "maxOutputTokens": 2})
        receive(ws)
        assert run_request(ws, {"type": "text_input", "content": "ok?", "id": "ok"})[-1]["type"] == "response_complete"
    assert server.unhandled_errors() == []


def closed_with(ws, timeout: float = 10) -> ConnectionClosed:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=timeout)
    return closed.value


def test_an_oversized_message_closes_with_1009_before_it_is_buffered(start_server, tiny_text_model):
    server = start_server(tiny_text_model, "--max-message-bytes", "100000")
    with server.connect() as ws:
        ws.send('{"type": "text_input", "content": "' + "x" * 200_000 + '"}')
        closed = closed_with(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1009
    still_serves(server)


def test_connections_past_the_limit_are_closed_with_1013(start_server, tiny_text_model):
    server = start_server(tiny_text_model, "--max-connections", "2")
    with server.connect() as first, server.connect() as second:
        with server.connect() as third:
            closed = closed_with(third)
        assert closed.rcvd.code == 1013 and "too many connections" in closed.rcvd.reason
        for ws in (first, second):
            send(ws, {"type": "get_status"})
            assert receive(ws)["type"] == "status"
    wait_for_metric(server, "mlxd_active_sessions", 0)
    still_serves(server)
    assert metric(server, 'mlxd_connections_refused_total{reason="capacity"}') == 1


def test_messages_over_the_rate_are_refused_and_frames_over_it_dropped(start_server, tiny_vision_model):
    server = start_server(tiny_vision_model, "--max-messages-per-second", "1", "--message-burst", "3")
    with server.connect() as ws:
        for i in range(3):
            send(ws, {"type": "get_status", "id": f"s{i}"})
        send(ws, {"type": "video_frame", "frame": image_b64(), "id": "f"})
        send(ws, {"type": "text_input", "content": "hi", "id": "t"})
        replies = [receive(ws) for _ in range(5)]
        assert [m["type"] for m in replies] == ["status"] * 3 + ["frame_dropped", "error"]
        assert (replies[3]["id"], replies[3]["reason"]) == ("f", "rate_limited")
        assert (replies[4]["id"], replies[4]["code"]) == ("t", "rate_limited")
        time.sleep(1.2)
        send(ws, {"type": "get_status", "id": "later"})
        assert receive(ws)["id"] == "later", "the bucket refills at the rate"
    assert metric(server, 'mlxd_frames_dropped_total{reason="rate_limited"}') == 1
    assert metric(server, 'mlxd_errors_total{code="rate_limited"}') == 1


def test_an_idle_connection_is_closed_but_not_one_that_is_busy(start_server, tiny_text_model):
    server = start_server(tiny_text_model, "--idle-timeout", "0.6")
    with server.connect() as idle, server.connect() as busy:
        send(busy, {"type": "config", "maxOutputTokens": 1500, "temperature": 0})
        receive(busy)
        started = time.monotonic()
        answer = run_request(busy, {"type": "text_input", "content": "long", "id": "long"})[-1]
        assert answer["finish_reason"] == "length" and time.monotonic() - started > 0.6, "work in flight is not idle"
        closed = closed_with(idle)
        assert (closed.rcvd.code, closed.rcvd.reason) == (1000, "idle")
        send(busy, {"type": "get_status"})
        assert receive(busy)["type"] == "status", "the busy connection was kept"
    assert metric(server, 'mlxd_disconnects_total{reason="idle"}') >= 1


def test_a_client_that_does_not_answer_pings_is_disconnected(start_server, tiny_text_model):
    server = start_server(tiny_text_model, "--ping-interval", "0.2", "--ping-timeout", "0.3")
    silent = RawClient(server.port)
    wait_for_metric(server, "mlxd_active_sessions", 1)
    wait_for_metric(server, "mlxd_active_sessions", 0, timeout=10)
    silent.sock.close()
    still_serves(server)


@pytest.mark.parametrize("limit,reason", [(("--send-timeout", "0.5", "--max-backlog", "1000000"), "send_timeout"),
                                          (("--max-backlog", "50"), "backlog")])
def test_a_client_that_stops_reading_is_disconnected(start_server, tiny_text_model, limit, reason):
    server = start_server(tiny_text_model, "--max-messages-per-second", "1000000", "--message-burst", "1000000",
                          *limit)
    reader = RawClient(server.port, receive_buffer=4096)
    reader.sock.settimeout(0.5)
    deadline = time.monotonic() + 30
    try:
        while metric(server, f'mlxd_disconnects_total{{reason="{reason}"}}') == 0:
            assert time.monotonic() < deadline, server.log_text()[-3000:]
            for _ in range(2000):  # each asks for a status report that the client will never read
                reader.send({"type": "get_status"})
    except TimeoutError:
        pass  # the server stopped reading from us: it has ended the connection
    finally:
        reader.reset()
    wait_for_metric(server, f'mlxd_disconnects_total{{reason="{reason}"}}', 1)
    wait_for_metric(server, "mlxd_active_sessions", 0)
    still_serves(server)
