"""What a conversation is made of, independent of any wire format: messages of text and image parts.

A `Dialogue` is the conversation a session keeps for its client: the instructions (the system turn), the
messages in order with their ids, and the answers recorded into it as they finish. The session changes it on
the event loop; the engine thread opens a turn in it when a job starts and records the answer when the job
ends, so everything goes through one lock. Images stay encoded here: they are decoded on the engine thread,
only when a prompt uses them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

ROLES = ("system", "user", "assistant")
ROOT = "root"


@dataclass(frozen=True)
class Part:
    """Text, or an image still encoded (base64 text or raw bytes)."""

    text: str | None = None
    image: str | bytes | None = None


@dataclass(frozen=True)
class Message:
    role: str
    parts: tuple[Part, ...]
    id: str | None = None

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.parts if part.text is not None)

    @property
    def images(self) -> list[str | bytes]:
        return [part.image for part in self.parts if part.image is not None]


def user_message(text: str | None = None, images: Sequence[str | bytes] = (), message_id: str | None = None) -> Message:
    """A user turn: its images first, then its text (the order vision chat templates expect)."""
    parts = [Part(image=image) for image in images]
    if text is not None:
        parts.append(Part(text=text))
    return Message("user", tuple(parts), message_id)


class Dialogue:
    """A session's conversation, safe to change from the event loop while the engine thread reads it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self._generation = 0
        self.instructions: str | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)

    @property
    def generation(self) -> int:
        """Changes when the conversation is cleared: an answer begun before a reset is not recorded after it."""
        return self._generation

    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def add(self, messages: Sequence[Message], after: str | None = None) -> None:
        """Append, or insert after the message with id `after` (`ROOT`: at the start); KeyError if unknown."""
        with self._lock:
            if after is None:
                self._messages.extend(messages)
                return
            index = 0 if after == ROOT else self._index(after) + 1
            self._messages[index:index] = messages

    def get(self, message_id: str) -> Message:
        with self._lock:
            return self._messages[self._index(message_id)]

    def delete(self, message_id: str) -> Message:
        with self._lock:
            return self._messages.pop(self._index(message_id))

    def replace_text(self, message_id: str, text: str) -> bool:
        """Give a message new text (its images stay): an answer cut to what the user heard. False if absent."""
        with self._lock:
            try:
                index = self._index(message_id)
            except KeyError:
                return False
            message = self._messages[index]
            images = tuple(part for part in message.parts if part.image is not None)
            self._messages[index] = Message(message.role, (*images, Part(text=text)), message.id)
            return True

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self._generation += 1

    def open_turn(self, turn: Sequence[Message]) -> tuple[list[Message], int]:
        """Commit a turn's messages and return the whole conversation to prompt with, and its generation."""
        with self._lock:
            self._messages.extend(turn)
            return list(self._messages), self._generation

    def record_answer(self, text: str, answer_id: str | None, generation: int) -> None:
        """Keep an answer (or the part of it generated before a cut), unless the conversation was cleared."""
        with self._lock:
            if generation == self._generation:
                self._messages.append(Message("assistant", (Part(text=text),), answer_id))

    def _index(self, message_id: str) -> int:
        for index, message in enumerate(self._messages):
            if message.id == message_id:
                return index
        raise KeyError(message_id)
