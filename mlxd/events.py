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
    """An answer began; `answer_id` is the message it is recorded as, which names the answer to a client that
    did not ask for it (OpenAI's item of a response that server VAD created)."""

    request_id: str | None
    input_type: str
    answer_id: str | None = None


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
    field: str | None = None


@dataclass(frozen=True)
class MessageAdded:
    """A message entered the conversation: one a client added, or a frame the session committed."""

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


@dataclass(frozen=True)
class SpeechStarted:
    """The turn detector heard speech begin, `audio_start_ms` into the session's audio."""

    item_id: str
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class AudioCommitted:
    """The buffered audio became the turn `item_id` (a user message once transcribed)."""

    item_id: str
    request_id: str | None = None


@dataclass(frozen=True)
class AudioCleared:
    request_id: str | None = None


@dataclass(frozen=True)
class InputTranscript:
    """What the user said in the turn `item_id` (the final transcript)."""

    item_id: str
    text: str
    request_id: str | None = None


@dataclass(frozen=True)
class AudioOut:
    """A chunk of an answer's speech, PCM16LE mono; all of an answer's chunks come before its ResponseCompleted."""

    request_id: str | None
    pcm: bytes
    sample_rate: int = 24000


@dataclass(frozen=True)
class AnswerTruncated:
    """The assistant message `message_id` now holds only the text of its first `audio_end_ms` of audio."""

    message_id: str
    audio_end_ms: int
    request_id: str | None = None


ServerEvent = (ResponseStarted | TokenText | ResponseCompleted | FrameDropped | ConfigUpdated | ConversationReset
               | StatusReport | ErrorReport | MessageAdded | MessageDeleted | MessageRetrieved | SpeechStarted
               | SpeechStopped | AudioCommitted | AudioCleared | InputTranscript | AudioOut | AnswerTruncated)

TERMINAL_EVENTS = (ResponseCompleted, FrameDropped, ErrorReport)
