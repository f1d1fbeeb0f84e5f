"""One WebSocket connection: read messages into the session, write its events back, and end it when it must.

The reader parses with the connection's wire format and hands the intents to the session, within the
connection's message rate; the writer drains the session's outbox and encodes with the same wire.
Data flows one way: socket -> wire -> session -> engine, and engine -> session -> wire -> socket. A
watchdog ends a connection that has gone idle, and one whose client stopped reading before its backlog
grows without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from mlxd.errors import ClientError
from mlxd.protocols.base import Close, Wire
from mlxd.server.ratelimit import TokenBucket
from mlxd.session import Session

log = structlog.get_logger("mlxd.server.connection")

GOING_AWAY = 1001
CLOSE_TIMEOUT_SECONDS = 1.0
MAX_WATCH_TICK_SECONDS = 1.0


@dataclass(frozen=True)
class Ending:
    """Why the server ended a connection: a metric label, and the close code and reason the client gets."""

    name: str
    code: int
    reason: str


IDLE = Ending("idle", 1000, "idle")
BACKLOG = Ending("backlog", 1008, "too many undelivered messages: the client is not reading")
SEND_TIMEOUT = Ending("send_timeout", 1008, "the client has stopped reading")
INTERNAL = Ending("internal", 1011, "internal error")


class Connection:
    def __init__(self, websocket: WebSocket, session: Session, wire: Wire) -> None:
        self.websocket = websocket
        self.session = session
        self.wire = wire
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self._send_started: float | None = None

    async def run(self) -> Ending | None:
        """Serve the connection until the client leaves or the server closes it; say why if the server ended it."""
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            for message in self.wire.opening():
                if isinstance(message, Close):  # the wire refuses this connection outright
                    self.session.close()
                    return await self._ended(Ending("refused", message.code, message.sendable_reason))
                await self._send(message)
        tasks = [asyncio.create_task(work) for work in (self._read(), self._write(), self._watch())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.session.close()
        finished = done.pop()
        if finished.exception() is not None:
            log.error("connection_failed", session=self.session.id, exc_info=finished.exception())
            ending: Ending | None = INTERNAL
        else:
            ending = finished.result()
        return ending if ending is None else await self._ended(ending)

    async def _ended(self, ending: Ending) -> Ending:
        self.session.metrics.disconnects.labels(reason=ending.name).inc()
        log.info("connection_ended", session=self.session.id, reason=ending.name)
        await self.close(ending.code, ending.reason)
        return ending

    async def _read(self) -> None:
        session = self.session
        settings = session.settings
        bucket = TokenBucket(settings.max_messages_per_second, settings.message_burst, self._loop.time())
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":  # its code says how: 1005/1006, no close frame
                    log.info("client_disconnected", session=session.id, code=message.get("code"),
                             reason=message.get("reason") or None)
                    return
                self._last_activity = now = self._loop.time()
                session.messages += 1
                within_rate = bucket.take(now)
                data = message["text"] if message.get("text") is not None else message.get("bytes") or b""
                try:
                    intents = self.wire.parse(data)
                except ClientError as exc:
                    session.refuse(exc)
                    continue
                for intent in intents:
                    if within_rate:
                        session.handle(intent)
                    else:
                        session.throttle(intent)
        except (WebSocketDisconnect, RuntimeError):
            return

    async def _write(self) -> Ending | None:
        """Send the session's events; a wire that answers an event with a Close ends the connection."""
        session = self.session
        try:
            while True:
                events = await session.outbox.take()
                for event in events:
                    session.account(event)
                    for message in self.wire.encode(event):
                        if isinstance(message, Close):
                            return Ending("refused", message.code, message.sendable_reason)
                        self._send_started = self._loop.time()
                        await self._send(message)
                self._send_started = None
                self._last_activity = self._loop.time()
        except (WebSocketDisconnect, RuntimeError, OSError):
            log.debug("writer_stopped", session=session.id)
        return None

    async def _send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            await self.websocket.send_text(message)
        else:
            await self.websocket.send_bytes(message)

    async def _watch(self) -> Ending:
        """End the connection when its backlog overflows, a send is stuck, or it has been idle too long."""
        settings = self.session.settings
        idle_timeout = settings.idle_timeout or math.inf
        tick = min(MAX_WATCH_TICK_SECONDS, settings.send_timeout / 4, idle_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = self._loop.time()
            if self.session.outbox.overflowed:
                return BACKLOG
            if self._send_started is not None and now - self._send_started > settings.send_timeout:
                return SEND_TIMEOUT
            if now - self._last_activity > idle_timeout and self.flushed():
                return IDLE

    def flushed(self) -> bool:
        """Every job has ended and its last event has gone out."""
        return self.session.idle() and self.session.outbox.empty() and self._send_started is None

    async def close(self, code: int = GOING_AWAY, reason: str = "") -> None:
        """Say farewell where the wire has one, then send a close frame, giving up after a moment: a client
        that does not read never takes it."""
        async def farewell_and_close() -> None:
            for message in self.wire.farewell(code):
                await self._send(message)
            await self.websocket.close(code, reason)

        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(farewell_and_close(), CLOSE_TIMEOUT_SECONDS)
