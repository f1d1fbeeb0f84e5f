"""One WebSocket connection: read messages into the session, write its events back.

The reader parses with the wire protocol and hands typed messages to the session; the writer drains the
session's outbox, coalescing tokens, and encodes. Data flows one way: socket -> session -> engine, and
engine -> session -> socket.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from mlxd import protocol
from mlxd.errors import ClientError
from mlxd.session import Session, coalesce

log = structlog.get_logger("mlxd.connection")

GOING_AWAY = 1001


class Connection:
    def __init__(self, websocket: WebSocket, session: Session) -> None:
        self.websocket = websocket
        self.session = session
        self._writer: asyncio.Task[None] | None = None
        self._sending = False

    async def run(self) -> None:
        """Serve the connection until the client leaves or the server closes it."""
        self._writer = asyncio.create_task(self._write())
        max_text_chars = self.session.settings.max_text_chars
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                self.session.messages += 1
                try:
                    if message.get("text") is not None:
                        parsed = protocol.parse_text(message["text"], max_text_chars)
                    else:
                        parsed = protocol.parse_binary(message.get("bytes") or b"", max_text_chars)
                except ClientError as exc:
                    self.session.refuse(exc)
                    continue
                self.session.handle(parsed)
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            self.session.close()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _write(self) -> None:
        session = self.session
        try:
            while True:
                events = coalesce(await session.outbox.take())
                self._sending = True
                for event in events:
                    session.account(event)
                    await self.websocket.send_text(protocol.encode(event))
                self._sending = False
        except (WebSocketDisconnect, RuntimeError, OSError):
            log.debug("writer_stopped", session=session.id)

    def flushed(self) -> bool:
        """Every job has ended and its last event has gone out."""
        return self.session.idle() and self.session.outbox.empty() and not self._sending

    async def close(self, code: int = GOING_AWAY) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            await self.websocket.close(code)
