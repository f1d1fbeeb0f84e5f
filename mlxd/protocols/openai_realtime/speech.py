"""What OpenAI's events say about speech and the session does not: the input audio buffer's events, which
items were spoken (a user `input_audio` item, an assistant `output_audio` one, each with its transcript) and
how long each turn's audio was (a transcription's usage).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from mlxd.dialogue import Message
from mlxd.events import (
    AnswerTruncated,
    AudioCleared,
    AudioCommitted,
    InputTranscript,
    ServerEvent,
    SpeechStarted,
    SpeechStopped,
)
from mlxd.protocols.openai_realtime.audio import RATE
from mlxd.protocols.openai_realtime.items import item_json

MAX_REMEMBERED = 64  # items and cancels awaiting the session's answer, spoken items
Value = TypeVar("Value")


def remember(pending: OrderedDict[str, Value], key: str, value: Value) -> None:
    """Note what an event still to come will need; bounded, as a refused request leaves its note behind."""
    pending[key] = value
    while len(pending) > MAX_REMEMBERED:
        pending.popitem(last=False)


class Speech:
    """One connection's record of speech; `event(type, **fields)` writes a server event."""

    def __init__(self, event: Callable[..., str]) -> None:
        self._event = event
        self._heard: OrderedDict[str, float] = OrderedDict()  # spoken user items: seconds of their audio
        self._spoken: OrderedDict[str, None] = OrderedDict()  # spoken answers' items
        self._started: dict[str, int] = {}  # item id: audio_start_ms, until its speech stops
        self._buffered_bytes = 0  # appended since the last commit or clear

    def appended(self, size: int) -> None:
        self._buffered_bytes += size

    def answered(self, item_id: str) -> None:
        remember(self._spoken, item_id, None)

    def item(self, message: Message, transcribed: bool) -> dict[str, Any]:
        """A message as an item: a spoken one as audio with its transcript (a user's, only if transcribed)."""
        item = item_json(message)
        if message.id in self._heard:
            item["content"] = [{"type": "input_audio", "transcript": message.text if transcribed else None}]
        elif message.id in self._spoken:
            item["content"] = [{"type": "output_audio", "transcript": message.text}]
        return item

    def committed(self, event: AudioCommitted, previous_item_id: str | None) -> list[str]:
        """The buffer became a user item: OpenAI announces it at once, its transcript comes when transcribed."""
        if event.item_id not in self._heard:
            remember(self._heard, event.item_id, self._buffered_bytes / 2 / RATE)
        self._buffered_bytes = 0
        item = {"id": event.item_id, "type": "message", "object": "realtime.item", "status": "completed",
                "role": "user", "content": [{"type": "input_audio", "transcript": None}]}
        return [self._event("input_audio_buffer.committed", item_id=event.item_id, previous_item_id=previous_item_id),
                *(self._event(kind, previous_item_id=previous_item_id, item=item)
                  for kind in ("conversation.item.added", "conversation.item.done"))]

    def encode(self, event: ServerEvent, transcribed: bool) -> list[str] | None:
        """The events of the input audio buffer and of transcripts; None for any other event."""
        if isinstance(event, SpeechStarted):
            self._started[event.item_id] = event.audio_start_ms
            return [self._event("input_audio_buffer.speech_started", item_id=event.item_id,
                                audio_start_ms=event.audio_start_ms)]
        if isinstance(event, SpeechStopped):
            started = self._started.pop(event.item_id, None)
            if started is not None:
                remember(self._heard, event.item_id, max(0, event.audio_end_ms - started) / 1000)
            return [self._event("input_audio_buffer.speech_stopped", item_id=event.item_id,
                                audio_end_ms=event.audio_end_ms)]
        if isinstance(event, AudioCleared):
            self._buffered_bytes = 0
            self._started.clear()
            return [self._event("input_audio_buffer.cleared")]
        if isinstance(event, InputTranscript):
            return self._transcript(event) if transcribed else []
        if isinstance(event, AnswerTruncated):
            return [self._event("conversation.item.truncated", item_id=event.message_id, content_index=0,
                                audio_end_ms=event.audio_end_ms)]
        return None

    def _transcript(self, event: InputTranscript) -> list[str]:
        seconds = round(self._heard.get(event.item_id, 0.0), 3)
        return [self._event("conversation.item.input_audio_transcription.delta", item_id=event.item_id,
                            content_index=0, delta=event.text),
                self._event("conversation.item.input_audio_transcription.completed", item_id=event.item_id,
                            content_index=0, transcript=event.text, usage={"type": "duration", "seconds": seconds})]
