"""Events on their way to one client: any thread puts, the connection's writer takes on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

from mlxd.events import ServerEvent, TokenText


class Outbox:
    """Events for one client: `put` from any thread never blocks, `take` awaits a batch on the loop.

    The loop is woken once per batch, not once per token: while the writer is busy sending, tokens of a
    response pile up here merged into one (the text the client assembles is unchanged) and go out together.
    Past `limit` waiting events the client is not reading: the outbox marks itself overflowed and discards
    from then on (the connection is ended), so memory stays bounded.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int | None = None) -> None:
        self._loop = loop
        self._limit = limit
        self._items: deque[ServerEvent] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._ready = asyncio.Event()
        self.overflowed = False

    def put(self, event: ServerEvent) -> None:
        with self._lock:
            if self.overflowed:
                return
            last = self._items[-1] if self._items else None
            if isinstance(event, TokenText) and isinstance(last, TokenText) and last.request_id == event.request_id:
                self._items[-1] = TokenText(event.request_id, last.text + event.text)
                return
            if self._limit is not None and len(self._items) >= self._limit:
                self.overflowed = True
                return
            self._items.append(event)
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to send to
            self._loop.call_soon_threadsafe(self._ready.set)

    def empty(self) -> bool:
        with self._lock:
            return not self._items

    async def take(self) -> list[ServerEvent]:
        await self._ready.wait()
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._wake_pending = False
            self._ready.clear()
        return items
