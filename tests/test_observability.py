"""Metrics scraped over real HTTP and parsed with prometheus_client; JSON logs read back from the process."""

from __future__ import annotations

import time

from tests.helpers import (
    TERMINAL_TYPES,
    delta,
    image_b64,
    receive,
    receive_until,
    run_request,
    scrape,
    send,
    terminal_for,
    value,
)


def test_metrics_count_exactly_what_happened(start_server, tiny_vision_model):
    server = start_server(tiny_vision_model)
    before = scrape(server)
    assert value(before, "mlxd_model_loaded") == 1
    assert value(before, "mlxd_model_info", model=str(tiny_vision_model), modalities="text,image") == 1
    assert value(before, "mlxd_mlx_active_memory_bytes") > 0
    assert value(before, "process_resident_memory_bytes") > 0

    frame = image_b64(320, 240)
    with server.connect() as ws:
        send(ws, {"type": "config", "max_tokens_image": 20, "maxOutputTokens": 8000, "temperature": 0})
        receive(ws)
        for i in range(12):
            send(ws, {"type": "video_frame", "frame": frame, "id": f"f{i}"})
        frames = {}
        while len(frames) < 12:
            message = receive(ws)
            if message["type"] in TERMINAL_TYPES:
                frames[message["id"]] = message
        send(ws, {"type": "text_input", "content": "long", "id": "cancel-me"})
        receive_until(ws, lambda m: m["type"] == "token")
        send(ws, {"type": "cancel", "id": "cancel-me"})
        cancelled = receive_until(ws, terminal_for("cancel-me"))[-1]
        ws.send("{broken")
        assert receive(ws)["code"] == "invalid_json"
        bad_image = run_request(ws, {"type": "image_input", "image": "bm90IGFuIGltYWdl", "id": "bad"})[-1]
        assert bad_image["code"] == "image_decode_failed"
        send(ws, {"type": "get_status"})
        receive_until(ws, lambda m: m["type"] == "status")
        during = scrape(server)
    time.sleep(0.2)
    after = scrape(server)

    answered = [m for m in frames.values() if m["type"] == "response_complete"]
    dropped = [m for m in frames.values() if m["type"] == "frame_dropped"]
    assert answered and dropped
    assert delta(before, after, "mlxd_frames_received_total") == 12
    assert delta(before, after, "mlxd_frames_dropped_total", reason="superseded") == len(dropped)
    assert delta(before, after, "mlxd_frame_age_seconds_count") == len(answered)
    assert delta(before, after, "mlxd_requests_total", input_type="image", outcome="length") == len(answered)
    assert delta(before, after, "mlxd_requests_total", input_type="text", outcome="cancelled") == 1
    assert delta(before, after, "mlxd_requests_total", input_type="image", outcome="error") == 1
    assert delta(before, after, "mlxd_errors_total", code="invalid_json") == 1
    assert delta(before, after, "mlxd_errors_total", code="image_decode_failed") == 1
    completed = [*answered, cancelled]
    assert delta(before, after, "mlxd_generated_tokens_total") == sum(m["usage"]["completion_tokens"]
                                                                      for m in completed)
    assert delta(before, after, "mlxd_prompt_tokens_total") == sum(m["usage"]["prompt_tokens"] for m in completed)
    assert delta(before, after, "mlxd_time_to_first_token_seconds_count") == len(completed)
    assert delta(before, after, "mlxd_inference_seconds_count") == len(completed)
    assert delta(before, after, "mlxd_decode_tokens_per_second_count") == len(completed)
    assert value(after, "mlxd_tokens_per_second") > 0
    assert delta(before, after, "mlxd_connections_total") == 1
    assert value(during, "mlxd_active_sessions") == 1 and value(after, "mlxd_active_sessions") == 0
    assert value(after, "mlxd_queue_depth", kind="frame") == 0
    assert value(after, "mlxd_queue_depth", kind="request") == 0


def test_one_json_log_line_per_request_without_content(start_server, tiny_text_model):
    secret = "my secret prompt about the zebra"
    server = start_server(tiny_text_model)
    with server.connect() as ws:
        send(ws, {"type": "config", "maxOutputTokens": 7, "temperature": 0})
        receive(ws)
        done = run_request(ws, {"type": "text_input", "content": secret, "context": "hidden context", "id": "q"})[-1]
        ws.send("{not json")
        receive(ws)
    time.sleep(0.3)
    lines = server.log_lines()
    assert all({"timestamp", "level", "event", "logger"} <= line.keys() for line in lines)
    finished = [line for line in lines if line["event"] == "request_finished"]
    assert len(finished) == 1
    entry = finished[0]
    assert entry["request"] == "q" and entry["input_type"] == "text" and entry["finish_reason"] == "length"
    assert entry["prompt_tokens"] == done["usage"]["prompt_tokens"]
    assert entry["completion_tokens"] == 7
    assert entry["time_to_first_token"] > 0 and entry["inference_time"] > 0 and entry["tokens_per_second"] > 0
    assert entry["text_chars"] == len(done["full_text"])
    errors = [line for line in lines if line["event"] == "request_error"]
    assert [line["code"] for line in errors] == ["invalid_json"]
    closed = [line for line in lines if line["event"] == "connection_closed"]
    assert closed and closed[0]["messages"] == 3 and "duration" in closed[0]
    loaded = [line for line in lines if line["event"] == "model_loaded"]
    assert loaded and loaded[0]["load_seconds"] > 0
    log_text = server.log_text()
    assert secret not in log_text and "hidden context" not in log_text
    assert done["full_text"] not in log_text


def test_log_content_opts_in(start_server, tiny_text_model):
    server = start_server(tiny_text_model, "--log-content")
    with server.connect() as ws:
        send(ws, {"type": "config", "maxOutputTokens": 5})
        receive(ws)
        done = run_request(ws, {"type": "text_input", "content": "zebra question", "id": "q"})[-1]
    time.sleep(0.3)
    lines = server.log_lines()
    finished = next(line for line in lines if line["event"] == "request_finished")
    content = next(line for line in lines if line["event"] == "request_content")
    assert finished["text"] == done["full_text"]
    assert (content["request"], content["prompt"]) == ("q", "zebra question")
