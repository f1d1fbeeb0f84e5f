"""What every wire format gives the connection: a per-connection `Wire` that parses and serialises.

A wire may keep state for one connection (ids it handed out, where a response is in its sequence of
events), but it knows nothing of sessions, queues or models: it turns bytes into intents and events into
bytes. Where a protocol has no error message, `encode` answers an `ErrorReport` with a `Close`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from mlxd.events import ServerEvent
from mlxd.intents import Intent

MAX_CLOSE_REASON_BYTES = 123


@dataclass(frozen=True)
class Close:
    """End the connection with this close code and reason (cut to what a close frame can carry)."""

    code: int
    reason: str

    @property
    def sendable_reason(self) -> str:
        encoded = self.reason.encode("utf-8", "replace")[:MAX_CLOSE_REASON_BYTES]
        return encoded.decode("utf-8", "ignore")


Outgoing = str | bytes | Close


class Wire(Protocol):
    def opening(self) -> Sequence[str | bytes]:
        """What the server sends first, unprompted, once the connection is accepted."""

    def parse(self, data: str | bytes) -> Sequence[Intent]:
        """One client message as intents; raises ClientError naming what is wrong."""

    def encode(self, event: ServerEvent) -> Sequence[Outgoing]:
        """One server event as the messages that carry it (none, where the protocol has nothing to say)."""

    def farewell(self, code: int) -> Sequence[str | bytes]:
        """What to send before the server closes the connection with `code` (going away, idle)."""
