"""An asyncio client of mlxd's own protocol: questions, images and frames, with answers as they stream.

Every message the client sends carries an id of its own, so replies are matched to requests however they
interleave. One reader task routes what the server says; one writer task sends in order, which is what lets
`ask` and `send_frame` return at once without awaiting the socket. A lost connection fails every pending
reply, so nothing waits forever on a server that is gone.

    async with Client("ws://127.0.0.1:8765") as client:
        reply = client.ask("What is the capital of France?")
        async for piece in reply:
            print(piece, end="")
        result = await reply
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

DEFAULT_URL = "ws://127.0.0.1:8765"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
FLUSH_TIMEOUT_SECONDS = 5.0
_TERMINAL = ("response_complete", "frame_dropped", "error")
AUDIO_CHUNK_BYTES = 512 * 1024  # of 16 kHz PCM16: 16 s a message, half the server's limit


class ClientError(Exception):
    """The client could not get an answer: the connection was lost or closed."""


class ConnectError(ClientError):
    """The server could not be reached or refused the handshake; `status` is its HTTP status (401, 403), if any."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"cannot connect to {url}: {reason}")
        self.url = url
        self.status = status


class ServerError(ClientError):
    """The server answered with an `error`: `code` is one of the protocol's error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Result:
    """How a request ended. A dropped frame has `dropped` set to the reason and no text."""

    id: str
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    time_to_first_token: float | None = None
    inference_time: float | None = None
    dropped: str | None = None


class Response:
    """A request in flight: iterate it for the text as it streams, await it for the Result."""

    def __init__(self, request_id: str) -> None:
        self.id = request_id
        self.transcript: str | None = None  # what the server heard, for a spoken question
        self._pieces: asyncio.Queue[str | None] = asyncio.Queue()
        self._result: asyncio.Future[Result] = asyncio.get_running_loop().create_future()

    def __await__(self) -> Generator[Any, None, Result]:
        return asyncio.shield(self._result).__await__()

    async def __aiter__(self) -> AsyncIterator[str]:
        while (piece := await self._pieces.get()) is not None:
            yield piece
        self._result.result()  # an error reply or a lost connection raises here too

    @property
    def done(self) -> bool:
        return self._result.done()

    def _token(self, text: str) -> None:
        self._pieces.put_nowait(text)

    def _end(self, result: Result | None = None, error: ClientError | None = None) -> None:
        if self._result.done():
            return
        if error is not None:
            self._result.set_exception(error)
        else:
            self._result.set_result(result)
        self._pieces.put_nowait(None)


def _result(message: dict[str, Any]) -> Result:
    if message["type"] == "frame_dropped":
        return Result(message["id"], dropped=message.get("reason", "dropped"))
    return Result(message["id"], message.get("full_text", ""), message.get("finish_reason"),
                  message.get("usage") or {}, message.get("time_to_first_token"), message.get("inference_time"))


def binary_message(header: dict[str, Any], image: bytes) -> bytes:
    """A binary frame of the protocol: 4-byte big-endian header length, the JSON header, the image bytes."""
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(4, "big") + encoded + image


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Client:
    """One connection to an mlxd server; use it as `async with Client(url) as client`."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, open_timeout: float = 10) -> None:
        self.url = url
        self._token = token
        self._open_timeout = open_timeout
        self._ids = itertools.count(1)
        self._pending: dict[str, Response | asyncio.Future[dict[str, Any]]] = {}
        self._cancelling: set[str] = set()
        self._outgoing: asyncio.Queue[str | bytes] = asyncio.Queue()
        self._lost: ClientError | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> Client:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        try:
            self._ws = await connect(self.url, additional_headers=headers, open_timeout=self._open_timeout,
                                     max_size=MAX_MESSAGE_BYTES, compression=None)
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ConnectError(self.url, f"the server refused the handshake with HTTP {status}", status) from None
        except InvalidURI as exc:
            raise ConnectError(self.url, str(exc)) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise ConnectError(self.url, str(exc) or type(exc).__name__) from None
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._write())]  # reader first
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Send what is still queued (a last cancel), then close; pending replies fail with ClientError."""
        if self._tasks:
            flushed = asyncio.create_task(self._outgoing.join())
            await asyncio.wait([flushed, self._tasks[0]], timeout=FLUSH_TIMEOUT_SECONDS,
                               return_when=asyncio.FIRST_COMPLETED)  # the reader ends when the connection does
            flushed.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        self._fail_all(ClientError("the client was closed"))

    async def configure(self, **fields: Any) -> dict[str, Any]:
        """Change this session's config (`temperature=0`, `maxOutputTokens=100`, ...); the current config."""
        reply = await self._request("config", fields)
        return reply["current_config"]

    async def status(self) -> dict[str, Any]:
        """The server's `status` message: model, state, queues, this session."""
        return await self._request("get_status", {})

    def ask(self, content: str, context: str | None = None) -> Response:
        """Send a `text_input` now; the Response streams its answer."""
        fields = {"content": content} if context is None else {"content": content, "context": context}
        return self._send_input("text_input", fields)

    def send_image(self, image: Path | bytes, prompt: str | None = None) -> Response:
        """Send an `image_input` (a file or its bytes) as a binary message now; OSError if the file cannot be
        read. `await client.send_image(...)` is its Result."""
        data = image.read_bytes() if isinstance(image, Path) else image
        return self._send_input("image_input", {} if prompt is None else {"prompt": prompt}, data)

    def send_frame(self, jpeg: bytes, prompt: str | None = None, screen: bool = False,
                   source: str | None = None) -> Response:
        """Send a live frame (binary); the latest frame wins, so its Result may be `dropped`."""
        fields = {key: value for key, value in (("prompt", prompt), ("source", source)) if value is not None}
        return self._send_input("screen_frame" if screen else "video_frame", fields, jpeg)

    def ask_audio(self, pcm: bytes) -> Response:
        """Send a spoken question, 16 kHz PCM16LE mono, as `audio_chunk`s ended by `audio_end`, all with the
        question's id; the Response's `transcript` is set when the server has heard it. The session should have
        `turnDetection` null (the question ends where the audio does), else server VAD finds the turn."""
        reply = self._response("a")
        if not reply.done:
            for start in range(0, len(pcm), AUDIO_CHUNK_BYTES):
                chunk = base64.b64encode(pcm[start:start + AUDIO_CHUNK_BYTES]).decode("ascii")
                self._enqueue({"type": "audio_chunk", "id": reply.id, "audio": chunk})
            self._enqueue({"type": "audio_end", "id": reply.id})
        return reply

    async def cancel(self, request_id: str | None = None) -> None:
        """Cancel that request, or without an id the one running; the reply then ends `cancelled`."""
        if request_id is not None:
            self._cancelling.add(request_id)
        self._enqueue({"type": "cancel"} if request_id is None else {"type": "cancel", "id": request_id})

    def _send_input(self, kind: str, fields: dict[str, Any], image: bytes | None = None) -> Response:
        reply = self._response(kind[0])
        if not reply.done:
            header = {"type": kind, "id": reply.id, **fields}
            self._enqueue(header if image is None else binary_message(header, image))
        return reply

    def _response(self, prefix: str) -> Response:
        """A new request's Response, awaiting its messages; already failed if the connection is lost."""
        reply = Response(f"{prefix}{next(self._ids)}")
        if self._lost is not None:
            reply._end(error=self._lost)
        else:
            self._pending[reply.id] = reply
        return reply

    async def _request(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A control message answered by one reply (config_updated, status) or an error."""
        if self._lost is not None:
            raise self._lost
        request_id = f"{kind[0]}{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._enqueue({"type": kind, "id": request_id, **fields})
        return await future

    def _enqueue(self, message: dict[str, Any] | bytes) -> None:
        self._outgoing.put_nowait(message if isinstance(message, bytes) else json.dumps(message))

    async def _write(self) -> None:
        assert self._ws is not None
        with contextlib.suppress(ConnectionClosed):  # the reader sees the loss and fails the pending replies
            while True:
                message = await self._outgoing.get()
                try:
                    await self._ws.send(message)
                finally:
                    self._outgoing.task_done()

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                self._route(json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            code, reason = self._ws.close_code, self._ws.close_reason
            detail = "" if code is None else f" (close code {code}{': ' + reason if reason else ''})"
            self._lost = ClientError(f"the connection to {self.url} was lost{detail}")
            self._fail_all(self._lost)

    def _route(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        pending = self._pending.get(request_id) if isinstance(request_id, str) else None
        if pending is None:
            return
        kind = message.get("type")
        if kind == "error" and message.get("code") == "not_found" and request_id in self._cancelling:
            return  # the cancel came as the request ended: its own terminal message follows
        if isinstance(pending, Response):
            if kind == "token":
                pending._token(message.get("content", ""))
            elif kind == "transcript":
                pending.transcript = message.get("text", "")
            elif kind in _TERMINAL:
                del self._pending[request_id]
                self._cancelling.discard(request_id)
                if kind == "error":
                    pending._end(error=ServerError(message.get("code", ""), message.get("error", "")))
                else:
                    pending._end(_result(message))
            return
        del self._pending[request_id]
        if kind == "error":
            pending.set_exception(ServerError(message.get("code", ""), message.get("error", "")))
        else:
            pending.set_result(message)

    def _fail_all(self, error: ClientError) -> None:
        """End every pending reply with `error`; one nobody awaits is not worth asyncio's warning."""
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            future = waiter._result if isinstance(waiter, Response) else waiter
            if isinstance(waiter, Response):
                waiter._end(error=error)
            elif not future.done():
                future.set_exception(error)
            future.add_done_callback(_mark_retrieved)
