"""Driving mlxd with Google's own python SDK (google-genai), unchanged but for the base URL and the key, over
wss with the certificate `--tls-self-signed` made, trusted through SSL_CERT_FILE as a user would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
from google import genai
from google.genai import types

from tests.helpers import ServerProcess

MODEL = "gemini-live-2.5-flash-preview"
STEP_TIMEOUT = 60


def run(coroutine: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
    """Run an SDK conversation to its end, bounded."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def certificate(config_home: Path) -> Path:
    return config_home / "mlxd" / "tls" / "localhost.pem"


def wait_ready_over_tls(server: ServerProcess, cert: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cert.exists() and httpx.get(f"https://127.0.0.1:{server.port}/readyz", timeout=5,
                                           verify=ssl.create_default_context(cafile=str(cert))).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the TLS server is not ready:\n{server.log_text()}")
        time.sleep(0.1)


@contextlib.contextmanager
def serving_tls(model: Path | str, folder: Path, *args: str,
                timeout: float = 60) -> Iterator[tuple[ServerProcess, Path]]:
    """`mlxd serve --tls-self-signed` with its config directory in `folder`: the server and its certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(model, "--tls-self-signed", *args, log_path=folder / "server.log",
                           env={"XDG_CONFIG_HOME": str(folder)})
    try:
        wait_ready_over_tls(server, certificate(folder), timeout)
        yield server, certificate(folder)
    finally:
        server.stop()


def client(server: ServerProcess, cert: Path, api_key: str = "any-key", **http_options: Any) -> genai.Client:
    """A client as a user makes one: SSL_CERT_FILE names the certificate when the client is created."""
    with mock.patch.dict(os.environ, {"SSL_CERT_FILE": str(cert)}):
        return genai.Client(api_key=api_key,
                            http_options={"base_url": f"https://127.0.0.1:{server.port}", **http_options})


async def answer(session: Any) -> list[types.LiveServerMessage]:
    """Every message of one answer, up to its turnComplete, each within a bounded wait."""
    messages = []
    iterator = session.receive().__aiter__()
    while True:
        try:
            message = await asyncio.wait_for(iterator.__anext__(), STEP_TIMEOUT)
        except StopAsyncIteration:
            return messages
        messages.append(message)


def text_of(messages: list[types.LiveServerMessage]) -> str:
    return "".join(message.text or "" for message in messages)


def usage_of(messages: list[types.LiveServerMessage]) -> types.UsageMetadata:
    (usage,) = [message.usage_metadata for message in messages if message.usage_metadata is not None]
    return usage


def flags(messages: list[types.LiveServerMessage]) -> list[str]:
    """The answer's shape: 'text' for a model turn, else which end marker a message carries."""
    shape = []
    for message in messages:
        content = message.server_content
        if content is None:
            continue
        if content.model_turn is not None:
            shape.append("text")
        for name in ("generation_complete", "interrupted", "turn_complete"):
            if getattr(content, name):
                shape.append(name)
    return [flag for i, flag in enumerate(shape) if flag != "text" or shape[i - 1:i] != ["text"]]


def user_turn(text: str) -> types.Content:
    return types.Content(role="user", parts=[types.Part(text=text)])
