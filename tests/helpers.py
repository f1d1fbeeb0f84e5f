"""Test helpers: a real `mlxd serve` process on an ephemeral port, a real WebSocket client, images."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

REPO = Path(__file__).resolve().parent.parent
TERMINAL_TYPES = ("response_complete", "error", "frame_dropped")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m mlxd serve` in a child process, exactly as a user or launchd would start it."""

    def __init__(self, model: Path | str | None, *args: str, log_path: Path, env: dict[str, str] | None = None,
                 port: int | None = None, prefix: tuple[str, ...] = ()):
        """`prefix` runs the server through another command (which must exec it, keeping its pid)."""
        self.port = port or free_port()
        self.log_path = log_path
        self._log = log_path.open("wb")
        model_args = [] if model is None else ["--model", str(model)]
        command = [*prefix, sys.executable, "-m", "mlxd", "serve", *model_args, "--port", str(self.port),
                   "--log-format", "json", *args]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})})

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def healthz(self) -> dict:
        return httpx.get(f"{self.http}/healthz", timeout=5).json()

    def wait_listening(self, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                return self.healthz()
            except httpx.HTTPError:
                time.sleep(0.05)
        raise TimeoutError(f"server did not listen within {timeout} s:\n{self.log_text()}")

    def wait_state(self, state: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.wait_listening(timeout)
            if health["state"] == state:
                return health
            time.sleep(0.05)
        raise TimeoutError(f"server did not reach {state!r}: {health}")

    def wait_audio(self, timeout: float = 120) -> dict:
        """The audio models' states once none is loading (they load after the chat model)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            audio = self.wait_listening(timeout)["audio"]
            if all(slot["state"] != "loading" for slot in audio.values()):
                return audio
            time.sleep(0.1)
        raise TimeoutError(f"the audio models did not load within {timeout} s: {audio}")

    def connect(self, path: str = "/", **options) -> ClientConnection:
        return connect(self.ws_url(path), open_timeout=10, max_size=None, **options)

    def log_lines(self) -> list[dict]:
        lines = []
        for line in self.log_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def unhandled_errors(self) -> list[dict]:
        """Log lines of exceptions nobody handled: uvicorn's 'Exception in ASGI application' and the like, and a
        connection's task that failed (the client got close 1011)."""
        return [line for line in self.log_lines() if line.get("level") in ("error", "critical")
                and (line.get("logger") == "uvicorn.error" or line.get("event") == "connection_failed")]

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        terminate(self.process)
        self._log.close()
        return self.process.returncode


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from `ps` (the same on Linux and macOS); 0 once it has gone."""
    result = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True, timeout=10,
                            check=False)
    return 1024 * int(result.stdout.strip() or 0)


def terminate(process: subprocess.Popen) -> None:
    """SIGTERM, as a service manager stops a server; SIGKILL if it is not gone within 15 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class RawClient:
    """A WebSocket client on a bare socket: it reads only when asked (a client that stops reading), and it
    can vanish with a TCP reset and no close frame (a crashed client or a pulled cable)."""

    def __init__(self, port: int, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket()
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/"), max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self.flush()
        while self.protocol.state is State.CONNECTING:
            self.protocol.receive_data(self.sock.recv(65536))
        if self.protocol.state is not State.OPEN:
            raise ConnectionError(f"handshake failed: {self.protocol.handshake_exc}")
        self._frames = [event for event in self.protocol.events_received() if isinstance(event, Frame)]

    def flush(self) -> None:
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def send(self, message: dict) -> None:
        self.protocol.send_text(json.dumps(message).encode())
        self.flush()

    def receive(self, timeout: float = 30) -> dict:
        """The next text message; pings are not answered, as a stuck client would not answer them."""
        deadline = time.monotonic() + timeout
        while True:
            while self._frames:
                frame = self._frames.pop(0)
                if frame.opcode is Opcode.TEXT:
                    return json.loads(frame.data)
                if frame.opcode is Opcode.CLOSE:
                    raise ConnectionError(f"closed by the server: {self.protocol.close_rcvd}")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"the server closed the socket; close frame {self.protocol.close_rcvd}")
            self.protocol.receive_data(data)
            self._frames += [event for event in self.protocol.events_received() if isinstance(event, Frame)]

    def reset(self) -> None:
        reset(self.sock)


def reset(sock: socket.socket) -> None:
    """Vanish: SO_LINGER 0 makes close() send a TCP reset instead of a close frame and a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def send(ws: ClientConnection, message: dict) -> None:
    ws.send(json.dumps(message))


def receive(ws: ClientConnection, timeout: float = 30) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def receive_until(ws: ClientConnection, done, timeout: float = 30) -> list[dict]:
    """Messages up to and including the first for which `done(message)` is true."""
    messages = []
    deadline = time.monotonic() + timeout
    while True:
        message = receive(ws, max(0.01, deadline - time.monotonic()))
        messages.append(message)
        if done(message):
            return messages


def terminal_for(request_id: str | None):
    return lambda m: m["type"] in TERMINAL_TYPES and m.get("id") == request_id


def run_request(ws: ClientConnection, message: dict, timeout: float = 30) -> list[dict]:
    """Send one input and return every message up to its terminal one."""
    send(ws, message)
    return receive_until(ws, terminal_for(message.get("id")), timeout)


def cancel_once_started(ws: ClientConnection, message: dict, timeout: float = 30) -> dict:
    """Send one input, cancel it as soon as it has started (so, usually, during its prefill), and return its
    terminal message."""
    send(ws, message)
    receive_until(ws, lambda m: m["type"] == "response_start", timeout)
    send(ws, {"type": "cancel", "id": message["id"]})
    return receive_until(ws, terminal_for(message["id"]), timeout)[-1]


def seconds_to_serve(server: ServerProcess) -> float:
    """How long a new client waits for a short answer: the engine is free if this is short."""
    started = time.monotonic()
    with server.connect() as ws:
        send(ws, {"type": "config", "maxOutputTokens": 5})
        receive(ws)
        done = run_request(ws, {"type": "text_input", "content": "my turn", "id": "next"})[-1]
    assert done["type"] == "response_complete"
    return time.monotonic() - started


def tokens_text(messages: list[dict], request_id: str | None) -> str:
    return "".join(m["content"] for m in messages if m["type"] == "token" and m.get("id") == request_id)


def encoded_image(width: int = 64, height: int = 48, fmt: str = "JPEG", color=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, fmt)
    return buffer.getvalue()


def image_b64(width: int = 64, height: int = 48, fmt: str = "JPEG", data_uri: bool = True) -> str:
    payload = base64.b64encode(encoded_image(width, height, fmt)).decode()
    return f"data:image/{fmt.lower()};base64,{payload}" if data_uri else payload


def scrape(server) -> dict[tuple[str, frozenset], float]:
    response = httpx.get(f"{server.http}/metrics", timeout=5)
    assert response.status_code == 200
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before, after, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def start_long_answer(ws: ClientConnection, request_id: str) -> None:
    """Ask for an answer far longer than any test waits for (greedy, so it never ends early), and wait until
    it is streaming."""
    send(ws, {"type": "config", "maxOutputTokens": 8000, "temperature": 0})
    receive(ws)
    send(ws, {"type": "text_input", "content": "Tell me everything.", "id": request_id})
    receive_until(ws, lambda m: m["type"] == "token")


def run_concurrently(function, count: int, timeout: float = 60) -> list:
    """`function(index, ready)` in `count` threads; each calls `ready.wait()` when set to go, so that all
    start their work at the same moment. Returns the results in index order."""
    results: list = [None] * count
    ready = threading.Barrier(count)

    def run(index: int) -> None:
        results[index] = function(index, ready)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    return results


def wait_ready_over_tls(server: ServerProcess, cert: Path, timeout: float = 60) -> ssl.SSLContext:
    """Wait until a server started with --tls-cert answers /readyz over https; returns a context trusting it."""
    trust = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"https://127.0.0.1:{server.port}/readyz", verify=trust, timeout=5).status_code == 200:
                return trust
        except httpx.HTTPError:
            assert server.process.poll() is None, server.log_text()
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.1)
