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
NO_AUDIO_MODELS = "this server has no audio models (speech is not served)"


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
    def opening(self) -> Sequence[Outgoing]:
        """What the server sends first, unprompted, once the connection is accepted; a Close among it refuses
        the connection at once (after what comes before it)."""

    def parse(self, data: str | bytes) -> Sequence[Intent]:
        """One client message as intents; raises ClientError naming what is wrong."""

    def encode(self, event: ServerEvent) -> Sequence[Outgoing]:
        """One server event as the messages that carry it (none, where the protocol has nothing to say)."""

    def farewell(self, code: int) -> Sequence[str | bytes]:
        """What to send before the server closes the connection with `code` (going away, idle)."""


def valid_unicode(value: str) -> bool:
    """False for lone surrogates (JSON escapes such as \\ud800): they can be neither tokenized nor sent back."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class AudioSupport(Protocol):
    """What a wire asks of the server's audio models (AudioModels is one): None where a direction works, else
    why it is refused. Read at each use: models that fail to load after the connection opened are refused."""

    @property
    def stt_refusal(self) -> str | None: ...

    @property
    def tts_refusal(self) -> str | None: ...


@dataclass(frozen=True)
class AudioRefusals:
    """Fixed refusals (a server without audio models, by default: both directions refused for one reason)."""

    stt_refusal: str | None = NO_AUDIO_MODELS
    tts_refusal: str | None = NO_AUDIO_MODELS


NO_AUDIO = AudioRefusals()
