"""What the server tells a client, independent of any wire format.

The session and the engine speak in these events; a protocol module turns them into bytes. Keeping them
neutral is what lets one session be spoken to in several protocols.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlxd.dialogue import Message
from mlxd.generation import GenerationConfig


@dataclass(frozen=True)
class ResponseStarted:
    request_id: str | None
    input_type: str


@dataclass(frozen=True)
class TokenText:
    request_id: str | None
    text: str


@dataclass(frozen=True)
class ResponseCompleted:
    request_id: str | None
    input_type: str
    full_text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    inference_time: float
    time_to_first_token: float | None
    cached_tokens: int = 0
    image_tokens: int = 0


@dataclass(frozen=True)
class FrameDropped:
    request_id: str | None
    reason: str


@dataclass(frozen=True)
class ConfigUpdated:
    changes: dict[str, Any]
    config: GenerationConfig
    request_id: str | None = None


@dataclass(frozen=True)
class ConversationReset:
    request_id: str | None = None


@dataclass(frozen=True)
class StatusReport:
    status: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None


@dataclass(frozen=True)
class ErrorReport:
    code: str
    message: str
    request_id: str | None = None
    input_type: str | None = None


@dataclass(frozen=True)
class MessageAdded:
    """The session itself put a message into the conversation (a committed frame)."""

    message: Message
    request_id: str | None = None


@dataclass(frozen=True)
class MessageDeleted:
    message_id: str
    request_id: str | None = None


@dataclass(frozen=True)
class MessageRetrieved:
    message: Message
    request_id: str | None = None


ServerEvent = (ResponseStarted | TokenText | ResponseCompleted | FrameDropped | ConfigUpdated | ConversationReset
               | StatusReport | ErrorReport | MessageAdded | MessageDeleted | MessageRetrieved)

TERMINAL_EVENTS = (ResponseCompleted, FrameDropped, ErrorReport)
