"""Gemini Live apps on Google's JS SDK (@google/genai under node) against a real mlxd over ws://, the key
in `?key=` as the SDK sends it. Skipped, visibly, where node or npm is missing or npm cannot install it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, receive, run_request, send, tokens_text

JS_SDK_VERSION = "3.3.0"
TOKEN = "node-Token_0123456789"
SERVER_KEYS = {"setupComplete", "serverContent", "usageMetadata", "goAway"}
NPM_TIMEOUT = 300


@pytest.fixture(scope="session")
def genai_js() -> Path:
    """node_modules holding @google/genai, installed once into a cache folder kept between runs."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run the @google/genai test")
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    prefix = Path(cache_home) / "mlxd-tests" / f"genai-js-{JS_SDK_VERSION}"
    if not (prefix / "node_modules" / "@google" / "genai" / "package.json").exists():
        try:
            installed = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                                        "--silent", f"@google/genai@{JS_SDK_VERSION}"],
                                       capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm did not install @google/genai@{JS_SDK_VERSION} within {NPM_TIMEOUT} s")
        if installed.returncode != 0:
            pytest.skip(f"npm could not install @google/genai@{JS_SDK_VERSION}: {installed.stderr[-300:]}")
    return prefix / "node_modules"


def node_client(modules: Path, port: int, key: str, question: str, max_tokens: int) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(REPO / "tests" / "gemini_live_client.cjs"), f"http://127.0.0.1:{port}", key,
                           question, str(max_tokens)], env={**os.environ, "NODE_PATH": str(modules)},
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_js_sdk_gets_the_answer_mlxds_own_protocol_gives(genai_js, start_server, tiny_text_model):
    server = start_server(tiny_text_model, env={"MLXD_TOKEN": TOKEN})
    result = node_client(genai_js, server.port, TOKEN, "What is the capital of France?", 6)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    with server.connect(additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        send(ws, {"type": "config", "temperature": 0, "maxOutputTokens": 6})
        receive(ws)
        messages = run_request(ws, {"type": "text_input", "content": "What is the capital of France?", "id": "q"})
    assert answer["text"] == tokens_text(messages, "q")
    assert answer["usage"]["responseTokenCount"] == 6
    assert answer["usage"]["promptTokenCount"] == messages[-1]["usage"]["prompt_tokens"]
    assert set(answer["keys"]) <= SERVER_KEYS and "setupComplete" in answer["keys"]
    refused = node_client(genai_js, server.port, "wrong-key", "Hi", 2)
    assert refused.returncode != 0 and "403" in refused.stderr + refused.stdout
