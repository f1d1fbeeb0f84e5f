"""Who may open /v1/realtime (the SDK's api_key, `?token=`, the browser client's subprotocol), the refusal of
the beta interface, and the JS SDK (`openai` + `ws` under node) over wss:// with a self-signed certificate."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from tests.helpers import REPO, wait_ready_over_tls
from tests.test_access import self_signed_certificate
from tests.test_realtime_server import Realtime

TOKEN = "s3cret-token"
NODE_PACKAGES = ("openai@7.59.0", "ws@8.23.0")
NODE_INSTALL_SECONDS = 300


async def first_event(server, api_key: str, **connect_options) -> str:
    client = AsyncOpenAI(api_key=api_key, base_url=f"{server.http}/v1")
    async with client.realtime.connect(model="gpt-realtime", **connect_options) as connection:
        return (await Realtime(connection).recv()).type


def status_of(refusal: pytest.ExceptionInfo) -> int:
    return refusal.value.response.status_code


def test_the_token_is_the_sdks_api_key_or_a_query_or_the_browser_subprotocol(start_server, tiny_text_model):
    server = start_server(tiny_text_model, env={"MLXD_TOKEN": TOKEN})
    assert asyncio.run(asyncio.wait_for(first_event(server, TOKEN), 30)) == "session.created"
    assert asyncio.run(asyncio.wait_for(first_event(server, "wrong", extra_query={"token": TOKEN}), 30)) == \
        "session.created"
    with pytest.raises(InvalidStatus) as wrong:
        asyncio.run(asyncio.wait_for(first_event(server, "wrong"), 30))
    assert status_of(wrong) == 403
    with pytest.raises(InvalidStatus) as missing:
        connect(server.ws_url("/v1/realtime"), open_timeout=10).close()
    assert status_of(missing) == 401
    offered = ["realtime", f"openai-insecure-api-key.{TOKEN}", "openai-organization.org"]
    with connect(server.ws_url("/v1/realtime?model=x"), subprotocols=offered, open_timeout=10) as ws:
        assert ws.subprotocol == "realtime", "a browser fails a handshake that selects none of its offers"
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
    with pytest.raises(InvalidStatus) as refused:
        connect(server.ws_url("/v1/realtime"), subprotocols=["realtime", "openai-insecure-api-key.nope"],
                open_timeout=10).close()
    assert status_of(refused) == 403


def test_without_a_token_any_api_key_is_accepted_and_origins_are_checked(text_server):
    assert asyncio.run(asyncio.wait_for(first_event(text_server, "sk-anything"), 30)) == "session.created"
    with pytest.raises(InvalidStatus) as foreign:
        connect(text_server.ws_url("/v1/realtime"), origin="https://evil.example", open_timeout=10).close()
    assert status_of(foreign) == 403


def test_the_beta_interface_gets_one_error_and_is_closed(text_server):
    async def beta() -> list:
        client = AsyncOpenAI(api_key="k", base_url=f"{text_server.http}/v1",
                             websocket_base_url=f"ws://127.0.0.1:{text_server.port}/v1")
        events = []
        async with client.beta.realtime.connect(model="gpt-4o-realtime-preview") as connection:
            with pytest.raises(ConnectionClosedError):
                while True:
                    events.append(json.loads(await asyncio.wait_for(connection.recv_bytes(), 10)))
        return events

    (error,) = asyncio.run(asyncio.wait_for(beta(), 30))
    assert error["type"] == "error" and error["error"]["code"] == "beta_api_shape_disabled"


def node_modules() -> Path:
    """The JS SDK and `ws`, installed once into a cache folder outside the repository."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the JS SDK test needs them")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlxd-tests"
    folder = cache / ("node-" + "-".join(NODE_PACKAGES).replace("@", "_"))
    if not (folder / "node_modules" / "openai" / "package.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache))
        subprocess.run(["npm", "install", "--prefix", str(staging), "--no-audit", "--no-fund", "--loglevel=error",
                        *NODE_PACKAGES], check=True, timeout=NODE_INSTALL_SECONDS, capture_output=True)
        if not folder.exists():  # another run may have finished first
            staging.rename(folder)
        else:
            shutil.rmtree(staging)
    return folder / "node_modules"


def test_the_js_sdk_runs_a_text_turn_over_wss(start_server, tiny_text_model, tmp_path):
    modules = node_modules()
    cert, key = self_signed_certificate(tmp_path)
    server = start_server(tiny_text_model, "--tls-cert", str(cert), "--tls-key", str(key), wait=None)
    env = {**os.environ, "NODE_PATH": str(modules), "NODE_EXTRA_CA_CERTS": str(cert), "MLXD_TOKEN": "k",
           "MLXD_BASE_URL": f"https://127.0.0.1:{server.port}/v1"}
    wait_ready_over_tls(server, cert)
    result = subprocess.run(["node", str(REPO / "tests" / "js" / "realtime_text_turn.cjs")], env=env,
                            capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["seen"][0] == "session.created" and outcome["seen"][-1] == "response.done"
    assert outcome["text"] == outcome["done"] and outcome["usage"]["output_tokens"] == 5
    assert outcome["status"] == "incomplete"
