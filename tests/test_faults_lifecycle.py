"""Faults around the server's own life: its model folder going away, a full disk while the embedded model is
converted, SIGTERM while loading, a second server on the same port, and a client that closes and never
reads again. Each must end in a clear message or a clean exit, never a hang or a half-written cache.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, RawClient, run_request, seconds_to_serve, send
from tests.test_limits import metric, wait_for_metric

CAN_MOUNT = sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("unshare") is not None


def ask(server, request_id: str = "q") -> dict:
    with server.connect() as ws:
        send(ws, {"type": "config", "maxOutputTokens": 3})
        ws.recv(timeout=30)
        return run_request(ws, {"type": "text_input", "content": "still there?", "id": request_id}, timeout=60)[-1]


@pytest.mark.parametrize("fault", ["deleted", "truncated"])
def test_the_model_folder_going_away_after_start_up_harms_nothing(fault, start_server, tiny_text_model, tmp_path):
    """The weights are in memory once loaded: later requests, /healthz and a clean stop do not need the folder.
    (Truncating stands in for an unreadable disk: as root, a chmod would not stop a read.)"""
    model = Path(shutil.copytree(tiny_text_model, tmp_path / "model"))
    server = start_server(model)
    assert ask(server, "before")["type"] == "response_complete"
    if fault == "deleted":
        shutil.rmtree(model)
    else:
        for path in model.iterdir():
            os.truncate(path, 0)
    assert ask(server, "after")["type"] == "response_complete"
    assert server.healthz()["state"] == "ready"
    assert server.unhandled_errors() == []


@pytest.mark.slow
@pytest.mark.skipif(not CAN_MOUNT, reason="needs Linux, root and unshare for a small private tmpfs")
def test_a_full_disk_while_converting_the_embedded_model_fails_cleanly(start_server, tmp_path):
    """ENOSPC half-way through the conversion: the model is reported failed with the reason, the server stays
    up, and nothing half-written stays in the cache for a later start to load."""
    cache = tmp_path / "cache"
    cache.mkdir()
    full_disk = ("unshare", "-m", "--propagation", "private", "sh", "-c",
                 'mount -t tmpfs -o size=24m tmpfs "$0" && exec "$@"', str(cache))
    server = start_server(None, wait="failed", env={"MLXD_CACHE_DIR": str(cache)}, prefix=full_disk)
    health = server.healthz()
    assert "the disk is full" in health["error"] and "MLXD_CACHE_DIR" in health["error"], health
    assert server.process.poll() is None, "the server stays up"
    seen = Path(f"/proc/{server.process.pid}/root") / str(cache).lstrip("/") / "models"  # its tmpfs
    left = sorted(p.name for p in seen.iterdir() if "smollm2" in p.name)  # the audio models convert on their own
    assert [name for name in left if not name.endswith(".lock")] == [], f"half-written conversion left: {left}"
    with server.connect() as ws:
        error = run_request(ws, {"type": "text_input", "content": "anyone?", "id": "q"})[-1]
    assert (error["type"], error["code"]) == ("error", "model_unavailable")


@pytest.mark.slow
def test_sigterm_while_the_model_loads_exits_cleanly_and_soon(start_server, tmp_path):
    """The embedded model's first conversion takes seconds: a stop then must not wait for it, nor crash."""
    server = start_server(None, wait="loading", env={"MLXD_CACHE_DIR": str(tmp_path / "cache")})
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=30)
    assert code == 0 and time.monotonic() - started < 20
    log = server.log_text()
    assert "Traceback" not in log and "terminate called" not in log, log[-3000:]
    assert any(line.get("event") == "stopped" for line in server.log_lines())


def test_a_second_server_on_the_same_port_exits_at_once_and_says_why(text_server, tiny_text_model):
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "mlxd", "serve", "--model", str(tiny_text_model), "--port",
                             str(text_server.port)], cwd=REPO, capture_output=True, text=True, timeout=60,
                            check=False)
    assert second.returncode == 2
    assert f"cannot listen on 127.0.0.1:{text_server.port}" in second.stderr
    assert "another mlxd, or another server, is listening there" in second.stderr
    assert time.monotonic() - started < 30 and "model_loading" not in second.stdout + second.stderr, \
        "it does not load a model it cannot serve"
    assert text_server.healthz()["state"] == "ready", "the first server is untouched"


def test_a_client_that_sends_a_close_frame_and_never_reads_again(text_server):
    """Mid-answer, then silence: the server ends the answer, frees the engine and the session."""
    client = RawClient(text_server.port, receive_buffer=4096)
    client.send({"type": "config", "maxOutputTokens": 8000, "temperature": 0})
    client.send({"type": "text_input", "content": "a very long answer", "id": "abandoned"})
    while client.receive()["type"] != "token":
        pass
    client.protocol.send_close(1000)
    client.flush()
    try:
        waited = seconds_to_serve(text_server)
        assert waited < 4, f"the next client waited {waited:.1f} s: the closed session kept the engine"
        wait_for_metric(text_server, "mlxd_active_sessions", 0)
        assert metric(text_server, 'mlxd_queue_depth{kind="request"}') == 0
    finally:
        client.sock.close()
    assert text_server.unhandled_errors() == []
