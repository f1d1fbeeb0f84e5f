"""The server listens before the model is loaded, and survives a model that fails to load."""

from __future__ import annotations

import httpx

from tests.helpers import receive, run_request, send


def test_requests_sent_while_loading_wait_and_are_served(start_server, tiny_vision_model):
    server = start_server(tiny_vision_model, wait=None)
    health = server.wait_listening()
    assert health["state"] in ("loading", "ready")
    with server.connect() as ws:
        send(ws, {"type": "config", "maxOutputTokens": 4, "temperature": 0})
        assert receive(ws)["type"] == "config_updated"
        done = run_request(ws, {"type": "text_input", "content": "early bird", "id": "early"}, timeout=60)[-1]
    assert done["type"] == "response_complete" and done["usage"]["completion_tokens"] == 4
    assert server.healthz()["state"] == "ready"


def test_a_model_that_fails_to_load_is_reported_not_crash_looped(start_server, tmp_path):
    missing = tmp_path / "no-such-model"
    server = start_server(missing, wait="failed", env={"HF_HUB_OFFLINE": "1"})
    health = server.healthz()
    assert health["model"] == str(missing)
    assert "no model folder" in health["error"]
    assert httpx.get(f"{server.http}/readyz", timeout=5).status_code == 503
    with server.connect() as ws:
        error = run_request(ws, {"type": "text_input", "content": "anyone?", "id": "q"})[-1]
    assert (error["type"], error["code"], error["id"]) == ("error", "model_unavailable", "q")
    assert server.process.poll() is None, "the server stays up"
    assert any(line.get("event") == "model_load_failed" and line.get("level") == "error"
               for line in server.log_lines())
