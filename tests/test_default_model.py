"""The default model on this CPU-only machine: the embedded SmolLM2 chat model, converted on first use."""

from __future__ import annotations

import pytest

from tests.helpers import image_b64, receive, run_request, send


@pytest.mark.slow
def test_mlxd_serve_without_a_model_answers_sensibly_offline(start_server, tmp_path):
    server = start_server(None, wait=None, env={"MLXD_CACHE_DIR": str(tmp_path / "cache"), "MLXD_MODEL": "",
                                                "HF_HUB_OFFLINE": "1"})
    health = server.wait_listening()
    assert health["state"] == "loading", "the server listens while the GGUF is converted in the background"
    assert health["model"] == "smollm2-135m"
    assert "CPU backend" in health["model_reason"]
    with server.connect() as ws:
        send(ws, {"type": "config", "temperature": 0, "maxOutputTokens": 40})
        receive(ws)
        done = run_request(ws, {"type": "text_input", "content": "What is the capital of France?", "id": "q"},
                           timeout=180)[-1]
        assert done["type"] == "response_complete", done
        assert "Paris" in done["full_text"]
        assert done["finish_reason"] == "stop", "the model stops at its end-of-turn token"
        refused = run_request(ws, {"type": "image_input", "image": image_b64(), "id": "img"})[-1]
    assert (refused["type"], refused["code"]) == ("error", "model_text_only")
    starting = next(line for line in server.log_lines() if line.get("event") == "starting")
    assert starting["model"] == "smollm2-135m" and "CPU backend" in starting["model_reason"]
